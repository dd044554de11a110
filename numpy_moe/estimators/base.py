"""What the estimators share: the epoch loop with early stopping and the divergence rule, transactional
fit, the fitted-state check numpy_moe.io runs on loading, and the classification / regression mixins."""
import copy
import inspect
import math
import threading
import time
import weakref

import numpy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import divergence
from ..backend import default_rng
from ..validation import check_real


def _generator(random_state):
    """A numpy Generator from None, an int >= 0, a Generator or a RandomState (never the global RNG)."""
    if isinstance(random_state, numpy.random.RandomState):
        random_state = int(random_state.randint(numpy.iinfo(numpy.int32).max))
    expected = "must be None, an int >= 0, a numpy Generator or RandomState"
    if random_state is not None and (isinstance(random_state, (bool, numpy.bool_)) or not isinstance(
            random_state, (int, numpy.integer, numpy.random.Generator))):
        raise ValueError(f"random_state={random_state!r} {expected}")
    if isinstance(random_state, (int, numpy.integer)) and random_state < 0:
        raise ValueError(f"random_state={random_state!r} {expected}")
    return default_rng(random_state)


_predict_locks = weakref.WeakKeyDictionary()  # estimator -> its lock (not an attribute: a Lock does not pickle)
_predict_locks_lock = threading.Lock()


def _predicting(est):
    """The lock that makes ``est``'s predictions from several threads take turns.

    The fitted model keeps each forward pass on itself (numpy_moe.layers), and ``train.predict`` switches it
    to evaluation mode and back, so two predictions at once would read each other's arrays and mode
    (measured before this lock: 39 of 80 concurrent ``predict_proba`` calls of an MoEClassifier returned
    another input's probabilities, without an error).
    """
    with _predict_locks_lock:
        lock = _predict_locks.get(est)
        if lock is None:
            lock = _predict_locks[est] = threading.RLock()  # reentrant: a nested call in one thread never hangs
    return lock


def _share_generator(model, rng):
    """Give every module of ``model`` that draws noise (a noisy gate's ``rng``) the generator ``rng``.

    A built model shares the estimator's generator (``_build`` seeds it with it); a loaded one was rebuilt
    without a seed, so its noise would come from an unseeded generator and ignore ``random_state``.
    """
    for m in model.modules():
        if isinstance(getattr(m, "rng", None), numpy.random.Generator):
            m.rng = rng


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


def _fitted_names(est):
    """The names of ``est``'s fitted attributes (public, ending in ``_``)."""
    return {k for k in vars(est) if k.endswith("_") and not k.startswith("_")}


def _check_fitted_names(est, required):
    """ValueError unless ``est``'s fitted attributes are ``required`` plus its task's (``classes_`` or
    ``n_outputs_``), and at most ``feature_names_in_`` besides."""
    attrs = _fitted_names(est)
    required = required | ({"classes_"} if est._task == "classification" else {"n_outputs_"})
    missing, unknown = required - attrs, attrs - required - {"feature_names_in_"}
    if missing or unknown:
        raise ValueError(f"fitted attributes missing {sorted(missing)}, unknown {sorted(unknown)}")


def _check_sizes(est):
    """Check ``est``'s n_features_in_, n_iter_ and classes_ (or n_outputs_); returns the output count."""
    for name in ("n_features_in_", "n_iter_"):
        value = getattr(est, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < (name == "n_features_in_"):
            raise TypeError(f"{name}={value!r:.80} must be a non-negative int")
    if est._task == "classification":
        c = est.classes_
        if not isinstance(c, numpy.ndarray) or c.ndim != 1 or len(c) < 2 or not numpy.array_equal(numpy.unique(c), c):
            raise ValueError(f"classes_={c!r:.80} must be a 1-D array of at least 2 sorted, distinct labels")
        return len(c)
    n_out = est.n_outputs_
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise TypeError(f"n_outputs_={n_out!r:.80} must be a positive int")
    return n_out


def _check_usage_and_names(est, n_experts, n_features):
    """TypeError unless ``est.expert_usage_`` is a float (E,) array and ``feature_names_in_``, if any, D strings."""
    usage = est.expert_usage_
    if not isinstance(usage, numpy.ndarray) or usage.shape != (n_experts,) or usage.dtype.kind != "f":
        raise TypeError(f"expert_usage_ must be a float array of shape ({n_experts},)")
    names = getattr(est, "feature_names_in_", None)
    if names is not None and (not isinstance(names, numpy.ndarray) or names.shape != (n_features,) or
                              not all(isinstance(v, str) for v in names)):
        raise TypeError(f"feature_names_in_ must be an array of {n_features} strings")


def _check_number_list(values, name, max_len):
    if not isinstance(values, list) or len(values) > max_len or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise TypeError(f"{name} must be a list of at most {max_len} finite numbers, found {values!r:.80}")


_NOT_ARCHITECTURE = ("seed", "dispatch")  # the initial draw; how the experts are run (the same function)


def _check_model_config(model, expected):
    """Raise ValueError unless ``model``'s configuration is ``expected`` (the arguments the estimator builds it
    with), every other argument at its constructor's default: a file's model_ is the estimator's model."""
    config = model.get_config()
    defaults = inspect.signature(type(model).__init__).parameters
    want = {k: p.default for k, p in defaults.items() if k in config and k not in _NOT_ARCHITECTURE
            and p.default is not inspect.Parameter.empty}
    want.update(expected)
    diff = [f"{k}={config.get(k)!r:.60} (the estimator builds {v!r:.60})" for k, v in want.items() if config.get(k) != v]
    if diff:
        raise ValueError(f"model_ is not the model this estimator builds: {'; '.join(diff)}")


class _Estimator(BaseEstimator):
    """The training loop shared by the four estimators: epochs, early stopping, progress, usage.

    Subclasses provide ``_build(n_features, n_outputs, rng)`` -> model, ``_new_optimizer()``,
    ``_epoch(X, y, rng, epoch, reference)`` -> training loss (reference: what the
    divergence rule compares that loss with), ``_loss(X, y)``, ``_output(X)`` -> (N, O) numpy (class
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
            if not hasattr(self, "_optimizer"):  # loaded from a file without training state (see _training_state)
                self._rng, self._optimizer = _generator(self.random_state), self._new_optimizer()
                _share_generator(self.model_, self._rng)
            return self._train(X, y, 1, stop=False)

    def _training_state(self):
        """(optimiser, generator) that ``partial_fit`` goes on with, for numpy_moe.io to save; None before the
        first fit (and for an estimator loaded from a file without them, until its first partial_fit)."""
        if not hasattr(self, "model_") or not hasattr(self, "_optimizer"):
            return None
        return self._optimizer, self._rng

    def _restore_training_state(self, optimizer, rng):
        """Go on from a file's training state (numpy_moe.io, after it checked ``optimizer`` against ``model_``):
        the optimiser, and the generator of shuffling, validation splits and gate noise, which the model's noisy
        gates share as they do after fit. TypeError for an optimiser of another class than this estimator's."""
        if type(optimizer) is not type(self._new_optimizer()):
            raise TypeError(f"the stored optimiser is a {type(optimizer).__name__}; this {type(self).__name__} "
                            f"(optimizer={getattr(self, 'optimizer', None)!r}) trains with "
                            f"{type(self._new_optimizer()).__name__}")
        self._optimizer, self._rng = optimizer, rng
        _share_generator(self.model_, rng)

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
        if not _fitted_names(self):
            return
        _check_fitted_names(self, {"model_", "loss_curve_", "validation_loss_curve_", "n_iter_", "n_features_in_",
                                   "expert_usage_"})
        n, n_iter = self.n_features_in_, self.n_iter_
        n_out = _check_sizes(self)
        model = self.model_
        if type(model) is not self._model_class:
            raise TypeError(f"model_ is a {type(model).__name__}; expected a {self._model_class.__name__}")
        dims = self._model_dims(model)
        if dims != (n, n_out, self.n_experts):
            raise ValueError(f"model_ maps {dims[0]} features to {dims[1]} outputs with {dims[2]} experts; the "
                             f"estimator has n_features_in_={n}, {n_out} outputs, n_experts={self.n_experts}")
        _check_model_config(model, self._model_config(n, n_out))
        _check_number_list(self.loss_curve_, "loss_curve_", n_iter)
        _check_number_list(self.validation_loss_curve_, "validation_loss_curve_", n_iter)
        _check_usage_and_names(self, self.n_experts, n)

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
                reference = self.loss_curve_[0] if self.loss_curve_ else initial
                loss = self._epoch(X_fit, y_fit, self._rng, self.n_iter_ + 1, reference)
                divergence.check_epoch(loss, reference, self.n_iter_ + 1)
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
        self.model_.drop_caches()  # the last batch's arrays: a pickled estimator holds its parameters only
        return self

    def _split(self, X, y):
        """Hold out ceil(validation_fraction N) rows, stratified when every class fits in both parts."""
        n_val = math.ceil(self.validation_fraction * len(y))
        if n_val >= len(y):
            raise ValueError(f"validation_fraction={self.validation_fraction!r} holds out all {len(y)} samples "
                             "(ceil(validation_fraction N) of them), leaving none to train on: lower it, or pass "
                             "early_stopping=False")
        counts = numpy.bincount(y) if self._task == "classification" else None
        stratify = counts is not None and counts.min() >= 2 and min(n_val, len(y) - n_val) >= len(counts)
        return train_test_split(X, y, test_size=n_val, random_state=int(self._rng.integers(2 ** 31 - 1)),
                                stratify=y if stratify else None)

    def _predict_output(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=numpy.float64)
        with _predicting(self):
            out = self._output(X)
            self.model_.drop_caches()  # the batch's arrays: a pickled estimator holds its parameters only
            return out


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
