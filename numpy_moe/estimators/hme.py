"""scikit-learn estimators for the (hierarchical) mixture of experts fitted by EM (numpy_moe.hme)::

    from numpy_moe.estimators import HMERegressor
    reg = HMERegressor(tree=[2, 2]).fit(X, y)      # a two-level binary tree of 4 linear-Gaussian experts
    reg.n_iter_, reg.log_likelihood_curve_[-1], reg.converged_

- :class:`HMERegressor`: linear-Gaussian experts, each with its own variance; predicts the mixture mean.
- :class:`HMEClassifier`: softmax (multinomial logit) experts; ``predict_proba`` is the mixture.

``solver="em"`` (default) runs EM (Jordan & Jacobs 1994) until the mean log-likelihood per sample, minus
the ridge penalty over N (:func:`numpy_moe.hme.fit_em`'s objective), gains less than ``tol`` in one
iteration or ``max_iter`` iterations have run; ``solver="adam"`` takes full-batch Adam steps on the mean
negative log-likelihood of the same model until the mean log-likelihood changes by less than ``tol`` (up or
down) in one step (for comparison). Both start from the M-step of spatially coherent random responsibilities
(:func:`numpy_moe.hme.init_responsibilities`) drawn from ``random_state``.

Fitted attributes: ``model_`` (a HierarchicalMoE), ``n_iter_``, ``log_likelihood_curve_`` (mean
log-likelihood per sample, entry 0 at the start, then one per iteration), ``converged_``,
``expert_usage_`` (the top-1 share: the fraction of the training samples whose largest prior π_e(x)
is expert e), ``n_features_in_``, and ``classes_`` or ``n_outputs_``.
"""
import numpy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import divergence
from ..backend import to_numpy
from ..hme import HierarchicalMoE, fit_em, init_responsibilities, parse_tree
from ..optim import Adam
from ..validation import check_real
from .base import (_check_fitted_names, _check_number_list, _check_sizes, _check_usage_and_names, _fitted_names,
                   _generator, _predicting, _Transaction)

SOLVERS = ("em", "adam")


def _as_lists(tree):
    """A tree spec with tuples as lists (a file stores the estimator's and model_'s trees separately)."""
    return [_as_lists(node) for node in tree] if isinstance(tree, (list, tuple)) else tree


class _HMEEstimator(BaseEstimator):
    """Parameters, fit and prediction shared by HMERegressor and HMEClassifier."""

    def __init__(self, tree=2, solver="em", max_iter=200, tol=1e-6, ridge=1e-6, learning_rate=0.05,
                 random_state=None):
        self.tree = tree
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.ridge = ridge
        self.learning_rate = learning_rate
        self.random_state = random_state

    def _check_params(self, walk_tree=True):
        """walk_tree=False skips parse_tree, whose work grows with the tree's leaves (an unfitted estimator
        from a file: fit walks it)."""
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r} must be one of {SOLVERS}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, numpy.integer)) \
                or self.max_iter < 1:
            raise ValueError(f"max_iter={self.max_iter!r} must be an integer >= 1")
        check_real(self.tol, "tol", 0)
        check_real(self.ridge, "ridge", 0)
        check_real(self.learning_rate, "learning_rate", 0, low_open=True)
        if walk_tree:
            parse_tree(self.tree)

    def _check_fitted_state(self):
        """Check parameters and fitted attributes for consistency (numpy_moe.io calls this on loading).

        Raises TypeError / ValueError naming the attribute; an estimator with no fitted attribute passes.
        """
        if not _fitted_names(self):
            self._check_params(walk_tree=False)  # no model_ bounds the tree: fit will walk it
            return
        _check_fitted_names(self, {"model_", "n_iter_", "log_likelihood_curve_", "converged_", "expert_usage_",
                                   "n_features_in_"})
        model = self.model_
        if type(model) is not HierarchicalMoE or model.expert != self._expert:
            what = f" of {model.expert!r} experts" if type(model) is HierarchicalMoE else ""
            raise TypeError(f"model_ is a {type(model).__name__}{what}; expected a HierarchicalMoE of "
                            f"{self._expert!r} experts")
        if _as_lists(model.tree) != _as_lists(self.tree):  # before parse_tree: model_'s tree is budget-bounded
            raise ValueError(f"model_ has tree={model.tree!r}; the estimator has tree={self.tree!r}")
        self._check_params()
        n, n_iter = self.n_features_in_, self.n_iter_
        n_out = _check_sizes(self)
        outputs = f"{n_out} classes" if self._task == "classification" else f"{n_out} outputs"
        if (model.n_features, model.n_outputs) != (n, n_out):
            raise ValueError(f"model_ maps {model.n_features} features to {model.n_outputs} outputs; the estimator "
                             f"has n_features_in_={n} and {outputs}")
        _check_number_list(self.log_likelihood_curve_, "log_likelihood_curve_", n_iter + 1)
        if len(self.log_likelihood_curve_) != n_iter + 1:
            raise ValueError(f"log_likelihood_curve_ must be a list of {n_iter + 1} numbers (n_iter_={n_iter} "
                             f"plus the start), found {len(self.log_likelihood_curve_)}")
        if not isinstance(self.converged_, (bool, numpy.bool_)):
            raise TypeError(f"converged_={self.converged_!r:.80} must be True or False")
        _check_usage_and_names(self, model.n_experts, n)

    def fit(self, X, y):
        """Fit the mixture to X (N, D) and y by EM (or Adam); returns self.

        Transactional, as numpy_moe.estimators' fit: when it raises, the estimator is as it was before.
        """
        with _Transaction(self):
            return self._fit(X, y)

    def _fit(self, X, y):
        self._check_params()
        X, y = validate_data(self, X, y, dtype=numpy.float64, **self._y_checks)
        y, n_outputs = self._encode(y)
        rng = _generator(self.random_state)
        model = HierarchicalMoE(X.shape[1], n_outputs, self.tree, expert=self._expert, seed=rng)
        h = init_responsibilities(X, y, model.n_experts, seed=rng, task=self._task)
        model.m_step(X, y, h, self.ridge)
        if self.solver == "em":
            history = fit_em(model, X, y, self.max_iter, self.tol, self.ridge)
            curve, n_iter, converged = history["log_likelihood"], history["n_iter"], history["converged"]
        else:
            curve, n_iter, converged = self._adam(model, X, y)
        self.model_ = model
        self.log_likelihood_curve_ = [ll / len(y) for ll in curve]
        self.n_iter_, self.converged_ = n_iter, converged
        self.expert_usage_ = numpy.bincount(to_numpy(model.gate(X)).argmax(axis=1),
                                            minlength=model.n_experts) / len(y)
        return self

    def _adam(self, model, X, y):
        """Full-batch Adam on the mean negative log-likelihood, stopped like EM.

        Rules 1 and 2 of numpy_moe.divergence apply (non-finite gradients or weights stop it). The growth
        rule does not: the Gaussian likelihood is unbounded, and from an EM start with near-singular
        variances (scikit-learn's one-sample check) a first Adam step raises the NLL from -8 to 3e4,
        a jump that says the start was degenerate rather than that the learning rate is too large.
        """
        optimizer = Adam(self.learning_rate)
        curve = [model.log_likelihood(X, y)]
        for it in range(1, self.max_iter + 1):
            model.nll_grads(X, y)
            divergence.check_step(model, -curve[-1] / len(y), it, 1)
            divergence.step(optimizer, model, it, 1)
            curve.append(model.log_likelihood(X, y))
            if abs(curve[-1] - curve[-2]) / len(y) < self.tol:
                return curve, it, True
        return curve, self.max_iter, False

    def _checked(self, X):
        check_is_fitted(self, "model_")
        return validate_data(self, X, reset=False, dtype=numpy.float64)


class HMERegressor(RegressorMixin, _HMEEstimator):
    """A (hierarchical) mixture of linear-Gaussian experts fitted by EM: y ~ Σ_e π_e(x) N(x̃ β_e, σ_e² I).

    Parameters
    ----------
    tree : int or nested lists of ints (numpy_moe.hme): 2 (default) is a flat mixture of 2 experts,
        [2, 2] the two-level binary tree of Jordan & Jacobs.
    solver : "em" (default) or "adam" (gradient ascent on the log-likelihood, learning_rate).
    max_iter : most iterations (default 200). tol : stop when the mean log-likelihood per sample gains
        less than tol in an iteration (default 1e-6): for EM, minus the ridge penalty over N; for Adam, the
        absolute change.
    ridge : the M-steps' L2 stabiliser (default 1e-6, numpy_moe.em). learning_rate : Adam's (default 0.05).
    random_state : None, int, numpy Generator or RandomState: the starting responsibilities.

    Attributes
    ----------
    model_, n_iter_, log_likelihood_curve_, converged_, expert_usage_, n_features_in_, n_outputs_:
    see the module docstring. Scale y as well as X: σ_e is fitted, but the ridge is absolute.
    """
    _expert, _task = "gaussian", "regression"
    _y_checks = {"multi_output": True, "y_numeric": True}

    def _encode(self, y):
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        return numpy.asarray(y, dtype=numpy.float64).reshape(len(y), -1), self.n_outputs_

    def predict(self, X):
        """(N,) mixture means, or (N, O) for O > 1 outputs."""
        X = self._checked(X)
        with _predicting(self):  # the model keeps its forward pass on itself
            out = to_numpy(self.model_.forward(X))
            self.model_.drop_caches()  # the batch's arrays: a pickled estimator holds its parameters only
        return out.ravel() if self.n_outputs_ == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class HMEClassifier(ClassifierMixin, _HMEEstimator):
    """A (hierarchical) mixture of softmax experts fitted by EM: p(y | x) = Σ_e π_e(x) softmax(x̃ V_e)_y.

    Parameters and attributes as :class:`HMERegressor`, with ``classes_`` instead of ``n_outputs_``.
    Each expert's M-step is an IRLS (Newton) fit of a multinomial logit to its posterior-weighted labels.
    """
    _expert, _task = "softmax", "classification"
    _y_checks = {}

    def _encode(self, y):
        check_classification_targets(y)
        self.classes_ = numpy.unique(y)
        if len(self.classes_) < 2:
            raise ValueError(f"y has {len(self.classes_)} class ({self.classes_.tolist()}); a classifier needs "
                             "at least 2 classes")
        return numpy.searchsorted(self.classes_, y), len(self.classes_)

    def predict_proba(self, X):
        """(N, C) the mixture's class probabilities, columns in the order of ``classes_``."""
        X = self._checked(X)
        with _predicting(self):  # the model keeps its forward pass on itself
            out = numpy.exp(to_numpy(self.model_.forward(X)))
            self.model_.drop_caches()
            return out

    def predict(self, X):
        """(N,) the most probable class of each row."""
        proba = self.predict_proba(X)  # checks that the estimator is fitted first
        return self.classes_[proba.argmax(axis=1)]
