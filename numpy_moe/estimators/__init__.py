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

- ``model_``: the trained numpy_moe Module (``model_.gate``, ``model_.experts``, ...), without the arrays of
  its last batch: fit, partial_fit and predict end with ``model_.drop_caches()``, so a pickled or copied
  estimator holds its parameters, gradients and optimiser state only (run ``model_.forward(X)`` before
  reading what a forward leaves, such as ``model_.diagnostics``);
- ``loss_curve_``: the training loss of each epoch; ``validation_loss_curve_`` with early stopping;
- ``n_iter_``: epochs run; ``n_features_in_`` (and ``feature_names_in_`` for DataFrames);
- ``expert_usage_``: (E,) the top-1 share: the fraction of the training samples whose largest gate weight
  is expert e (sums to 1 whatever top_k; a collapsed gate shows as one entry near 1). It is not the
  share of the N K assignments of a top-k layer, which ``model_.diagnostics["samples_per_expert"]``
  counts after a ``model_.forward(X)`` (every sample's K experts, so those counts sum to N K);
- ``classes_`` (classifiers) or ``n_outputs_`` (regressors).

Training stops when the watched loss has not improved by ``tol`` for ``n_iter_no_change`` epochs, as in
scikit-learn's MLP. By default (``early_stopping=True``, unlike the MLP) the watched loss is the loss on
a held-out ``validation_fraction`` of the training data (stratified for classifiers) and the weights of
the best validation epoch are kept: on small noisy data this both prevents overfitting and stops sooner.
With ``early_stopping=False`` the training loss is watched and the last weights are kept.
Save a fitted estimator with :func:`numpy_moe.io.save`.

``random_state`` takes None, an int, a RandomState or a numpy Generator. None draws fresh entropy from the
operating system, not from NumPy's global RandomState as scikit-learn's own estimators do
(``check_random_state(None)``; numpy_moe never uses the global generator), so ``np.random.seed`` does not
make a fit repeatable: pass an int. An int gives the same fit, bit for bit, every time (``clone`` too); a
RandomState or Generator is drawn from, so two fits with the same object differ, as in scikit-learn.
``predict``, ``predict_proba`` and ``score`` may be called from several threads at once: they take turns
on the fitted model, which keeps its forward pass on itself (numpy_moe.layers).

Modules: :mod:`.base` (the training loop, transactions, the task mixins), :mod:`.moe`, :mod:`.local`,
:mod:`.hme` (HMERegressor / HMEClassifier, the EM-fitted hierarchical mixtures).
"""
from .hme import HMEClassifier, HMERegressor
from .local import LocalExpertsClassifier, LocalExpertsRegressor
from .moe import MoEClassifier, MoERegressor

__all__ = ["HMEClassifier", "HMERegressor", "LocalExpertsClassifier", "LocalExpertsRegressor", "MoEClassifier",
           "MoERegressor"]
