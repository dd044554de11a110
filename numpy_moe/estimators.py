"""scikit-learn estimators: mixtures of experts that drop into the code you already write.

    from numpy_moe.estimators import MoEClassifier
    clf = MoEClassifier().fit(X, y)
    clf.predict(X)

- :class:`MoEClassifier`, :class:`MoERegressor`: the MoE layer of numpy_moe.moe (dense or top-k gate,
  linear or ReLU-MLP experts, both top-k conventions, noise, balance losses) trained by mini-batch Adam,
  SGD or FTRL on cross-entropy or squared error.
- :class:`LocalExpertsClassifier`, :class:`LocalExpertsRegressor`: the classic cooperative or competitive
  mixture of local linear experts of numpy_moe.classic (Jacobs, Jordan, Nowlan & Hinton 1991), trained
  by its own update rules with SGD or FTRL.

They follow scikit-learn's conventions: ``__init__`` only stores its arguments, ``fit`` validates them
and returns ``self``, fitted attributes end in ``_``, ``partial_fit`` trains one more epoch,
``predict_proba`` columns follow ``classes_``. Standardise the inputs yourself (a ``StandardScaler`` in
a ``Pipeline``): the defaults are tuned for standardised features. Every fitted estimator has:

- ``model_``: the trained numpy_moe Module (``model_.gate``, ``model_.experts``, ...);
- ``loss_curve_``: the training loss of each epoch; ``validation_loss_curve_`` with early stopping;
- ``n_iter_``: epochs run; ``n_features_in_`` (and ``feature_names_in_`` for DataFrames);
- ``expert_usage_``: (E,) the fraction of the training samples whose largest gate weight is expert e
  (sums to 1; a collapsed gate shows as one entry near 1);
- ``classes_`` (classifiers) or ``n_outputs_`` (regressors).

Training stops when the watched loss has not improved by ``tol`` for ``n_iter_no_change`` epochs, as in
scikit-learn's MLP. By default (``early_stopping=True``, unlike the MLP) the watched loss is the loss on
a held-out ``validation_fraction`` of the training data (stratified for classifiers) and the weights of
the best validation epoch are kept: on small noisy data this both prevents overfitting and stops sooner.
With ``early_stopping=False`` the training loss is watched and the last weights are kept.
Save a fitted estimator with :func:`numpy_moe.io.save`.
"""
import copy
import math
import time

import numpy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from . import divergence, train
from .backend import asarray, default_rng, to_numpy
from .classic import LocalExperts, train_epoch
from .gating import NOISES
from .moe import MoE
from .optim import FTRL, SGD, Adam
from .validation import check_real


def _generator(random_state):
    """A numpy Generator from None, an int, a Generator or a RandomState (never the global RNG)."""
    if isinstance(random_state, numpy.random.RandomState):
        random_state = int(random_state.randint(numpy.iinfo(numpy.int32).max))
    if random_state is not None and not isinstance(random_state, (int, numpy.integer, numpy.random.Generator)):
        raise ValueError(f"random_state={random_state!r} must be None, an int, a numpy Generator or RandomState")
    return default_rng(random_state)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)):
        raise TypeError(f"{name}={value!r} must be an integer >= 1, not a {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def _is_state(name):
    """Fitted attributes and the private training state that fit and partial_fit change."""
    return name.endswith("_") and not name.startswith("_") or name in ("_rng", "_optimizer")


class _Transaction:
    """``with _Transaction(est):`` puts ``est`` back as it was when an exception leaves the block.

    The fitted state (attributes ending in ``_``, the random generator and the optimiser) is deep-copied on
    entry; on an exception every state attribute is removed and the copies are put back, so an estimator
    that was unfitted is unfitted again.
    """

    def __init__(self, est):
        self.est = est
        self.saved = copy.deepcopy({k: v for k, v in vars(est).items() if _is_state(k)})

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            state = vars(self.est)
            for k in [k for k in state if _is_state(k)]:
                del state[k]
            state.update(self.saved)
        return False


def _check_number_list(values, name, max_len):
    if not isinstance(values, list) or len(values) > max_len or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise TypeError(f"{name} must be a list of at most {max_len} finite numbers, found {values!r:.80}")


class _Estimator(BaseEstimator):
    """The training loop shared by the four estimators: epochs, early stopping, progress, usage.

    Subclasses provide ``_build(n_features, n_outputs, rng)`` -> model, ``_new_optimizer()``,
    ``_epoch(X, y, rng)`` -> training loss, ``_loss(X, y)``, ``_output(X)`` -> (N, O) numpy (class
    probabilities or values) and ``_gate_scores(X)`` -> (N, E) numpy, largest at each row's top expert;
    the task mixins below provide ``_targets(y, first, classes)`` -> (encoded targets, number of outputs).
    """

    def fit(self, X, y):
        """Train from scratch on X (N, D) and y; returns self.

        Transactional: when fit raises (bad input, divergence, an interrupt), the estimator is exactly as
        it was before the call: a fitted one predicts as before, an unfitted one stays unfitted.
        """
        with self._transaction():
            self._check_params()
            X, y = validate_data(self, X, y, dtype=numpy.float64, **self._y_checks)
            return self._train(X, self._start(X, y, None), self.epochs, stop=True)

    def _partial_fit(self, X, y, classes):
        with self._transaction():
            first = not hasattr(self, "model_")
            if first:
                self._check_params()
            X, y = validate_data(self, X, y, reset=first, dtype=numpy.float64, **self._y_checks)
            y = self._start(X, y, classes) if first else self._targets(y, False, classes)[0]
            if not hasattr(self, "_optimizer"):  # a loaded estimator: optimiser state is not saved
                self._rng, self._optimizer = _generator(self.random_state), self._new_optimizer()
            return self._train(X, y, 1, stop=False)

    def _transaction(self):
        return _Transaction(self)

    def _start(self, X, y, classes):
        """Fresh random state, model and optimiser, empty curves; returns the encoded targets."""
        self._rng = _generator(self.random_state)
        y, n_outputs = self._targets(y, True, classes)
        self.model_ = self._build(X.shape[1], n_outputs, self._rng)
        self._optimizer = self._new_optimizer()
        self.loss_curve_, self.validation_loss_curve_, self.n_iter_ = [], [], 0
        return y

    def _check_params(self):
        _positive_int(self.n_experts, "n_experts")
        _positive_int(self.epochs, "epochs")
        _positive_int(self.batch_size, "batch_size")
        _positive_int(self.n_iter_no_change, "n_iter_no_change")
        check_real(self.validation_fraction, "validation_fraction", 0, 1, low_open=True, high_open=True)
        check_real(self.tol, "tol", 0)
        if not isinstance(self.optimizer, str) or self.optimizer not in self._optimizers:
            raise ValueError(f"optimizer={self.optimizer!r} must be one of {self._optimizers}")
        if self.learning_rate is not None:
            check_real(self.learning_rate, "learning_rate", 0, low_open=True)
        for name in ("early_stopping", "verbose"):
            if not isinstance(getattr(self, name), (bool, numpy.bool_)):
                raise TypeError(f"{name}={getattr(self, name)!r} must be True or False")

    def _check_fitted_state(self):
        """Check parameters and fitted attributes for consistency (numpy_moe.io calls this on loading).

        Raises TypeError / ValueError naming the attribute; an estimator with no fitted attribute passes.
        """
        self._check_params()
        attrs = {k for k in vars(self) if k.endswith("_") and not k.startswith("_")}
        if not attrs:
            return
        task = {"classes_"} if self._task == "classification" else {"n_outputs_"}
        required = {"model_", "loss_curve_", "validation_loss_curve_", "n_iter_", "n_features_in_",
                    "expert_usage_"} | task
        missing, unknown = required - attrs, attrs - required - {"feature_names_in_"}
        if missing or unknown:
            raise ValueError(f"fitted attributes missing {sorted(missing)}, unknown {sorted(unknown)}")
        n, n_iter = self.n_features_in_, self.n_iter_
        for name, value in (("n_features_in_", n), ("n_iter_", n_iter)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (name == "n_features_in_"):
                raise TypeError(f"{name}={value!r:.80} must be a non-negative int")
        model = self.model_
        if type(model) is not self._model_class:
            raise TypeError(f"model_ is a {type(model).__name__}; expected a {self._model_class.__name__}")
        if self._task == "classification":
            c = self.classes_
            if not isinstance(c, numpy.ndarray) or c.ndim != 1 or len(c) < 2 or \
                    not numpy.array_equal(numpy.unique(c), c):
                raise ValueError(f"classes_={c!r:.80} must be a 1-D array of at least 2 sorted, distinct labels")
            n_out = len(c)
        else:
            n_out = self.n_outputs_
            if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
                raise TypeError(f"n_outputs_={n_out!r:.80} must be a positive int")
        dims = self._model_dims(model)
        if dims != (n, n_out, self.n_experts):
            raise ValueError(f"model_ maps {dims[0]} features to {dims[1]} outputs with {dims[2]} experts; the "
                             f"estimator has n_features_in_={n}, {n_out} outputs, n_experts={self.n_experts}")
        _check_number_list(self.loss_curve_, "loss_curve_", n_iter)
        _check_number_list(self.validation_loss_curve_, "validation_loss_curve_", n_iter)
        usage = self.expert_usage_
        if not isinstance(usage, numpy.ndarray) or usage.shape != (self.n_experts,) or usage.dtype.kind != "f":
            raise TypeError(f"expert_usage_ must be a float array of shape ({self.n_experts},)")
        names = getattr(self, "feature_names_in_", None)
        if names is not None and (not isinstance(names, numpy.ndarray) or names.shape != (n,) or
                                  not all(isinstance(v, str) for v in names)):
            raise TypeError(f"feature_names_in_ must be an array of {n} strings")

    def _train(self, X, y, epochs, stop):
        """Run up to ``epochs`` epochs; with ``stop`` apply the tol / n_iter_no_change rule."""
        X_fit, y_fit, X_val, y_val = X, y, None, None
        if stop and self.early_stopping and len(y) > 1:
            X_fit, X_val, y_fit, y_val = self._split(X, y)
        best, bad, best_params = numpy.inf, 0, None
        initial = self._loss(X_fit, y_fit) if not self.loss_curve_ else None  # growth reference for epoch 1
        for _ in range(epochs):
            t0 = time.perf_counter()
            try:
                loss = self._epoch(X_fit, y_fit, self._rng, self.n_iter_ + 1)
                divergence.check_epoch(loss, self.loss_curve_[0] if self.loss_curve_ else initial, self.n_iter_ + 1)
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"{type(self).__name__}: {str(err).split('; ')[0]}. The estimator was left as it was before "
                    "this call; lower learning_rate, or standardise X (and y for regression) with a "
                    "StandardScaler") from None
            self.loss_curve_.append(loss)
            self.n_iter_ += 1
            watched = self.loss_curve_[-1]
            if X_val is not None:
                watched = self._loss(X_val, y_val)
                self.validation_loss_curve_.append(watched)
            if self.verbose:
                val = f", validation loss {watched:.4f}" if X_val is not None else ""
                print(f"epoch {self.n_iter_}: loss {self.loss_curve_[-1]:.4f}{val} "
                      f"({time.perf_counter() - t0:.3f} s)")
            if not stop:
                continue
            if watched < best - self.tol:
                best, bad = watched, 0
                if X_val is not None:
                    best_params = {k: p.copy() for k, p in self.model_.named_parameters()}
            else:
                bad += 1
                if bad >= self.n_iter_no_change:
                    break
        if best_params is not None:
            for k, p in self.model_.named_parameters():
                p[...] = best_params[k]
        self.expert_usage_ = numpy.bincount(self._gate_scores(X).argmax(axis=1),
                                            minlength=self.n_experts) / X.shape[0]
        return self

    def _split(self, X, y):
        """Hold out ceil(validation_fraction N) rows, stratified when every class fits in both parts."""
        n_val = math.ceil(self.validation_fraction * len(y))
        counts = numpy.bincount(y) if self._task == "classification" else None
        stratify = counts is not None and counts.min() >= 2 and min(n_val, len(y) - n_val) >= len(counts)
        return train_test_split(X, y, test_size=n_val, random_state=int(self._rng.integers(2 ** 31 - 1)),
                                stratify=y if stratify else None)

    def _predict_output(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=numpy.float64)
        return self._output(X)


class _Classifier(ClassifierMixin):
    """Classification: labels of any type, encoded as 0..C-1 in the order of ``classes_``."""
    _task = "classification"
    _y_checks = {}

    def partial_fit(self, X, y, classes=None):
        """One more epoch over (X, y), without early stopping; the first call builds the model.

        classes : every label y can take; required on the first call (later batches may lack some).
        """
        if classes is None and not hasattr(self, "model_"):
            raise ValueError("classes=None: pass every class label on the first call to partial_fit")
        return self._partial_fit(X, y, classes)

    def _targets(self, y, first, classes):
        check_classification_targets(y)
        if first:
            self.classes_ = numpy.unique(y if classes is None else classes)
            if len(self.classes_) < 2:
                raise ValueError(f"y has {len(self.classes_)} class ({self.classes_.tolist()}); a classifier needs "
                                 "at least 2 classes")
        elif classes is not None and not numpy.array_equal(numpy.unique(classes), self.classes_):
            raise ValueError(f"classes={list(classes)} differ from the classes of the first partial_fit call, "
                             f"{self.classes_.tolist()}")
        unknown = numpy.setdiff1d(y, self.classes_)
        if unknown.size:
            raise ValueError(f"y has labels {unknown[:5].tolist()} that are not in classes_={self.classes_.tolist()}")
        return numpy.searchsorted(self.classes_, y), len(self.classes_)

    def predict_proba(self, X):
        """(N, C) class probabilities, columns in the order of ``classes_``."""
        return self._predict_output(X)

    def predict(self, X):
        """(N,) the most probable class of each row."""
        proba = self.predict_proba(X)  # checks that the estimator is fitted first
        return self.classes_[proba.argmax(axis=1)]


class _Regressor(RegressorMixin):
    """Regression: y (N,) or (N, O) floats; predictions have y's number of outputs."""
    _task = "regression"
    _y_checks = {"multi_output": True, "y_numeric": True}

    def partial_fit(self, X, y):
        """One more epoch over (X, y), without early stopping; the first call builds the model."""
        return self._partial_fit(X, y, None)

    def _targets(self, y, first, classes):
        y = numpy.asarray(y, dtype=numpy.float64)
        if first:
            self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        y = y.reshape(len(y), -1)
        if y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs; this estimator was fitted with {self.n_outputs_}")
        return y, self.n_outputs_

    def predict(self, X):
        """(N,) predictions, or (N, O) for O > 1 outputs."""
        out = self._predict_output(X)
        return out.ravel() if self.n_outputs_ == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class _MoEModel(_Estimator):
    """Parameters and model of MoEClassifier / MoERegressor (see their docstrings)."""
    _optimizers = ("adam", "sgd", "ftrl")
    _learning_rates = {"adam": 0.01, "sgd": 0.01, "ftrl": 0.1}

    def __init__(self, n_experts=4, hidden=16, top_k=None, gate="softmax_then_topk", noise=None,
                 balance=None, balance_weight=0.01, optimizer="adam", learning_rate=None, batch_size=32,
                 epochs=200, early_stopping=True, validation_fraction=0.1, n_iter_no_change=10, tol=1e-4,
                 random_state=None, verbose=False):
        self.n_experts = n_experts
        self.hidden = hidden
        self.top_k = top_k
        self.gate = gate
        self.noise = noise
        self.balance = balance
        self.balance_weight = balance_weight
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose

    def _check_params(self):
        super()._check_params()
        if self.hidden is not None:
            _positive_int(self.hidden, "hidden")
        if self.noise not in NOISES:
            raise ValueError(f"noise={self.noise!r} must be one of {NOISES}")
        if self.top_k is not None:
            _positive_int(self.top_k, "top_k")
            if self.top_k > self.n_experts:
                raise ValueError(f"top_k={self.top_k!r} must be between 1 and n_experts={self.n_experts}")
        elif self.balance or self.noise is not None:
            raise ValueError(f"balance={self.balance!r} and noise={self.noise!r} need a sparse gate: pass top_k=K "
                             f"(1 <= K <= n_experts) to {type(self).__name__}, or leave them at None")
        check_real(self.balance_weight, "balance_weight", 0)

    _model_class = MoE

    @staticmethod
    def _model_dims(model):
        return model.in_features, model.out_features, model.n_experts

    def _new_optimizer(self):
        lr = self.learning_rate or self._learning_rates[self.optimizer]
        if self.optimizer == "adam":
            return Adam(lr)
        return SGD(lr, momentum=0.9) if self.optimizer == "sgd" else FTRL(lr)

    def _build(self, n_features, n_outputs, rng):
        names = [self.balance] if isinstance(self.balance, str) else list(self.balance or [])
        return MoE(n_features, n_outputs, self.n_experts, hidden=self.hidden, seed=rng, top_k=self.top_k,
                   gate=self.gate, noise=self.noise, balance={name: self.balance_weight for name in names})

    @property
    def _loss_name(self):
        return "cross_entropy" if self._task == "classification" else "mse"

    def _epoch(self, X, y, rng, epoch):
        try:
            return train.fit(self.model_, X, y, loss=self._loss_name, optimizer=self._optimizer, epochs=1,
                             batch_size=self.batch_size, seed=rng).loss[0]
        except FloatingPointError as err:  # train.fit counts this one epoch as its epoch 1
            raise FloatingPointError(str(err).replace("at epoch 1", f"at epoch {epoch}", 1)) from None

    def _loss(self, X, y):
        return float(train.LOSSES[self._loss_name][0](train.predict(self.model_, X), asarray(y)))

    def _output(self, X):
        out = to_numpy(train.predict(self.model_, X))
        if self._task == "regression":
            return out
        out = numpy.exp(out - out.max(axis=1, keepdims=True))
        return out / out.sum(axis=1, keepdims=True)

    def _gate_scores(self, X):
        gate = self.model_.gate.params
        return X @ to_numpy(gate["W"]) + to_numpy(gate["b"])


class MoEClassifier(_Classifier, _MoEModel):
    """Mixture-of-experts classifier: a softmax (or top-k) gate blends E small networks.

    Parameters
    ----------
    n_experts : E, the number of experts (default 4).
    hidden : width H of each expert's hidden ReLU layer (default 16), or None for linear experts.
    top_k : None (default) for the dense gate (every expert on every sample), or K in 1..E for a
        sparse gate that keeps each sample's K largest gate weights.
    gate : top-k convention: "softmax_then_topk" (seed 000, V-MoE) or "topk_then_softmax" (Shazeer).
    noise : None, "shazeer" (learned noise scale) or "vmoe" (fixed std 1/E) on the gate logits while
        training; needs top_k.
    balance : None, or the name (or list of names) of balance losses: "importance", "load", "switch",
        "z_loss", "seed000"; needs top_k. balance_weight : the weight of each (default 0.01).
    optimizer : "adam" (default), "sgd" (momentum 0.9) or "ftrl" (FTRL-Proximal).
    learning_rate : None for the optimiser's default (Adam 0.01, SGD 0.01, FTRL alpha 0.1).
    batch_size : samples per step (default 32). epochs : the most epochs to run (default 200).
    early_stopping : (default True) hold out validation_fraction (default 0.1) of the data, stratified, stop
        on its loss and keep the weights of its best epoch; False: stop on the training loss.
    n_iter_no_change, tol : stop when the watched loss has not improved by tol for n_iter_no_change epochs.
    random_state : None, int, numpy Generator or RandomState: weights, shuffling and noise.
    verbose : print the epoch, the loss(es) and the time of each epoch.

    Attributes
    ----------
    classes_, model_, loss_curve_, validation_loss_curve_, n_iter_, expert_usage_, n_features_in_:
    see the module docstring.

    Notes
    -----
    p(y | x) = softmax(sum_e G_e(x) E_e(x)), trained on the mean cross-entropy plus the balance losses.
    """


class MoERegressor(_Regressor, _MoEModel):
    """Mixture-of-experts regressor: y = sum_e G_e(x) E_e(x), trained on the mean squared error.

    Parameters and attributes as :class:`MoEClassifier`, with ``n_outputs_`` instead of ``classes_``;
    y may have several columns (one output each). Scale y as well as X: the experts' outputs start
    near 0 and the bias moves by about one learning rate per step.
    """


class _LocalModel(_Estimator):
    """Parameters and model of LocalExpertsClassifier / LocalExpertsRegressor (see their docstrings)."""
    _optimizers = ("sgd", "ftrl")
    _learning_rates = {"sgd": 0.5, "ftrl": 0.5}

    def __init__(self, n_experts=4, mode="competitive", optimizer="sgd", learning_rate=None, batch_size=32,
                 epochs=200, early_stopping=True, validation_fraction=0.1, n_iter_no_change=10, tol=1e-4,
                 random_state=None, verbose=False):
        self.n_experts = n_experts
        self.mode = mode
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.epochs = epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.verbose = verbose

    _model_class = LocalExperts

    @staticmethod
    def _model_dims(model):
        return model.n_features, model.n_outputs, model.n_experts

    def _new_optimizer(self):
        lr = self.learning_rate or self._learning_rates[self.optimizer]
        return SGD(lr) if self.optimizer == "sgd" else FTRL(lr)

    def _build(self, n_features, n_outputs, rng):
        return LocalExperts(n_features, n_outputs, self.n_experts, mode=self.mode, task=self._task, seed=rng)

    def _epoch(self, X, y, rng, epoch):
        train_epoch(self.model_, X, y, self._optimizer, self.batch_size, rng, epoch)
        self._optimizer.end_epoch()
        return self._loss(X, y)

    def _loss(self, X, y):
        return self.model_.loss(X, y)

    def _output(self, X):
        return to_numpy(self.model_.forward(X))

    def _gate_scores(self, X):
        return to_numpy(self.model_.gate(X))


class LocalExpertsClassifier(_Classifier, _LocalModel):
    """Mixture of local linear experts (Jacobs, Jordan, Nowlan & Hinton 1991) as a classifier.

    E linear experts with bias and a softmax gate with bias, trained by the closed-form rules of
    numpy_moe.classic: "competitive" ascends the mixture log-likelihood, so each expert takes over a
    region of the input space and the gate learns to pick it; "cooperative" descends the cross-entropy of
    the blended output.

    Parameters
    ----------
    n_experts : E (default 4). mode : "competitive" (default) or "cooperative".
    optimizer : "sgd" (the update rules as they are, learning rate η) or "ftrl" (FTRL-Proximal, alpha).
    learning_rate : None for the default (SGD 0.5, FTRL alpha 0.5).
    batch_size, epochs, early_stopping, validation_fraction, n_iter_no_change, tol, random_state, verbose :
        as for :class:`MoEClassifier`.

    Attributes
    ----------
    As :class:`MoEClassifier`; ``model_`` is a numpy_moe.classic.LocalExperts and ``loss_curve_`` holds
    the mode's loss on the training data after each epoch (cross-entropy, or minus the log-likelihood).

    Notes
    -----
    Competitive prediction p(y | x) = sum_e g_e(x) softmax(x̃ V_e); cooperative softmax(sum_e g_e(x) x̃ V_e).
    """


class LocalExpertsRegressor(_Regressor, _LocalModel):
    """Mixture of local linear experts (Jacobs et al. 1991) as a regressor: y = sum_e g_e(x) (x̃ V_e).

    Parameters and attributes as :class:`LocalExpertsClassifier`, with ``n_outputs_`` instead of
    ``classes_``. Competitive training treats each expert as a Gaussian of unit variance around its
    prediction, so scale y to unit variance as well as X.
    """
