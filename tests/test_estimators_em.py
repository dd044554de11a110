"""scikit-learn estimators for the mixture of experts fitted by EM (numpy_moe/estimators/hme.py)."""
import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from numpy_moe.datasets import make_v_regression
from numpy_moe.estimators import HMEClassifier, HMERegressor


# No check is skipped.
@parametrize_with_checks([HMERegressor(), HMEClassifier(), HMERegressor(tree=[2, 2], solver="adam", max_iter=50)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_em_regressor_fits_the_v_with_one_expert_per_arm_and_reports_its_iterations():
    X, X_test, y, y_test = make_v_regression(400, seed=0, noise=0.1)
    reg = HMERegressor(tol=1e-8, random_state=0).fit(X, y)
    assert reg.converged_ and 1 <= reg.n_iter_ < 200
    assert len(reg.log_likelihood_curve_) == reg.n_iter_ + 1
    assert np.diff(reg.log_likelihood_curve_).min() > -1e-9  # EM: never down (ridge 1e-6 is negligible here)
    assert np.mean((reg.predict(X_test) - y_test) ** 2) < 0.013  # noise variance 0.01
    slopes = sorted(reg.model_.params["V"][:, 0, 0])
    assert slopes[0] == pytest.approx(-2, abs=0.2) and slopes[1] == pytest.approx(2, abs=0.2)
    left = (X[:, 0] < 0.5).mean()  # 0.45 of this training set: one expert per arm, the gate switching near 0.5
    np.testing.assert_allclose(sorted(reg.expert_usage_), sorted([left, 1 - left]), atol=0.05)


def test_em_and_adam_reach_the_same_log_likelihood_on_the_v():
    X, _, y, _ = make_v_regression(300, seed=1, noise=0.1)
    em = HMERegressor(random_state=0, tol=1e-9, max_iter=500).fit(X, y)
    adam = HMERegressor(solver="adam", random_state=0, tol=1e-9, max_iter=3000).fit(X, y)
    assert adam.n_iter_ > 5 * em.n_iter_  # EM needs far fewer iterations
    assert adam.log_likelihood_curve_[-1] == pytest.approx(em.log_likelihood_curve_[-1], abs=0.02)


def test_em_classifier_in_a_pipeline_on_wine():
    X, y = load_wine(return_X_y=True)
    clf = make_pipeline(StandardScaler(), HMEClassifier(tree=2, ridge=1.0, random_state=0))
    assert cross_val_score(clf, X, y, cv=3).mean() > 0.9


@pytest.mark.parametrize("params,match", [({"solver": "lbfgs"}, "solver='lbfgs'"), ({"max_iter": 0}, "max_iter=0"),
                                          ({"tol": -1.0}, "tol=-1.0"), ({"ridge": -1}, "ridge=-1"),
                                          ({"tree": [0]}, "tree="), ({"learning_rate": 0}, "learning_rate=0"),
                                          # before, these raised from inside: a comparison of str and int,
                                          # LAPACK's "SVD did not converge", or an error naming "seed"
                                          ({"tol": "1e-3"}, "tol='1e-3' must be a finite number >= 0"),
                                          ({"learning_rate": None}, "learning_rate=None must be a finite number"),
                                          ({"ridge": float("inf")}, "ridge=inf must be a finite number >= 0"),
                                          ({"tol": float("inf")}, "tol=inf must be a finite number >= 0"),
                                          ({"random_state": -1}, "random_state=-1 must be None, an int >= 0"),
                                          ({"random_state": "0"}, "random_state='0' must be None, an int")])
def test_bad_parameters_are_named(params, match):
    X, y = np.random.default_rng(0).standard_normal((20, 2)), np.arange(20) % 2
    with pytest.raises((ValueError, TypeError), match=match):
        HMEClassifier(**params).fit(X, y)
