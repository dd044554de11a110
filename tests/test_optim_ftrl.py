"""FTRL-Proximal (numpy_moe/optim.py, MATH.md §6) against McMahan et al. 2013, Algorithm 1.

The reference numbers are worked out by hand in the comments (exact fractions), the reductions the
paper states are checked against independent loops, and the L1 sparsity is checked for exact zeros.
"""
import numpy as np
import pytest

from numpy_moe import functional as F
from numpy_moe.layers import MLP, Linear, Module
from numpy_moe.optim import FTRL, SGD


class Weights(Module):
    """A bare parameter vector whose gradient the test sets: online linear losses f_t(w) = g_t · w."""

    def __init__(self, w):
        super().__init__()
        self.params["w"] = np.array(w, dtype=float)
        self.zero_grad()


def run(opt, model, gradients):
    """Feed the gradient sequence to ``opt``; return the weights after every step."""
    out = []
    for g in gradients:
        model.grads["w"] = np.array(g, dtype=float)
        opt.step(model)
        out.append(model.params["w"].copy())
    return out


def test_algorithm_1_by_hand():
    # alpha = 2, beta = 1, lambda1 = 0.5, lambda2 = 1; two coordinates a, b; w = z = n = 0 at the start.
    # w = 0 if |z| <= 0.5, else w = -(z - sign(z) 0.5) / ((1 + sqrt(n)) / 2 + 1).
    # step 1, g = (3, -0.4), at w = (0, 0):
    #   a: sigma = (sqrt(9) - 0) / 2 = 1.5, z = 0 + 3 - 1.5*0 = 3, n = 9 -> w = -(3 - 0.5) / (4/2 + 1) = -5/6
    #   b: sigma = (0.4 - 0) / 2 = 0.2, z = -0.4, n = 0.16 -> |z| <= 0.5, w = 0 exactly
    # step 2, g = (4, -0.3), at w = (-5/6, 0):
    #   a: sigma = (5 - 3) / 2 = 1, z = 3 + 4 - 1*(-5/6) = 47/6, n = 25
    #      -> w = -(47/6 - 1/2) / (6/2 + 1) = -11/6
    #   b: sigma = (0.5 - 0.4) / 2 = 0.05, z = -0.4 - 0.3 - 0 = -0.7, n = 0.25
    #      -> w = -(-0.7 + 0.5) / (1.5/2 + 1) = 0.2 / 1.75 = 4/35
    # step 3, g = (-12, 1.2), at w = (-11/6, 4/35):
    #   a: sigma = (13 - 5) / 2 = 4, z = 47/6 - 12 - 4*(-11/6) = 19/6, n = 169
    #      -> w = -(19/6 - 1/2) / (14/2 + 1) = -1/3
    #   b: sigma = (1.3 - 0.5) / 2 = 0.4, z = -0.7 + 1.2 - 0.4*4/35 = 159/350 <= 0.5 -> w = 0 exactly again
    opt = FTRL(alpha=2, beta=1, l1=0.5, l2=1)
    model = Weights([0.0, 0.0])
    steps = run(opt, model, [(3, -0.4), (4, -0.3), (-12, 1.2)])
    np.testing.assert_allclose(steps[0], [-5 / 6, 0], rtol=1e-14, atol=0)
    np.testing.assert_allclose(steps[1], [-11 / 6, 4 / 35], rtol=1e-14, atol=0)
    np.testing.assert_allclose(steps[2], [-1 / 3, 0], rtol=1e-14, atol=0)
    assert steps[0][1] == 0.0 and steps[2][1] == 0.0  # exact zeros, not small numbers
    np.testing.assert_allclose(opt.z["w"], [19 / 6, 159 / 350], rtol=1e-14)
    np.testing.assert_allclose(opt.n["w"], [169, 1.69], rtol=1e-14)


def test_initial_weights_centre_the_first_proximal_term():
    # Same alpha, beta, lambdas; w0 = (1, -2, 0). FTRL plays w0 first and starts from n = 0,
    # z0 = -(beta/alpha) w0 = -0.5 (1, -2, 0) = (-0.5, 1, 0). One step with g = (3, 0, 0):
    #   c1: sigma = (3 - 0) / 2 = 1.5, z = -0.5 + 3 - 1.5*1 = 1, n = 9 -> w = -(1 - 0.5) / (4/2 + 1) = -1/6
    #   c2: g = 0, z = 1, n = 0 -> w = -(1 - 0.5) / (1/2 + 1) = -1/3: the regularisers pull towards 0
    #   c3: z = 0 -> w = 0
    opt = FTRL(alpha=2, beta=1, l1=0.5, l2=1)
    (w,) = run(opt, Weights([1.0, -2.0, 0.0]), [(3, 0, 0)])
    np.testing.assert_allclose(w, [-1 / 6, -1 / 3, 0], rtol=1e-14, atol=0)
    # without regularisation a zero gradient leaves any starting point exactly where it is
    w0 = np.random.default_rng(0).standard_normal(4)
    (w,) = run(FTRL(alpha=2, beta=1), Weights(w0), [np.zeros(4)])
    np.testing.assert_allclose(w, w0, rtol=1e-15)


def test_without_regularisation_it_is_online_gradient_descent_with_per_coordinate_rates():
    # McMahan et al. 2013, sec. 3.1: with lambda1 = 0 FTRL-Proximal produces the OGD sequence
    # w <- w - eta g with eta_i = alpha / (beta + sqrt(n_i)), n_i the sum of g_i^2 including this step.
    rng = np.random.default_rng(0)
    w0, gradients = rng.standard_normal(5), rng.standard_normal((20, 5))
    alpha, beta = 0.7, 0.3
    steps = run(FTRL(alpha, beta), Weights(w0), gradients)
    w, n = w0.copy(), np.zeros(5)
    for g, got in zip(gradients, steps):
        n += g * g
        w -= alpha / (beta + np.sqrt(n)) * g
        np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)


def test_with_constant_rates_it_is_plain_sgd():
    # beta >> sqrt(n) makes every coordinate's rate alpha / (beta + sqrt(n)) the constant alpha / beta:
    # FTRL is then SGD with lr = alpha / beta, up to sqrt(n) / beta ~ 1e-7 here.
    rng = np.random.default_rng(1)
    w0, gradients = rng.standard_normal(4), rng.standard_normal((20, 4))
    beta, lr = 1e8, 0.05
    ftrl = run(FTRL(alpha=lr * beta, beta=beta), Weights(w0), gradients)
    sgd = run(SGD(lr), Weights(w0), gradients)
    assert max(np.abs(a - b).max() for a, b in zip(ftrl, sgd)) < 1e-6 * np.abs(sgd).max()


@pytest.mark.parametrize("kwargs", [
    {}, {"alpha": 0.5, "beta": 0.1, "l1": 0.3, "l2": 0.2}, {"alpha": 2.0, "beta": 0.0, "l2": 0.5}, {"l1": 1e-3},
])
def test_update_is_the_formulas_bit_for_bit(kwargs):
    # The update works in place and skips x / 1, x + 0 and z - sign(z) * 0 (exact no-ops when alpha = 1,
    # l2 = 0, l1 = 0): every bit must still be that of the docstring's formulas written out literally,
    # signed zeros included, over gradients of mixed scales with exact zeros in them.
    rng = np.random.default_rng(0)
    opt = FTRL(**kwargs)
    a, b, l1, l2 = opt.alpha, opt.beta, opt.l1, opt.l2
    w = rng.standard_normal(40)
    w[:3], w[3] = 0.0, -0.0
    model = Weights(w)
    z, n, p = -(b / a) * w, np.zeros(40), w.copy()
    with np.errstate(all="ignore"):  # beta = 0 makes 0 / 0 at the start, in both
        for _ in range(100):
            g = rng.standard_normal(40) * rng.choice([1e-3, 1.0, 1e3])
            g[5], g[6] = 0.0, -0.0
            model.grads["w"] = g
            opt.step(model)
            sigma = (np.sqrt(n + g * g) - np.sqrt(n)) / a
            z = z + (g - sigma * p)
            n = n + g * g
            p = np.where(np.abs(z) <= l1, 0, -(z - np.sign(z) * l1) / ((b + np.sqrt(n)) / a + l2))
            for got, want in ((model.params["w"], p), (opt.z["w"], z), (opt.n["w"], n)):
                assert got.tobytes() == want.tobytes()


def sparse_regression(l1, seed=0):
    """y = 3 x0 - 2 x1 (noiseless) with 8 irrelevant features; a Linear layer trained by FTRL."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((400, 10))
    y = 3 * X[:, :1] - 2 * X[:, 1:2]
    model, opt = Linear(10, 1, seed=seed), FTRL(alpha=0.5, beta=1.0, l1=l1)
    for epoch in range(5):
        for batch in np.split(rng.permutation(400), 20):
            pred = model.forward(X[batch])
            model.backward(F.mse_backward(pred, y[batch]))
            opt.step(model)
    return model.params["W"][:, 0]


def test_l1_gives_exact_zeros():
    W = sparse_regression(l1=1.0)
    assert np.count_nonzero(W[2:] == 0.0) >= 4, W  # most irrelevant weights exactly zero (6 of 8 here)
    np.testing.assert_allclose(W[:2], [3, -2], atol=0.01)  # the two real ones kept
    assert np.count_nonzero(sparse_regression(l1=0.0)) == 10  # no exact zeros without L1


def test_state_is_keyed_by_dotted_names_for_any_module():
    mlp = MLP(3, 4, 2, seed=0)
    x = np.random.default_rng(0).standard_normal((5, 3))
    mlp.backward(mlp.forward(x))
    before = {k: p.copy() for k, p in mlp.named_parameters()}
    opt = FTRL()
    opt.step(mlp)
    names = ["layers.0.W", "layers.0.b", "layers.2.W", "layers.2.b"]
    assert sorted(opt.z) == sorted(opt.n) == sorted(before) == names
    assert all(not np.array_equal(p, before[k]) for k, p in mlp.named_parameters())


@pytest.mark.parametrize("kwargs,match", [
    ({"alpha": 0}, "alpha=0"), ({"beta": -1}, "beta=-1"), ({"l1": -0.1}, "l1=-0.1"), ({"l2": -2}, "l2=-2"),
])
def test_bad_hyperparameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FTRL(**kwargs)


def test_a_schedule_that_sets_lr_sets_alpha():
    # the other optimisers' learning rate is ``lr`` and schedules set it (experiments/lm_moe.py does for Adam);
    # FTRL's is alpha. Before, FTRL kept a copy of alpha, so setting lr changed nothing. Hand-worked with
    # beta = 1, no lambdas, from w = 0: step 1 at alpha = 2, g = 3: sigma = 3 / 2, z = 3, n = 9,
    # w = -3 / ((1 + 3) / 2) = -1.5. Then lr = 1 and g = 4: sigma = (5 - 3) / 1 = 2, z = 3 + 4 - 2 * (-1.5) = 10,
    # n = 25, w = -10 / (1 + 5) = -5/3 (with alpha still 2 it would be -10 / 3 = -3.33).
    opt = FTRL(alpha=2, beta=1)
    model = Weights([0.0])
    run(opt, model, [(3.0,)])
    np.testing.assert_allclose(model.params["w"], [-1.5], rtol=1e-15)
    opt.lr = 1.0
    assert opt.alpha == 1.0
    run(opt, model, [(4.0,)])
    np.testing.assert_allclose(model.params["w"], [-5 / 3], rtol=1e-15)
    opt.alpha = 0.5
    assert opt.lr == 0.5
    with pytest.raises(ValueError, match="alpha"):
        opt.alpha = -1.0
