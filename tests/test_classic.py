"""The classic mixture of local experts (numpy_moe/classic.py, MATH.md §5).

The update rules are closed forms, not backward passes, so the reference is the objective itself:
each rule must be η times the gradient of its objective (minus for the cooperative error, plus for the
competitive log-likelihood), checked by central differences at h = 1e-6 in float64 below 1e-7 (a
single layer, MATH.md §8: truncation O(h²) ~ 1e-12, rounding ~ 1e-16 / h ~ 1e-10). A wrong rule, such as
the seed's cooperative Δm, misses by tens of percent.
"""
import numpy as np
import pytest

from numpy_moe import classic
from numpy_moe.classic import LocalExperts, evaluate, fit_local_experts, train_epoch
from numpy_moe.datasets import make_bands, make_circles, make_v_regression, standardizer
from numpy_moe.gradcheck import numerical_gradient, rel_error
from numpy_moe.optim import FTRL, SGD, Adam

TOL = 1e-7
CASES = [(mode, task) for mode in ("cooperative", "competitive") for task in ("classification", "regression")]


def problem(mode, task, seed=0, N=6, D=3, E=4):
    """A model with random weights (scaled up from the small init so every term matters) and a batch."""
    rng = np.random.default_rng(seed)
    O = 3 if task == "classification" else 2
    model = LocalExperts(D, O, E, mode=mode, task=task, seed=seed)
    model.params["V"][...] = rng.standard_normal(model.params["V"].shape)
    model.params["M"][...] = rng.standard_normal(model.params["M"].shape)
    x = rng.standard_normal((N, D))
    r = rng.integers(0, O, N) if task == "classification" else rng.standard_normal((N, O))
    return model, x, r


@pytest.mark.parametrize("mode,task", CASES)
def test_update_directions_are_eta_times_the_objective_gradient(mode, task):
    model, x, r = problem(mode, task)
    lr = 0.3
    sign = -1 if mode == "cooperative" else 1  # cooperative descends its error, competitive ascends log L
    directions = model.update_directions(x, r, lr=lr)
    for key, p in model.params.items():
        numeric = numerical_gradient(lambda _: model.objective(x, r), p)
        assert rel_error(directions[key], sign * lr * numeric) < TOL, key


@pytest.mark.parametrize("mode,task", CASES)
def test_grads_are_minus_the_direction_and_the_gradient_of_the_loss(mode, task):
    model, x, r = problem(mode, task, seed=1)
    model.compute_grads(x, r)
    directions = model.update_directions(x, r)
    for key, p in model.params.items():
        assert np.array_equal(model.grads[key], -directions[key])
        assert rel_error(model.grads[key], numerical_gradient(lambda _: model.loss(x, r), p)) < TOL


def test_sgd_with_lr_eta_applies_exactly_the_rule():
    model, x, r = problem("competitive", "classification", seed=2)
    before = {k: p.copy() for k, p in model.params.items()}
    delta = model.update_directions(x, r, lr=0.05)
    model.compute_grads(x, r)
    SGD(lr=0.05).step(model)
    for key in before:
        np.testing.assert_allclose(model.params[key], before[key] + delta[key], rtol=0, atol=1e-15)


def test_seed_cooperative_gate_rule_is_not_the_gradient():
    model, x, r = problem("cooperative", "classification", seed=3)
    seed_rule = model.seed_cooperative_update(x, r)
    numeric = -numerical_gradient(lambda _: model.objective(x, r), model.params["M"])
    assert rel_error(seed_rule["M"], numeric) > 0.1  # MATH.md §5 erratum 2: about 50% off
    assert rel_error(model.update_directions(x, r)["M"], numeric) < TOL
    np.testing.assert_array_equal(seed_rule["V"], model.update_directions(x, r)["V"])  # Δv is right


def test_seed_cooperative_rule_coincides_for_regression():
    # o = y without a softmax, so the seed's (w - o) is the gradient's (w - y)
    model, x, r = problem("cooperative", "regression", seed=4)
    np.testing.assert_allclose(model.seed_cooperative_update(x, r)["M"], model.update_directions(x, r)["M"],
                               rtol=1e-12, atol=1e-15)


def test_seed_rule_needs_the_cooperative_mode():
    model, x, r = problem("competitive", "classification")
    with pytest.raises(ValueError, match="mode='cooperative'"):
        model.seed_cooperative_update(x, r)


def softmax(a, axis=-1):
    e = np.exp(a - a.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def by_hand(model, x):
    """Gate and expert outputs with a Python loop over experts, straight from MATH.md §5."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    g = softmax(x1 @ model.params["M"])
    w = np.stack([x1 @ model.params["V"][e] for e in range(model.n_experts)], axis=1)  # (N, E, O)
    return g, w


@pytest.mark.parametrize("mode,task", CASES)
def test_gate_experts_and_prediction_match_the_formulas(mode, task):
    model, x, r = problem(mode, task, seed=5)
    g, w = by_hand(model, x)
    np.testing.assert_allclose(model.gate(x), g, rtol=1e-12)
    np.testing.assert_allclose(model.expert_outputs(x), w, rtol=1e-12)
    blend = sum(g[:, [e]] * w[:, e] for e in range(model.n_experts))
    if task == "regression":
        expected = blend  # the mixture mean and the blend are the same number
    elif mode == "cooperative":
        expected = softmax(blend)
    else:
        expected = sum(g[:, [e]] * softmax(w[:, e]) for e in range(model.n_experts))
    np.testing.assert_allclose(model.forward(x), expected, rtol=1e-12)
    if task == "classification":
        np.testing.assert_array_equal(model.predict(x), expected.argmax(axis=1))


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_posterior_and_objective_match_the_formulas(task):
    model, x, r = problem("competitive", task, seed=6)
    g, w = by_hand(model, x)
    if task == "classification":
        p = softmax(w, axis=2)[np.arange(len(r)), :, r]  # (N, E): each expert's probability of the label
    else:
        p = np.exp(-0.5 * ((r[:, None, :] - w) ** 2).sum(axis=2))
    np.testing.assert_allclose(model.posterior(x, r), g * p / (g * p).sum(axis=1, keepdims=True), rtol=1e-10)
    assert model.objective(x, r) == pytest.approx(np.log((g * p).sum(axis=1)).mean(), rel=1e-12)
    assert model.loss(x, r) == -model.objective(x, r)


def test_classification_handles_many_classes():
    model = LocalExperts(3, 5, 2, mode="cooperative", seed=0)
    x, r = np.random.default_rng(7).standard_normal((6, 3)), np.arange(6) % 5
    assert model.forward(x).shape == (6, 5)
    np.testing.assert_allclose(model.forward(x).sum(axis=1), 1, rtol=1e-12)
    assert model.update_directions(x, r)["V"].shape == (2, 4, 5)


def test_evaluate_is_the_log_loss_in_bits_and_the_mse():
    model, x, r = problem("competitive", "classification", seed=8)
    o = model.forward(x)
    assert evaluate(model, x, r) == pytest.approx(-np.log2(o[np.arange(len(r)), r]).mean(), rel=1e-12)
    model, x, r = problem("cooperative", "regression", seed=8)
    assert evaluate(model, x, r) == pytest.approx(((model.forward(x) - r) ** 2).mean(), rel=1e-12)


DATASETS = {
    "bands": (make_bands, "classification"),
    "circles": (make_circles, "classification"),
    "v": (make_v_regression, "regression"),
}
OPTIMISERS = {"sgd": lambda: SGD(lr=0.1, decay=0.99), "ftrl": lambda: FTRL(alpha=1.0, beta=0.2)}


@pytest.mark.parametrize("mode", ["cooperative", "competitive"])
@pytest.mark.parametrize("opt", sorted(OPTIMISERS))
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_training_reduces_the_loss(name, opt, mode):
    make, task = DATASETS[name]
    X, X_test, y, y_test = make(300, seed=0)
    scale = standardizer(X)
    model = LocalExperts(X.shape[1], 2 if task == "classification" else 1, 2, mode=mode, task=task, seed=0)
    before = model.loss(scale(X), y)
    history = fit_local_experts(model, scale(X), y, optimizer=OPTIMISERS[opt](), epochs=5, batch_size=4,
                                seed=0, X_test=scale(X_test), y_test=y_test)
    assert model.loss(scale(X), y) < before - 0.05
    assert len(history["train"]) == len(history["test"]) == 6
    assert history["test"][-1] < history["test"][0]


def test_training_is_deterministic_given_the_seeds():
    X, _, y, _ = make_circles(90, seed=1)
    runs = []
    for _ in range(2):
        model = LocalExperts(2, 2, 3, seed=4)
        runs.append(fit_local_experts(model, X - 5, y, SGD(0.1), epochs=2, seed=9)["train"])
    assert runs[0] == runs[1]


def test_train_epoch_takes_one_step_per_batch():
    class Counting(SGD):
        def step(self, model):
            self.steps = getattr(self, "steps", 0) + 1
            super().step(model)
    X, _, y, _ = make_bands(100, seed=0)  # 70 training rows
    opt = Counting(0.01)
    train_epoch(LocalExperts(2, 2, 2, seed=0), X, y, opt, batch_size=8, seed=0)
    assert opt.steps == 9  # ceil(70 / 8)


def test_float32_model_keeps_its_dtype():
    model = LocalExperts(2, 2, 3, seed=0, dtype="float32")
    X, _, y, _ = make_bands(60, seed=0)
    fit_local_experts(model, X - 5, y, SGD(0.1), epochs=1, seed=0)
    assert model.forward(X).dtype == np.float32 and model.params["V"].dtype == np.float32


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "greedy"}, "mode='greedy'"),
    ({"task": "ranking"}, "task='ranking'"),
    ({"n_outputs": 1}, "n_outputs=1"),
    ({"n_experts": 0}, "n_experts=0"),
])
def test_constructor_rejects_bad_arguments(kwargs, match):
    args = {"n_features": 2, "n_outputs": 2, "n_experts": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        LocalExperts(**args)


def test_bad_inputs_and_targets_are_named():
    clf = LocalExperts(2, 3, 2, seed=0)
    reg = LocalExperts(2, 2, 2, task="regression", seed=0)
    x = np.zeros((4, 2))
    with pytest.raises(ValueError, match="x has 3 features"):
        clf.forward(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"r has labels in \[0, 3\]"):
        clf.update_directions(x, np.array([0, 1, 2, 3]))
    with pytest.raises(TypeError, match="r has dtype float64"):
        clf.objective(x, np.zeros(4))
    with pytest.raises(ValueError, match="r has ndim=1"):
        reg.update_directions(x, np.zeros(4))
    with pytest.raises(ValueError, match="r has 3 rows; expected 4"):
        reg.objective(x, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="batch_size=0"):
        train_epoch(clf, x, np.zeros(4, dtype=int), SGD(0.1), batch_size=0)


def test_an_empty_training_set_is_refused_by_name():
    # every rule and loss is a mean over the batch: before, no sample gave NaN directions and a fit that
    # reported "training diverged ... lower the learning rate"
    model = LocalExperts(2, 3, 2, seed=0)
    x, r = np.zeros((0, 2)), np.zeros(0, dtype=int)
    for call in (lambda: model.update_directions(x, r), lambda: model.objective(x, r), lambda: evaluate(model, x, r),
                 lambda: train_epoch(model, x, r, SGD(0.1)), lambda: fit_local_experts(model, x, r, epochs=1)):
        with pytest.raises(ValueError, match=r"has 0 rows \(shape \(0, 2\)\); expected at least 1"):
            call()
    assert model.forward(x).shape == (0, 3)  # a prediction for no sample is still no prediction


# ----- the batch-size-1 pass (classic._online_pass) against the checked loop ------------------------------
# train_epoch runs one-sample steps without per-step checks for a LocalExperts with exactly SGD, Adam or
# FTRL; a subclass of the optimiser (same rule) takes the checked loop. The two must agree bit for bit:
# weights, grads, history and every piece of optimiser state, in every mode, task and optimiser.
ONLINE_OPTIMISERS = {
    "sgd": (SGD, {"lr": 0.1, "decay": 0.99}),
    "sgd_momentum": (SGD, {"lr": 0.05, "momentum": 0.9}),
    "adam": (Adam, {"lr": 0.01}),
    "ftrl": (FTRL, {"alpha": 1.0, "beta": 0.2}),
    "ftrl_l1_l2": (FTRL, {"alpha": 0.5, "beta": 0.1, "l1": 0.01, "l2": 0.1}),
}


def checked(cls):
    """The same optimiser under another class, which train_epoch sends through its checked loop."""
    return type(f"Checked{cls.__name__}", (cls,), {})


@pytest.fixture
def online_calls(monkeypatch):
    """Counts the calls of the fast pass, so that a test knows which path ran."""
    calls = []
    original = classic._online_pass

    def spy(*args):
        calls.append(1)
        return original(*args)
    monkeypatch.setattr(classic, "_online_pass", spy)
    return calls


def bits(a):
    return np.asarray(a).dtype.str, np.asarray(a).shape, np.asarray(a).tobytes()


def optimiser_state(opt):
    """Every attribute of the optimiser, arrays as their bytes (NaN payloads and signed zeros count)."""
    return {key: ({k: bits(a) for k, a in value.items()} if isinstance(value, dict) else value)
            for key, value in vars(opt).items()}


def online_problem(mode, task, dtype="float64", N=60):
    make = make_circles if task == "classification" else make_v_regression
    X, _, y, _ = make(N, seed=3)
    X = standardizer(X)(X)
    if task == "regression":
        y = (y - y.mean()) / y.std()
    return LocalExperts(X.shape[1], 2 if task == "classification" else 1, 3, mode=mode, task=task, seed=1,
                        dtype=dtype), X, y


@pytest.mark.parametrize("opt", sorted(ONLINE_OPTIMISERS))
@pytest.mark.parametrize("mode,task", CASES)
def test_batch_size_1_pass_equals_the_checked_loop_bit_for_bit(mode, task, opt, online_calls):
    cls, kwargs = ONLINE_OPTIMISERS[opt]
    runs = []
    for make in (cls, checked(cls)):
        model, X, y = online_problem(mode, task)
        optimizer = make(**kwargs)
        before = len(online_calls)
        history = fit_local_experts(model, X, y, optimizer, epochs=3, batch_size=1, seed=2, X_test=X[:10],
                                    y_test=y[:10])
        runs.append((history, {k: bits(p) for k, p in model.params.items()},
                     {k: bits(g) for k, g in model.grads.items()}, optimiser_state(optimizer),
                     len(online_calls) - before))
    (*fast, fast_calls), (*slow, slow_calls) = runs
    assert (fast_calls, slow_calls) == (3, 0)  # one fast pass per epoch; the subclass never takes it
    assert fast == slow


def test_batch_size_1_pass_keeps_float32_bit_for_bit(online_calls):
    params = []
    for make in (FTRL, checked(FTRL)):
        model, X, y = online_problem("competitive", "classification", dtype="float32")
        fit_local_experts(model, X, y, make(alpha=1.0, beta=0.2), epochs=2, batch_size=1, seed=0)
        assert model.params["V"].dtype == np.float32
        params.append({k: bits(p) for k, p in model.params.items()})
    assert len(online_calls) == 2 and params[0] == params[1]


@pytest.mark.parametrize("opt,mode,task,errors", [
    ("sgd", "cooperative", "regression", "ignore"),  # rule 1 (non-finite gradients) at epoch 1, batch 3
    ("adam", "competitive", "regression", "ignore"),  # rule 1 at epoch 1, batch 3
    ("sgd_momentum", "competitive", "classification", "ignore"),  # rule 1 at epoch 2, batch 29
    ("ftrl", "competitive", "classification", "ignore"),  # rule 2 (a weight made NaN) at epoch 2, batch 29
    ("ftrl", "cooperative", "regression", "raise"),  # numpy.seterr(all="raise"): NumPy's underflow error
])
def test_batch_size_1_pass_diverges_where_the_checked_loop_does(opt, mode, task, errors, online_calls):
    # One row of size 1e200 in the middle of the data: the pass ends non-finite, is put back and rerun by
    # the checked loop, which must raise the same error at the same batch and leave the same state.
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    X[17] *= 1e200
    y = np.arange(40) % 3 if task == "classification" else X[:, 0] * 1e-200 - 0.5 * X[:, 1]
    cls, kwargs = ONLINE_OPTIMISERS[opt]
    outcomes = []
    for make in (cls, checked(cls)):
        model = LocalExperts(3, 3 if task == "classification" else 1, 2, mode=mode, task=task, seed=0)
        optimizer = make(**kwargs)
        with np.errstate(all=errors), pytest.raises(FloatingPointError) as err:
            for epoch in (1, 2):
                train_epoch(model, X, y, optimizer, batch_size=1, seed=epoch, epoch=epoch)
        outcomes.append((str(err.value), {k: bits(p) for k, p in model.params.items()},
                         {k: bits(g) for k, g in model.grads.items()}, optimiser_state(optimizer)))
    assert online_calls  # the fast pass ran (and handed over to the checked loop)
    assert "diverged" in outcomes[0][0] or errors == "raise"
    assert outcomes[0] == outcomes[1]


def test_batch_size_1_fit_puts_back_the_last_good_epoch():
    X, y = np.random.default_rng(0).standard_normal((30, 3)), np.zeros(30)
    X[11] *= 1e200
    model = LocalExperts(3, 1, 2, mode="competitive", task="regression", seed=0)
    start = {k: p.copy() for k, p in model.params.items()}
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=r"epoch 1, batch \d+: .*at the start"):
        fit_local_experts(model, X, y, SGD(0.1), epochs=2, batch_size=1, seed=0)
    assert all(np.array_equal(p, start[k]) for k, p in model.params.items())


@pytest.mark.parametrize("kwargs,error,pattern", [
    # before: "vars() argument must have __dict__ attribute" from the divergence snapshot
    (dict(optimizer="sgd"), TypeError, "optimizer='sgd' must be an optimiser of numpy_moe.optim"),
    # before: "'int' object is not callable" after the first epoch had already trained the model
    (dict(callback=3), TypeError, "callback=3 must be None or a function"),
    # before: y_test without X_test was silently ignored; X_test without y_test said "r has shape ()"
    (dict(y_test=np.zeros(4, dtype=int)), ValueError, "X_test is None and y_test is given; pass both"),
    (dict(X_test=np.zeros((4, 2))), ValueError, "X_test is given and y_test is None; pass both"),
])
def test_fit_refuses_bad_arguments_before_training(kwargs, error, pattern):
    X, y = make_bands(40, seed=0)[:2]
    model = LocalExperts(2, 2, 2, seed=0)
    before = {k: p.copy() for k, p in model.params.items()}
    with pytest.raises(error, match=pattern):
        fit_local_experts(model, X, y, epochs=2, **kwargs)
    for key, p in model.params.items():
        np.testing.assert_array_equal(p, before[key], err_msg=key)


@pytest.mark.parametrize("lr,error,pattern", [
    (float("nan"), ValueError, "lr=nan must be a finite number > 0"),  # before: NaN directions, no word
    (float("inf"), ValueError, "lr=inf must be a finite number > 0"),
    (-0.1, ValueError, r"lr=-0.1 must be a finite number > 0"),
    ("0.1", TypeError, "lr='0.1' must be a finite number > 0"),  # before: numpy's UFuncTypeError
])
def test_update_rules_refuse_a_bad_learning_rate(lr, error, pattern):
    model, x, r = problem("cooperative", "classification")
    for rule in (model.update_directions, model.seed_cooperative_update):
        with pytest.raises(error, match=pattern):
            rule(x, r, lr=lr)
