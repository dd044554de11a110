"""scikit-learn estimators: every check_estimator check, Pipeline and GridSearchCV, fitted attributes,
partial_fit, early stopping, parameter errors."""
import numpy as np
import pytest
from sklearn.datasets import load_wine
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from numpy_moe.estimators import LocalExpertsClassifier, LocalExpertsRegressor, MoEClassifier, MoERegressor

# No check is skipped here; scikit-learn itself skips only its array-API check (SCIPY_ARRAY_API unset), one per
# estimator. pandas is a test dependency (setup.cfg), so the DataFrame checks run.
ESTIMATORS = [MoEClassifier(), MoERegressor(), LocalExpertsClassifier(), LocalExpertsRegressor(),
              MoEClassifier(top_k=2, gate="topk_then_softmax", noise="shazeer", balance=("importance", "load"))]


# The classic rule is LMS: SGD on a linear expert is stable only for lr |x|^2 < 2. These checks fit raw
# inputs with |x|^2 up to 2e4 (X ~ N(100, 1), iris, 3 U(0, 1) in 10 dimensions), where the default lr = 0.5
# diverges, and the divergence rule (numpy_moe.divergence) makes fit raise instead of returning garbage.
_LMS_DIVERGES = ("LocalExpertsRegressor's SGD rule diverges on these unstandardised inputs (lr |x|^2 >> 2), so "
                 "fit raises FloatingPointError by design; test_local_experts_regressor_diverges_on_raw_inputs")
_EXPECTED_FAILURES = {name: _LMS_DIVERGES for name in (
    "check_positive_only_tag_during_fit", "check_fit2d_1sample", "check_fit_idempotent",
    "check_fit_check_is_fitted", "check_n_features_in")}


def _expected_failures(estimator):
    return _EXPECTED_FAILURES if isinstance(estimator, LocalExpertsRegressor) else {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failures, xfail_strict=True)
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.fixture(scope="module")
def wine():
    X, y = load_wine(return_X_y=True)
    return train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)


def test_three_line_quick_start_fits_standardised_wine():
    X, y = load_wine(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    clf = MoEClassifier().fit(X, y)
    assert (clf.predict(X) == y).mean() > 0.95


def softmax(h):
    e = np.exp(h - h.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_moe_predict_proba_is_the_formula_on_the_fitted_weights(rng):
    # p(y | x) = softmax(sum_e g_e(x) E_e(x)), g = softmax(x W_g + b_g), E_e(x) = relu(x W1_e + b1_e) W2_e + b2_e,
    # written out with NumPy from model_'s parameters; columns follow classes_ (here sorted strings)
    X = rng.standard_normal((40, 3))
    y = np.array(["cat", "ant", "bee", "dog"])[(X[:, 0] > 0) + 2 * (X[:, 1] > 0)]
    clf = MoEClassifier(n_experts=3, hidden=5, random_state=0).fit(X, y)
    P = {k: np.asarray(p) for k, p in clf.model_.named_parameters()}
    g = softmax(X @ P["gate.W"] + P["gate.b"])  # (N, E)
    out = [np.maximum(X @ P["experts.W1"][e] + P["experts.b1"][e], 0) @ P["experts.W2"][e] + P["experts.b2"][e]
           for e in range(3)]  # E arrays (N, C)
    proba = softmax(sum(g[:, [e]] * out[e] for e in range(3)))
    np.testing.assert_allclose(clf.predict_proba(X), proba, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(clf.classes_, ["ant", "bee", "cat", "dog"])
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])


def test_local_experts_predict_proba_is_the_competitive_mixture(rng):
    # competitive prediction: sum_e g_e softmax(x̃ V_e), g = softmax(x̃ M), x̃ = [x, 1]
    X = rng.standard_normal((40, 3))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    clf = LocalExpertsClassifier(n_experts=2, random_state=0).fit(X, y)
    V, M = (np.asarray(clf.model_.params[k]) for k in ("V", "M"))
    X1 = np.hstack([X, np.ones((40, 1))])
    g = softmax(X1 @ M)  # (N, E)
    proba = sum(g[:, [e]] * softmax(X1 @ V[e]) for e in range(2))
    np.testing.assert_allclose(clf.predict_proba(X), proba, rtol=1e-12, atol=1e-15)


def test_pipeline_with_scaler_on_wine(wine):
    X_train, X_test, y_train, y_test = wine
    names = np.array(["barolo", "grignolino", "barbera"])  # string labels come back as given
    pipe = make_pipeline(StandardScaler(), MoEClassifier(random_state=0)).fit(X_train, names[y_train])
    assert f1_score(names[y_test], pipe.predict(X_test), average="macro") >= 0.95
    proba = pipe.predict_proba(X_test)
    np.testing.assert_array_equal(pipe[-1].classes_, np.sort(names))
    np.testing.assert_array_equal(pipe[-1].classes_[proba.argmax(axis=1)], pipe.predict(X_test))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)


def test_grid_search_over_experts_in_a_pipeline(wine):
    X_train, X_test, y_train, y_test = wine
    grid = GridSearchCV(make_pipeline(StandardScaler(), MoEClassifier(random_state=0)),
                        {"moeclassifier__n_experts": [1, 3], "moeclassifier__hidden": [None, 8]}, cv=3)
    grid.fit(X_train, y_train)
    assert len(grid.cv_results_["params"]) == 4
    assert grid.best_estimator_[-1].n_experts == grid.best_params_["moeclassifier__n_experts"]
    assert grid.score(X_test, y_test) >= 0.9


def test_fitted_attributes(wine):
    X_train, _, y_train, _ = wine
    X = StandardScaler().fit_transform(X_train)
    clf = MoEClassifier(n_experts=3, random_state=0).fit(X, y_train)
    assert clf.n_features_in_ == 13 and clf.model_.n_experts == 3
    assert len(clf.loss_curve_) == len(clf.validation_loss_curve_) == clf.n_iter_ <= clf.epochs
    assert clf.loss_curve_[-1] < 0.1 * clf.loss_curve_[0]
    # expert_usage_: the fraction of the training rows whose largest gate weight is each expert
    top1 = clf.model_.gate.eval().forward(X).argmax(axis=1)
    np.testing.assert_array_equal(clf.expert_usage_, [np.mean(top1 == e) for e in range(3)])


def test_same_random_state_gives_identical_models_and_another_differs(wine):
    X_train, X_test, y_train, _ = wine
    a = MoEClassifier(random_state=3).fit(X_train, y_train).predict_proba(X_test)
    b = MoEClassifier(random_state=3).fit(X_train, y_train).predict_proba(X_test)
    c = MoEClassifier(random_state=4).fit(X_train, y_train).predict_proba(X_test)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_partial_fit_trains_one_epoch_per_call_and_checks_classes(wine):
    X_train, _, y_train, _ = wine
    X = StandardScaler().fit_transform(X_train)
    clf = MoEClassifier(random_state=0)
    with pytest.raises(ValueError, match="classes=None: pass every class label on the first call"):
        clf.partial_fit(X, y_train)
    for _ in range(5):
        clf.partial_fit(X, y_train, classes=[0, 1, 2])
    assert clf.n_iter_ == len(clf.loss_curve_) == 5 and clf.validation_loss_curve_ == []
    assert clf.loss_curve_[-1] < clf.loss_curve_[0]
    with pytest.raises(ValueError, match=r"y has labels \[7\] that are not in classes_"):
        clf.partial_fit(X[:2], [0, 7])
    with pytest.raises(ValueError, match="differ from the classes of the first partial_fit call"):
        clf.partial_fit(X, y_train, classes=[0, 1, 2, 3])
    # partial_fit continues the same trajectory as fit: 5 calls = fit with epochs=5 and no stopping
    fit = MoEClassifier(random_state=0, epochs=5, early_stopping=False, tol=0).fit(X, y_train)
    np.testing.assert_array_equal(clf.predict_proba(X), fit.predict_proba(X))


def test_early_stopping_keeps_the_weights_of_the_best_validation_epoch(wine):
    X_train, _, y_train, _ = wine
    X = StandardScaler().fit_transform(X_train)
    params = dict(random_state=0, learning_rate=0.05, tol=0.0, n_iter_no_change=5)
    clf = MoEClassifier(**params).fit(X, y_train)
    best = int(np.argmin(clf.validation_loss_curve_))  # tol=0: the first epoch of lowest validation loss
    assert best + 1 < clf.n_iter_ == best + 1 + 5, "the run must go past its best epoch for this test"
    # the same run stopped right after its best epoch has exactly the weights that were kept
    short = MoEClassifier(**params, epochs=best + 1).fit(X, y_train)
    np.testing.assert_array_equal(clf.predict_proba(X), short.predict_proba(X))


def test_training_loss_stops_when_early_stopping_is_off():
    X = np.linspace(-1, 1, 40)[:, None]
    reg = MoERegressor(early_stopping=False, tol=1.0, n_iter_no_change=3, random_state=0).fit(X, X[:, 0])
    assert reg.n_iter_ == 4 and reg.validation_loss_curve_ == []  # epoch 1 sets the best, 3 fail tol=1


def test_verbose_prints_epoch_loss_and_time(capsys):
    X = np.linspace(-1, 1, 40)[:, None]
    MoERegressor(epochs=3, verbose=True, random_state=0).fit(X, X[:, 0])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"epoch {i + 1}: loss ") and "validation loss" in line and line.endswith(" s)")
               for i, line in enumerate(lines))


def test_regressor_fits_several_outputs(rng):
    X = rng.standard_normal((300, 3))
    Y = np.stack([np.abs(X[:, 0]), X[:, 1] - X[:, 2]], axis=1)  # a kink and a plane
    reg = MoERegressor(random_state=0).fit(X, Y)
    assert reg.n_outputs_ == 2 and reg.predict(X).shape == (300, 2)
    assert reg.score(X, Y) > 0.95
    assert reg.fit(X, Y[:, 1]).predict(X).shape == (300,)


@pytest.mark.parametrize("param, value, message", [
    ("epochs", 0, "epochs=0 must be an integer >= 1"),
    ("batch_size", 2.5, "batch_size=2.5 must be an integer >= 1"),
    ("n_iter_no_change", True, "n_iter_no_change=True must be an integer >= 1"),
    ("validation_fraction", 1.0, r"validation_fraction=1.0 must be a finite number in \(0, 1\)"),
    ("tol", -1, "tol=-1 must be a finite number >= 0"),
    ("optimizer", "rmsprop", "optimizer='rmsprop' must be one of"),
    ("learning_rate", 0, "learning_rate=0 must be a finite number > 0"),
    ("learning_rate", "0.1", "learning_rate='0.1' must be a finite number > 0, not a str"),
    ("learning_rate", float("inf"), "learning_rate=inf must be a finite number > 0"),
    ("random_state", "seed", "random_state='seed' must be None, an int"),
    ("random_state", -1, "random_state=-1 must be None, an int >= 0"),  # before: named "seed"
    ("random_state", True, "random_state=True must be None, an int"),
    ("n_experts", 0, "n_experts=0 must be an integer >= 1"),
    ("hidden", -3, "hidden=-3 must be an integer >= 1"),
    ("top_k", 5, "top_k=5 must be between 1 and n_experts=4"),
    ("gate", "argmax", "gate='argmax' must be one of"),
    ("noise", "gaussian", "noise='gaussian' must be one of"),
    ("noise", "vmoe", "noise='vmoe'.* need a sparse gate: pass top_k=K"),
    ("balance", "entropy", "balance has unknown loss 'entropy'"),
    # before: a dict's weights were silently replaced by balance_weight, a repeated name counted once, 3 gave
    # "'int' object is not iterable"
    ("balance", {"importance": 1.0}, r"balance=\{'importance': 1.0\} must be None, a loss name or a list"),
    ("balance", ["load", "load"], "must be None, a loss name or a list of distinct loss names"),
    ("balance", 3, "balance=3 must be None, a loss name"),
    ("balance_weight", -0.1, "balance_weight=-0.1 must be a finite number >= 0"),
])
def test_bad_parameters_are_named_when_fitting(param, value, message):
    X, y = np.zeros((4, 2)), np.array([0, 1, 0, 1])
    sparse = {"top_k": 2} if param.startswith("balance") else {}
    clf = MoEClassifier(**{**sparse, param: value})  # __init__ only stores: no error yet
    with pytest.raises((ValueError, TypeError), match=message):
        clf.fit(X, y)


@pytest.mark.parametrize("make", [MoEClassifier, MoERegressor, LocalExpertsClassifier])
def test_a_validation_fraction_that_leaves_no_training_sample_is_named(make):
    # ceil(0.9 * 5) = 5 rows held out; before, train_test_split's "test_size=5 should be ... smaller than
    # the number of samples 5", which names no parameter of the estimator
    X, y = np.arange(10.0).reshape(5, 2), np.array([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match=r"validation_fraction=0.9 holds out all 5 samples.*early_stopping=False"):
        make(validation_fraction=0.9, random_state=0).fit(X, y)
    assert make(validation_fraction=0.9, early_stopping=False, epochs=2).fit(X, y).n_iter_ == 2


def v_shape(rng, n=400):
    """MATH.md §7: r = 2x (x < 0.5), 2 - 2x otherwise, plus N(0, 0.1²) noise; x ~ U(0, 1)."""
    x = rng.uniform(0, 1, (n, 1))
    return x, np.where(x[:, 0] < 0.5, 2 * x[:, 0], 2 - 2 * x[:, 0]) + 0.1 * rng.standard_normal(n)


@pytest.mark.parametrize("mode", ["competitive", "cooperative"])
@pytest.mark.parametrize("optimizer", ["sgd", "ftrl"])
def test_local_experts_fit_the_v_shape_that_one_line_cannot(mode, optimizer, rng):
    X, y = v_shape(rng)
    X, y = StandardScaler().fit_transform(X), (y - y.mean()) / y.std()  # the competitive rule needs y scaled
    reg = LocalExpertsRegressor(n_experts=2, mode=mode, optimizer=optimizer, random_state=0).fit(X, y)
    # one line explains nothing of a symmetric V (R² ~ 0); two linear experts explain all but the noise
    # (noise variance 0.01 against the V's variance 1/12 + 0.01: the best R² is about 0.89)
    assert reg.score(X, y) > 0.8
    assert reg.expert_usage_.min() > 0.3, "each expert should take one arm of the V"


def test_local_experts_classifier_in_a_pipeline_and_grid_search(wine):
    X_train, X_test, y_train, y_test = wine
    grid = GridSearchCV(make_pipeline(StandardScaler(), LocalExpertsClassifier(random_state=0)),
                        {"localexpertsclassifier__mode": ["competitive", "cooperative"]}, cv=3).fit(X_train, y_train)
    assert f1_score(y_test, grid.predict(X_test), average="macro") >= 0.95
    clf = grid.best_estimator_[-1]
    assert clf.model_.mode == grid.best_params_["localexpertsclassifier__mode"]
    assert clf.predict_proba(X_test[:3]).shape == (3, 3) and len(clf.loss_curve_) == clf.n_iter_


@pytest.mark.parametrize("param, value, message", [
    ("mode", "greedy", "mode='greedy' must be one of"),
    ("optimizer", "adam", r"optimizer='adam' must be one of \('sgd', 'ftrl'\)"),
    ("n_experts", 0, "n_experts=0 must be an integer >= 1"),
])
def test_local_experts_bad_parameters_are_named_when_fitting(param, value, message):
    with pytest.raises((ValueError, TypeError), match=message):
        LocalExpertsClassifier(**{param: value}).fit(np.zeros((4, 2)), [0, 1, 0, 1])


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "ftrl"])
def test_every_optimizer_trains_the_moe_on_wine(optimizer, wine):
    X_train, X_test, y_train, y_test = wine
    pipe = make_pipeline(StandardScaler(), MoEClassifier(optimizer=optimizer, random_state=0)).fit(X_train, y_train)
    assert f1_score(y_test, pipe.predict(X_test), average="macro") >= 0.95
