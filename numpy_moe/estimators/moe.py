"""MoEClassifier and MoERegressor: the MoE layer of numpy_moe.moe trained by mini-batch Adam, SGD or FTRL."""
import numpy

from .. import train
from ..backend import asarray, to_numpy
from ..gating import NOISES
from ..moe import MoE
from ..optim import FTRL, SGD, Adam
from ..validation import check_real
from .base import _Classifier, _Estimator, _positive_int, _Regressor


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
        names = [self.balance] if isinstance(self.balance, str) else self.balance
        if self.balance is not None and (not isinstance(names, (list, tuple)) or
                                         not all(isinstance(n, str) for n in names) or len(set(names)) < len(names)):
            raise TypeError(f"balance={self.balance!r:.80} must be None, a loss name or a list of distinct loss names; "
                            "each is weighted by balance_weight")
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

    def _model_config(self, n_features, n_outputs):
        """The arguments of the MoE this estimator builds (all but its seed)."""
        names = [self.balance] if isinstance(self.balance, str) else list(self.balance or [])
        return dict(in_features=n_features, out_features=n_outputs, n_experts=self.n_experts, hidden=self.hidden,
                    top_k=self.top_k, gate=self.gate, noise=self.noise,
                    balance={name: self.balance_weight for name in names})

    def _build(self, n_features, n_outputs, rng):
        return MoE(**self._model_config(n_features, n_outputs), seed=rng)

    @property
    def _loss_name(self):
        return "cross_entropy" if self._task == "classification" else "mse"

    def _epoch(self, X, y, rng, epoch, reference):
        try:
            return train.fit(self.model_, X, y, loss=self._loss_name, optimizer=self._optimizer, epochs=1,
                             batch_size=self.batch_size, seed=rng, reference_loss=reference).loss[0]
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
    gate : top-k convention: "softmax_then_topk" (post 000, V-MoE) or "topk_then_softmax" (Shazeer).
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
