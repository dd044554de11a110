"""LocalExpertsClassifier and LocalExpertsRegressor: the classic mixture of local experts (numpy_moe.classic)."""
from ..backend import to_numpy
from ..classic import LocalExperts, train_epoch
from ..optim import FTRL, SGD
from .base import _Classifier, _Estimator, _Regressor


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

    def _model_config(self, n_features, n_outputs):
        """The arguments of the LocalExperts this estimator builds (all but its seed)."""
        return dict(n_features=n_features, n_outputs=n_outputs, n_experts=self.n_experts, mode=self.mode,
                    task=self._task)

    def _build(self, n_features, n_outputs, rng):
        return LocalExperts(**self._model_config(n_features, n_outputs), seed=rng)

    def _epoch(self, X, y, rng, epoch, reference):
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
        as for :class:`.MoEClassifier`.

    Attributes
    ----------
    As :class:`.MoEClassifier`; ``model_`` is a numpy_moe.classic.LocalExperts and ``loss_curve_`` holds
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
