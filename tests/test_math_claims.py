"""Statements of docs/MATH.md that a test can hold (issue 19, item 8): each test names the section it checks.

Gradients are compared with central differences (float64, h = 1e-6) where a value is claimed to be zero or
not; "zero" means below 1e-12 in absolute value (the rounding of a softmax backward), "not zero" above 1e-3.
"""
from math import ceil

import numpy as np
import pytest

from numpy_moe import balance as B
from numpy_moe import functional as F
from numpy_moe.backend import default_rng
from numpy_moe.balance.names import from_names
from numpy_moe.gates.expert_choice import ExpertChoiceGate, expert_choice_capacity
from numpy_moe.gating import TopKGate, route_topk, routing_backward
from numpy_moe.gradcheck import numerical_gradient, rel_error
from numpy_moe.optim import FTRL
from numpy_moe.routing import capacity_mask

ZERO, NONZERO = 1e-12, 1e-3


# §4.3: the expert-choice capacity is min(N, ceil(N cf / E)), not a rounding
@pytest.mark.parametrize("N,E,cf,expected", [(10, 4, 1.0, 3),    # 2.5: rounding (half to even) would give 2
                                              (10, 3, 1.0, 4),    # 3.33: rounding would give 3
                                              (9, 4, 1.0, 3),     # 2.25
                                              (5, 2, 3.0, 5),     # ceil(7.5) = 8 > N: capped at N
                                              (8, 4, 1.0, 2)])    # exact
def test_expert_choice_capacity_is_the_ceiling_capped_at_n(N, E, cf, expected):
    assert expert_choice_capacity(N, E, cf) == expected == min(N, ceil(N * cf / E))


def test_expert_choice_gate_gives_every_expert_exactly_that_many_samples(rng):
    gate = ExpertChoiceGate(3, 4, capacity_factor=1.0, seed=0)
    r = gate.forward(rng.standard_normal((10, 3)))
    assert np.array_equal(np.bincount(r.expert, minlength=4), [3, 3, 3, 3])


# §3.6: the Switch loss's router gradient vanishes exactly when f is uniform
def balanced_argmax_logits(rng, N, E):
    """Logits whose row-wise argmax takes every expert equally often (N / E rows each), the rest random;
    expert 0 wins by a wider margin, so its mean probability P_0 is the largest."""
    h = rng.standard_normal((N, E))
    winner = np.arange(N) % E
    h[np.arange(N), winner] = h.max(axis=1) + 1.0 + 3.0 * (winner == 0) + rng.uniform(0, 1, N)
    return h


def switch_gradient(h, K=1):
    loss = B.SwitchLoss(0.7)
    r = route_topk(h, K, "softmax_then_topk")
    loss(r)
    dclean, _ = routing_backward(r, loss.backward())
    return loss, dclean


@pytest.mark.parametrize("K", [1, 2])
def test_switch_router_gradient_vanishes_when_f_is_uniform(K, rng):
    N, E = 12, 4
    h = balanced_argmax_logits(rng, N, E)
    loss, dh = switch_gradient(h, K)
    assert np.allclose(loss.f, 1 / E)
    P = F.softmax(h).mean(axis=0)
    assert np.ptp(P) > 0.05  # P is not uniform, yet the gradient is zero: dL/dp_{n,e} = w E f_e / N is
    # the same for every expert, and the softmax backward of a row-constant vector is 0
    assert np.abs(dh).max() < ZERO

    def f(_):
        r = route_topk(h, K, "softmax_then_topk")
        assert np.array_equal(np.argmax(h, axis=1), np.arange(N) % E)  # f unchanged under the perturbation
        return loss(r)

    assert np.abs(numerical_gradient(f, h)).max() < 1e-9  # and so is the true derivative


def test_switch_router_gradient_is_nonzero_when_f_is_not_uniform(rng):
    h = rng.standard_normal((12, 4))
    h[:6, 0] += 5  # expert 0 wins at least half the rows
    loss, dh = switch_gradient(h)
    assert np.abs(dh).max() > NONZERO

    def f(_):
        return loss(route_topk(h, 1, "softmax_then_topk"))

    assert rel_error(dh, numerical_gradient(f, h)) < 1e-7


@pytest.mark.parametrize("K", [1, 2, 3])
def test_switch_f_counts_the_argmax_only_for_any_k(K, rng):
    h = rng.standard_normal((20, 5))
    loss = B.SwitchLoss(1.0)
    loss(route_topk(h, K, "softmax_then_topk"))
    np.testing.assert_array_equal(loss.f, np.bincount(h.argmax(axis=1), minlength=5) / 20)


# §2.2: top-1 topk_then_softmax gets no task gradient; which auxiliary losses still reach its router
def top1_renormalised_gradients(loss, rng):
    """The gradient of ``loss`` (or of a task loss sum(R ⊙ weights) if None) w.r.t. a top-1
    topk_then_softmax gate's W, with Shazeer noise (fixed draw), and its finite-difference counterpart."""
    gate = TopKGate(5, 4, top_k=1, convention="topk_then_softmax", noise="shazeer", seed=0)
    for p in gate.params.values():
        p += 0.5 * rng.standard_normal(p.shape)
    x = rng.standard_normal((16, 5))
    R = rng.standard_normal(16)

    def forward():
        gate.rng = default_rng(5)
        return gate.forward(x)

    def value(r):
        return float((R * r.weight).sum()) if loss is None else loss(r)

    r0 = forward()
    value(r0)
    gate.backward({"weight": R} if loss is None else loss.backward())

    def f(_):
        r = forward()
        assert np.array_equal(r.expert, r0.expert), "routing changed under perturbation"
        return value(r)

    return gate.grads["W"], numerical_gradient(f, gate.params["W"])


@pytest.mark.parametrize("name,loss", [("task", None), ("importance gates", B.Importance(0.7, "gates"))])
def test_top1_renormalised_router_gets_no_gradient_from_the_task_or_importance_of_the_gates(name, loss, rng):
    analytic, numeric = top1_renormalised_gradients(loss, rng)
    assert np.abs(analytic).max() < ZERO and np.abs(numeric).max() < 1e-9, name


@pytest.mark.parametrize("loss", [B.SwitchLoss(0.7), B.ZLoss(0.7), B.Importance(0.7, "softmax"),
                                  B.ShazeerLoad(0.7)],
                         ids=lambda l: f"{type(l).__name__}-{getattr(l, 'source', '')}")
def test_top1_renormalised_router_is_trained_by_losses_that_read_logits(loss, rng):
    analytic, numeric = top1_renormalised_gradients(loss, rng)
    assert np.abs(analytic).max() > NONZERO
    assert rel_error(analytic, numeric) < 1e-7


# §3.3: which importance the short form balance={"importance": w} builds for each convention
@pytest.mark.parametrize("convention,source", [("topk_then_softmax", "gates"),
                                               ("softmax_then_topk", "softmax"), ("expert_choice", "softmax")])
def test_importance_source_of_each_convention(convention, source):
    (loss,) = from_names({"importance": 0.1}, convention, None)
    assert isinstance(loss, B.Importance) and loss.source == source


# §3.1 and §3.2: CV² uses the population variance; post 000's loss the sample standard deviation
def test_cv_squared_uses_the_population_variance_and_post000_the_sample_std():
    v = np.array([1.0, 2.0, 3.0])
    assert F.cv_squared(v) == pytest.approx((2 / 3) / 4, rel=1e-9)  # var with divisor E = 3 is 2/3, mean² 4
    counts = np.array([4, 3, 1])  # selection counts of a top-1 routing of 8 samples over 3 experts
    r = route_topk(np.eye(3)[np.repeat([0, 1, 2], counts)], 1, "softmax_then_topk")
    share = counts / counts.sum()
    assert B.Seed000Loss(1.0)(r) == pytest.approx(np.sqrt(((share - share.mean()) ** 2).sum() / 2), rel=1e-12)


# §4.2: the slot rule by sorting equals the cumulative-sum description
def cumsum_capacity_mask(expert, position, K, E, C):
    """MATH.md §4.2 literally: assignments in priority order (choice k, then position), one-hot (N K, E),
    cumulative sum down the columns; slot = that count at the assignment's own expert minus one."""
    N = position.shape[0]
    sample = np.repeat(np.arange(N), K)
    k = np.tile(np.arange(K), N)
    order = np.lexsort((position[sample], k))
    onehot = np.eye(E, dtype=int)[expert[order]]
    slot = np.cumsum(onehot, axis=0)[np.arange(N * K), expert[order]] - 1
    kept = np.empty(N * K, dtype=bool)
    kept[order] = slot < C
    return kept


@pytest.mark.parametrize("K,E,C", [(1, 4, 2), (2, 4, 3), (3, 5, 2), (2, 3, 7)])
def test_capacity_by_sorting_equals_the_cumsum_rule(K, E, C, rng):
    N = 17
    for _ in range(5):
        expert = np.argsort(rng.standard_normal((N, E)), axis=1)[:, :K].reshape(-1)
        position = rng.permutation(N)
        np.testing.assert_array_equal(capacity_mask(expert, position, K, E, C),
                                      cumsum_capacity_mask(expert, position, K, E, C))


# §6.3: FTRL's first point is the initial weight w0, with z = -(β/α) w0 and n = 0
def test_ftrl_starts_from_z_equal_to_minus_beta_over_alpha_w0():
    class Weights:
        def __init__(self, w):
            self.w = w

        def named_parameters(self):
            yield "w", self.w

        def named_grads(self):
            yield "w", np.zeros_like(self.w)

    w0 = np.array([1.0, -2.0, 0.5])
    model = Weights(w0.copy())
    opt = FTRL(alpha=2.0, beta=0.5)
    opt.step(model)  # a zero gradient: z and n stay at their initial values
    np.testing.assert_array_equal(opt.n["w"], 0)
    np.testing.assert_allclose(opt.z["w"], -(0.5 / 2.0) * w0, rtol=1e-15)
    np.testing.assert_allclose(model.w, w0, rtol=1e-15)  # the closed form gives w0 back
