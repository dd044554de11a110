"""Valid but extreme inputs and configurations: the library gives the definition's answer there (or says why
it cannot), checked against independent brute-force or float64 references written here."""
from math import ceil

import numpy as np
import pytest

from numpy_moe.gates import ExpertChoiceGate
from numpy_moe.gates.expert_choice import capacity_ceil, expert_choice_capacity
from numpy_moe.moe import MoE
from numpy_moe.routing import Capacity, expert_capacity


# ----- capacity: C = ceil(N K cf / E) >= 1 for any factor cf > 0 (MATH.md §4.1, §4.4) ----------------------

@pytest.mark.parametrize("cf", [1e-300, 1e-12, 1.9e-11])
def test_a_tiny_capacity_factor_gives_one_slot_not_zero(cf):
    """ceil of a positive number is at least 1 (DeepSpeed ``_capacity``, fairseq ``math.ceil``): the tolerance
    that reads 55.00000000000001 as 55 is relative to the product (MATH.md §4.4), so it must not read 1e-10 as 0.
    The old absolute tolerance gave C = 0 there: every assignment dropped, an output of zeros."""
    N, K, E = 100, 2, 4
    x = N * K * cf / E
    assert ceil(x) == 1
    assert capacity_ceil(x) == 1
    assert expert_capacity(N, K, E, cf) == 1 and Capacity(cf).slots(N, K, E) == 1
    assert expert_choice_capacity(N, E, cf) == 1
    moe = MoE(3, 2, E, hidden=4, top_k=K, capacity_factor=cf, seed=0)
    y = moe.forward(np.random.default_rng(0).standard_normal((N, 3)))
    per_expert = moe.diagnostics["samples_per_expert"]
    assert per_expert.max() == 1 and per_expert.sum() == np.count_nonzero(np.abs(y).sum(axis=1))
    gate = ExpertChoiceGate(3, E, capacity_factor=cf, seed=0)
    assert gate.forward(np.ones((N, 3))).sample.shape == (E,)  # one sample per expert


def test_capacity_ceil_reads_products_as_their_decimal_factor():
    """The rule the relative tolerance exists for still holds, and exact products are unchanged."""
    assert 100 * 2 * 1.1 / 4 != 55 and capacity_ceil(100 * 2 * 1.1 / 4) == 55
    assert capacity_ceil(0.0) == 0 and capacity_ceil(1.0) == 1 and capacity_ceil(1.5) == 2
    assert capacity_ceil(0.9999999999999999) == 1 and capacity_ceil(2.0000001) == 3


# ----- Sinkhorn with far-apart logits (MATH.md §10.11) ---------------------------------------------------------

def log_sinkhorn(h, iters=2000):
    """The reference: Sinkhorn's plan of exp(h) in the log domain, float64, without Megatron's eps (nothing
    underflows): log P = h + a_n + b_e with rows summing to 1/N and columns to 1/E."""
    from scipy.special import logsumexp
    N, E = h.shape
    h = np.asarray(h, dtype=np.float64)
    a, b = np.zeros(N), np.zeros(E)
    for _ in range(iters):
        a = -np.log(N) - logsumexp(h + b, axis=1)
        b = -np.log(E) - logsumexp(h + a[:, None], axis=0)
    return h + a[:, None] + b


def test_sinkhorn_balances_an_expert_whose_exp_underflows_everywhere():
    """Every sample ranks expert 2 about 800 below the others, so exp underflows to 0 in its whole column in
    float64: Sinkhorn's plan (a row and column scaling of exp(h)) still gives it 1/E of the mass, as the
    log-domain reference does. The old plan left the column at 0 (no sample routed there) and reported
    convergence."""
    from numpy_moe.gates.sinkhorn_gate import sinkhorn
    h = np.random.default_rng(0).standard_normal((9, 3)) + np.array([0.0, 0.0, -800.0])
    res = sinkhorn(h)
    assert res.converged
    np.testing.assert_allclose(res.plan.sum(axis=0), 1 / 3, rtol=1e-6)  # the columns: 1/E up to eps
    np.testing.assert_allclose(res.plan.sum(axis=1), 1 / 9, rtol=1e-3)  # the rows: 1/N up to E tol / min d1
    ref = log_sinkhorn(h)
    np.testing.assert_array_equal(res.plan.argmax(axis=1), ref.argmax(axis=1))
    assert np.bincount(res.plan.argmax(axis=1), minlength=3)[2] > 0  # the old plan sent none there


def test_sinkhorn_gate_routes_a_sample_whose_exp_underflows_by_its_own_logits():
    """float32: one sample's logits all lie ~200 below the others' (exp underflows to 0 on its whole row). It
    must go where the log-domain reference plan sends it, not to expert 0 by the tie rule of an all-zero row."""
    from numpy_moe.gates import SinkhornGate
    E = 4
    gate = SinkhornGate(E, E, top_k=1, dtype="float32", seed=0)
    gate.params["W"][...] = np.eye(E, dtype=np.float32)  # the logits are the input
    x = np.random.default_rng(1).standard_normal((8, E)).astype(np.float32)
    x[3] = np.array([-200.0, -197.0, -199.0, -198.5], dtype=np.float32)
    r = gate.forward(x)
    ref = log_sinkhorn(x).argmax(axis=1)
    assert ref[3] != 0
    np.testing.assert_array_equal(r.expert, ref)


def test_sinkhorn_refuses_a_row_without_any_finite_logit():
    from numpy_moe.gates.sinkhorn_gate import sinkhorn
    h = np.zeros((3, 2))
    h[1] = -np.inf
    with pytest.raises(ValueError, match="sample .* -inf throughout"):
        sinkhorn(h)


# ----- float32 accumulation over long batches -------------------------------------------------------------------

def test_float32_shazeer_load_over_a_long_batch_matches_float64():
    """Load_e = sum over N = 400 000 samples of Φ(z): in float32 it must agree with the float64 sums of the same
    (float32) logits to a few float32 roundings, as Importance and the V-MoE load do. Summed row by row over a
    sample-major z (pairwise summation skipped), the old float32 load was off by 9e-5 (relative)."""
    from numpy_moe import balance as B
    from numpy_moe.gates.softmax import route_topk
    N, E = 400_000, 4
    clean = np.random.default_rng(0).standard_normal((E, N)).astype(np.float32).T  # expert-major, as a gate's
    loads = []
    for c in (clean, np.ascontiguousarray(clean.T, dtype=np.float64).T):
        loss = B.ShazeerLoad(1.0)
        loss(route_topk(c, 1, "softmax_then_topk", c, np.full_like(c, 0.25), None))
        loads.append(loss.load.astype(np.float64))
    assert np.abs(loads[0] - loads[1]).max() / loads[1].max() < 1e-6


# ----- optimisers at zero and huge gradients (MATH.md §6.2, §6.3) ------------------------------------------

class OneTensor:
    """The smallest model an optimiser steps: one parameter "w" and its gradient."""

    def __init__(self, w, g):
        self.w, self.g = w, g

    def named_parameters(self):
        yield "w", self.w

    def named_grads(self):
        yield "w", self.g


def adam_reference(w, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8):
    """Adam's update (Kingma & Ba 2015, Algorithm 1) in Python floats for one coordinate, with the gradient
    scaled by s = 1 / max|g| first: m / sqrt(v) is unchanged by the scale, eps becomes eps s."""
    s = 1.0 / max(abs(g) for g in grads)
    m = v = 0.0
    for t, g in enumerate(grads, 1):
        m = beta1 * m + (1 - beta1) * g * s
        v = beta2 * v + (1 - beta2) * (g * s) ** 2
        w -= lr * (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)) ** 0.5 + eps * s)
    return w


def test_adam_refuses_a_gradient_whose_square_overflows_its_second_moment():
    """float32 |g| = 1e21: (1 - β2) g² = 1e39 is past float32's range, so v = inf and the update m / inf = 0, at
    this step and (v staying inf) at every later one: the old Adam left the weight frozen without a word. It
    now raises, naming the parameter, with the weight, its moments and the step count as they were."""
    from numpy_moe.optim import Adam
    w = np.array([1.0, -2.0], dtype=np.float32)
    model, opt = OneTensor(w, np.array([1e21, 1.0], dtype=np.float32)), Adam(0.1)
    with pytest.raises(FloatingPointError, match="'w'.*second moment.*overflow float32"):
        opt.step(model)
    np.testing.assert_array_equal(w, [1.0, -2.0])
    assert opt.t == 0 and "w" not in opt.v and "w" not in opt.m  # refused before any state was made
    model.g[...] = 1.0  # an ordinary step afterwards moves the weights as a first step
    opt.step(model)
    np.testing.assert_allclose(w, [0.9, -2.1], rtol=1e-6)


def test_adam_takes_huge_gradients_whose_second_moment_fits():
    """|g| = 1e20 in float32: g² = 1e40 overflows but (1 - β2) g² = 1e37 fits, so v is exact and the steps are
    Adam's (about lr each); the check's slow path must let them through unchanged."""
    from numpy_moe.optim import Adam
    grads = [1e20, -3e20, 2e20]
    w = np.array([1.0], dtype=np.float32)
    model, opt = OneTensor(w, np.zeros(1, dtype=np.float32)), Adam(0.1)
    for g in grads:
        model.g[0] = g
        opt.step(model)
    assert w[0] == pytest.approx(adam_reference(1.0, grads, 0.1), rel=1e-6)


def test_ftrl_with_beta_zero_keeps_an_untouched_coordinate_at_zero_without_dividing_zero_by_zero():
    """β = λ2 = 0 and a coordinate whose gradients are all 0: n = z = 0, so the closed form is 0 / 0 while McMahan
    et al.'s Algorithm 1 says w = 0 (|z| <= λ1). The old update computed 0 / 0 (a RuntimeWarning, and under
    numpy.seterr(all="raise") a FloatingPointError that the training loops took for divergence). The other
    coordinate follows the paper's recursion, computed here in Python floats."""
    from numpy_moe.optim import FTRL
    w = np.array([0.7, 0.0])
    model, opt = OneTensor(w, np.array([0.0, 0.5])), FTRL(alpha=1.0, beta=0.0)
    z = n = 0.0  # coordinate 1 (w0 = 0, β = 0: z0 = 0)
    wr = 0.0
    for g in (0.5, -0.25, 0.5):
        model.g[1] = g
        with np.errstate(all="raise"):
            opt.step(model)
        sigma = ((n + g * g) ** 0.5 - n ** 0.5) / 1.0
        z, n = z + g - sigma * wr, n + g * g
        wr = -z / (n ** 0.5)
        assert w[0] == 0.0 and w[1] == pytest.approx(wr, rel=1e-12)


def test_ftrl_refuses_a_gradient_whose_square_overflows_n():
    """float32 |g| = 1e20: g² overflows n, and the old weight became NaN (sqrt(inf) - sqrt(0) = inf times w, then
    -inf / inf). Now FloatingPointError naming the parameter, the weight unchanged."""
    from numpy_moe.optim import FTRL
    w = np.array([1.0, 2.0], dtype=np.float32)
    with pytest.raises(FloatingPointError, match="'w'.*sum of squared gradients n would overflow float32"):
        FTRL().step(OneTensor(w, np.array([1e20, 0.0], dtype=np.float32)))
    np.testing.assert_array_equal(w, [1.0, 2.0])


# ----- Soft MoE with huge tokens (MATH.md §10.9) ---------------------------------------------------------------

@pytest.mark.parametrize("dtype,scale", [("float64", 1e160), ("float32", 1e20)])
def test_soft_moe_routes_huge_tokens_by_their_direction(dtype, scale):
    """The logits see x / sqrt(|x|² + 1e-6): for |x| = 1e160 (float64) or 1e20 (float32) that is x / |x|, the
    direction of a moderate token s x (s = 1e3, where the 1e-6 is negligible too), so the dispatch and combine
    weights must be those of s x. |x|² overflowed, the old normalised token was 0 and every weight uniform."""
    from numpy_moe.soft_moe import SoftMoE
    x = np.random.default_rng(0).standard_normal((6, 3))
    layer = SoftMoE(3, 2, 2, slots=2, seed=0, dtype=dtype)
    layer.forward((x * scale).astype(dtype))
    huge = layer.routing
    layer.forward((x * 1e3).astype(dtype))
    tol = 1e-10 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(huge.dispatch, layer.routing.dispatch, atol=tol)
    np.testing.assert_allclose(huge.combine, layer.routing.combine, atol=tol)


def test_soft_moe_input_gradient_at_huge_tokens():
    """float64, tokens of norm 1e110: the input gradient against central differences with a step of 1e104 (the
    same relative step as h = 1e-6 at unit scale; pass mark 1e-6 as for the layer's other checks). Through the
    normalisation it is r da - a r³ (a · da) with r = 1 / |a|: r³ = 1e-330 underflowed to 0 in the old backward,
    which dropped the second term (a relative error of 0.76)."""
    from numpy_moe.gradcheck import numerical_gradient, rel_error
    from numpy_moe.soft_moe import SoftMoE
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3)) * 1e110
    layer = SoftMoE(3, 2, 2, slots=2, seed=0)
    R = rng.standard_normal((6, 2))
    layer.forward(x)
    analytic = layer.backward(R)
    numeric = numerical_gradient(lambda z: float((R * layer.forward(z)).sum()), x, h=1e104)
    assert rel_error(analytic, numeric) < 1e-6


def test_balanced_assignment_of_scores_near_the_float64_limit():
    """BASE's assignment is the balanced one of largest total score, unchanged by scaling every score by the same
    positive factor: at scores of 1e307 it must be that of the scores / 1e307 (checked against every balanced
    assignment). The old bonus N (max - min) + 1 overflowed to inf and scipy refused the matrix ("invalid
    numeric entries")."""
    from itertools import product

    from numpy_moe.gates.balanced import balanced_assignment
    h = np.random.default_rng(0).standard_normal((6, 3))
    best = max((c for c in product(range(3), repeat=6) if np.bincount(c, minlength=3).tolist() == [2, 2, 2]),
               key=lambda c: sum(h[n, e] for n, e in enumerate(c)))
    np.testing.assert_array_equal(balanced_assignment(h * 1e307), best)
    np.testing.assert_array_equal(balanced_assignment(h), best)


# ----- the layer at edge shapes and configurations (these held before the audit; kept as guards) --------------

def _edge_layer(name, dispatch):
    from numpy_moe import balance as B
    from numpy_moe.experts import ExpertBank
    from numpy_moe.gates import ScoreGate
    D = 1 if name == "D=1" else 3
    E, K = {"E=1": (1, 1), "K=E": (4, 4), "K=1": (4, 1)}.get(name, (4, 2))
    if name == "groups=E, seq lengths 1":
        return MoE(gate=ScoreGate(D, E, top_k=K, n_groups=E, topk_groups=K, group_score="max", seed=0),
                   experts=ExpertBank(E, D, 2, 4, activation="swiglu", seed=1), balance=[B.SequenceBalance(0.3)],
                   dispatch=dispatch)
    capacity = {"capacity 1, renormalised": Capacity(1e-6, "probs", renormalize=True),
                "min_capacity > N": Capacity(0.5, min_capacity=20)}.get(name)
    balance = {"importance": 0.3, "z_loss": 0.1} if K > 1 or name == "K=1" else None
    return MoE(D, 2, E, hidden=4, top_k=K, capacity=capacity, balance=balance, dispatch=dispatch, seed=0)


@pytest.mark.parametrize("name", ["E=1", "K=E", "K=1", "N=1", "D=1", "capacity 1, renormalised", "min_capacity > N",
                                  "groups=E, seq lengths 1"])
def test_the_three_dispatches_agree_and_gradients_check_at_edge_shapes(name):
    """Sparse, dense and padded dispatch compute one function (to 1e-12), and its float64 gradients pass the §8
    check (h = 1e-6, pass mark 1e-6; the worst error over these cases was 1e-7), at the edges of the shapes."""
    from numpy_moe.gradcheck import check_module
    N = 1 if name == "N=1" else 6
    seq = [1] * N if "seq" in name else None
    x = np.random.default_rng(0).standard_normal((N, 1 if name == "D=1" else 3))
    results = []
    for dispatch in ("sparse", "dense", "padded"):
        layer = _edge_layer(name, dispatch)
        y = layer.forward(x, seq_lengths=seq)
        dx = layer.backward(np.ones_like(y))
        results.append([y, dx] + [g for _, g in layer.named_grads()])
        assert np.isfinite(y).all() and np.isfinite(dx).all()
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)
    layer = _edge_layer(name, "sparse")
    check_module(layer, x.copy(), forward=lambda z: layer.forward(z, seq_lengths=seq), tol=1e-6)


def test_expert_choice_with_capacity_at_least_n_is_the_dense_moe():
    """C = min(N, ceil(N cf / E)) = N: every expert takes every sample with weight softmax(h)[n, e], the dense
    softmax MoE with the same weights (Zhou et al. 2022 at full capacity)."""
    x = np.random.default_rng(0).standard_normal((7, 3))
    ec = MoE(3, 2, 4, hidden=5, seed=0, router="expert_choice", capacity_factor=100.0)
    dense = MoE(3, 2, 4, hidden=5, seed=0)
    for (_, a), (_, b) in zip(ec.named_parameters(), dense.named_parameters()):
        b[...] = a
    np.testing.assert_allclose(ec.forward(x), dense.forward(x), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(ec.backward(np.ones((7, 2))), dense.backward(np.ones((7, 2))), rtol=1e-12, atol=1e-15)


# ----- smooth load estimators when the noise scale vanishes (MATH.md §3.4, §3.5) ------------------------------

@pytest.mark.parametrize("loss_name", ["ShazeerLoad", "VMoELoad"])
def test_load_losses_at_a_noise_scale_of_zero_take_their_limit(loss_name):
    """Shazeer's noise scale softplus(x W_noise) underflows to exactly 0 below x W_noise ~ -745 (float64; -104 in
    float32), and V-MoE's noise_std / E can be tiny. As sigma -> 0, Φ((clean - t) / sigma) becomes 0 or 1 and
    its derivatives phi(d / sigma) / sigma and phi(d / sigma) d / sigma² vanish: at sigma = 0 the loss and the
    gradients the gate receives (numpy_moe.gates.base.routing_backward: d clean, d sigma) must be those at
    sigma = 1e-30, where the formulas are exact (phi underflows to 0, and the 1 / sigma partials of an expert
    compared with its own noisy logit cancel between "clean" and "logits"). The old backward computed 0 / 0
    and 0 inf: NaN gradients beside a finite loss."""
    from numpy_moe import balance as B
    from numpy_moe.gates.base import routing_backward
    from numpy_moe.gates.softmax import route_topk
    clean = np.random.default_rng(0).standard_normal((6, 4))
    out = []
    for scale in (1e-30, 0.0):
        sigma = np.full_like(clean, scale)
        routing = route_topk(clean.copy(), 2, "softmax_then_topk", clean, sigma, np.zeros_like(clean))
        loss = getattr(B, loss_name)(0.5)
        value = loss(routing)
        out.append((value, routing_backward(routing, loss.backward())))
    (v_small, g_small), (v_zero, g_zero) = out
    assert v_zero == v_small
    for a, b in zip(g_zero, g_small):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_the_post_000_loss_refuses_a_single_expert():
    """Post 000's loss is torch.std (ddof=1) of the E expert shares: for E = 1 that is 0 / 0 (torch.std gives nan).
    The old loss returned NaN, and training then stopped as "diverged ... lower the learning rate"; now the
    forward says why. With two experts it is the sample standard deviation, computed here by hand."""
    from numpy_moe import balance as B
    layer = MoE(3, 2, 1, hidden=4, top_k=1, seed=0, balance={"seed000": 0.01})
    with pytest.raises(ValueError, match="sample standard deviation.*n_experts=1"):
        layer.forward(np.zeros((5, 3)))
    from numpy_moe.gates.softmax import route_topk
    logits = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    shares = np.array([2 / 3, 1 / 3])
    expected = 0.01 * float(np.sqrt(((shares - 0.5) ** 2).sum() / (2 - 1)))
    assert B.Seed000Loss(0.01)(route_topk(logits, 1, "softmax_then_topk")) == pytest.approx(expected, rel=1e-15)


# ----- the task loss with masked classes -------------------------------------------------------------------------

def test_cross_entropy_with_a_masked_class_is_finite():
    """A class masked with a logit of -inf has probability 0; where its target is 0 it costs nothing (0 log 0 = 0),
    as torch.nn.functional.cross_entropy gives for integer labels (0.2573 here). The old loss multiplied the
    one-hot target into log softmax: 0 (-inf) = NaN. The reference is written out with math.log / math.exp."""
    import math

    from numpy_moe import functional as F
    z = np.array([[2.0, -np.inf, 0.5], [0.0, 1.0, -np.inf]])
    y = np.array([0, 1])

    def logp(row, c):
        finite = [v for v in row if v > -math.inf]
        return row[c] - math.log(sum(math.exp(v) for v in finite))

    expected = -(logp(z[0], 0) + logp(z[1], 1)) / 2
    assert F.cross_entropy(z, y) == pytest.approx(expected, rel=1e-15)
    assert F.cross_entropy(z, np.eye(3)[y]) == pytest.approx(expected, rel=1e-15)  # probability rows
    assert np.isfinite(F.cross_entropy_backward(z, y)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_divergence_checks_see_every_non_finite_entry_and_pass_huge_finite_ones(dtype):
    """divergence's finiteness test first takes one self-dot: a finite sum of squares means finite entries, and an
    inf or NaN anywhere makes it inf or NaN. Entries whose squares overflow (|a| ~ sqrt(max)) are finite: the sum
    is inf there, and the entries decide. Checked on contiguous and strided arrays against isfinite."""
    from numpy_moe.divergence import _non_finite

    def _finite(a):
        return not _non_finite([("a", a)])

    big = float(np.sqrt(np.finfo(dtype).max)) * 4
    base = np.linspace(-1, 1, 60, dtype=dtype).reshape(6, 10)
    for value, expected in [(None, True), (big, True), (-big, True), (np.inf, False), (-np.inf, False),
                            (np.nan, False)]:
        a = base.copy()
        if value is not None:
            a[3, 7] = value
        for view in (a, a.T, a[:, ::-2], a[::-1]):
            assert _finite(view) == bool(np.isfinite(view).all()), (value, view.strides)
        assert _finite(a) is expected
    assert _finite(np.zeros((0, 3), dtype=dtype))


def test_the_overflow_checks_work_under_numpy_seterr_raise():
    """Under numpy.seterr(all="raise") the self-dot of huge finite entries raises instead of returning inf: the
    checks must then look at the entries rather than report divergence (or refuse a step) that is not there."""
    from numpy_moe.divergence import _non_finite
    from numpy_moe.optim import Adam
    a = np.array([1e20, 1.0], dtype=np.float32)  # a @ a overflows float32; the entries are finite
    w = np.array([1.0], dtype=np.float32)
    grads = [1e20, -3e20]
    model, opt = OneTensor(w, np.zeros(1, dtype=np.float32)), Adam(0.1)
    with np.errstate(all="raise"):
        assert _non_finite([("a", a)]) == []
        for g in grads:
            model.g[0] = g
            opt.step(model)
    assert w[0] == pytest.approx(adam_reference(1.0, grads, 0.1), rel=1e-6)


def test_a_refused_step_changes_no_parameter_before_the_one_it_refuses():
    """Optimizer.step asks every parameter's check_update before it updates any: a gradient that would overflow
    Adam's v in the second parameter leaves the first one, its moments and the step count untouched."""
    from numpy_moe.optim import Adam

    class TwoTensors:
        def __init__(self):
            self.p = {"a": np.ones(3, dtype=np.float32), "b": np.ones(2, dtype=np.float32)}
            self.g = {"a": np.full(3, 0.5, dtype=np.float32), "b": np.array([1e21, 0.0], dtype=np.float32)}

        def named_parameters(self):
            return iter(self.p.items())

        def named_grads(self):
            return iter(self.g.items())

    model, opt = TwoTensors(), Adam(0.1)
    with pytest.raises(FloatingPointError, match="'b'"):
        opt.step(model)
    np.testing.assert_array_equal(model.p["a"], 1.0)
    assert opt.t == 0 and not opt.m and not opt.v


# ----- float32 bias gradients over many rows: summed with backend.sum_rows, not row after row ----------------

def _rows(shape, seed=1):
    """float32 output gradients of mean 1 (their sum is large against each entry: adding the rows one after the
    other rounds at every step)."""
    return (np.random.default_rng(seed).random(shape) + 0.5).astype(np.float32)


def _bias_cases():
    """(name, run) pairs; run() -> (the float32 bias gradient, the float32 rows whose float64 sum it must be,
    the axes of those rows to sum over). Each case has >= 16384 rows."""
    from numpy_moe.experts import ExpertBank
    from numpy_moe.image_layers import Conv2d, LayerNorm
    from numpy_moe.layers import Linear
    from numpy_moe.models.transformer.embedding import PositionEmbedding
    N, rng = 1 << 15, np.random.default_rng(0)

    def linear():
        layer = Linear(3, 8, seed=0, dtype="float32")
        layer.forward(rng.standard_normal((N, 3)))
        dy = _rows((N, 8))
        layer.backward(dy)
        return layer.grads["b"], dy, (0,)

    def bank_dense(activation):
        def run():
            bank = ExpertBank(2, 3, 8, hidden=4, seed=0, dtype="float32", activation=activation, bias=True)
            bank.forward(rng.standard_normal((N, 3)))
            dout = _rows((2, N, 8))
            bank.backward(dout)
            return bank.grads["b_down" if activation != "relu" else "b2"], dout, (1,)
        return run

    def bank_grouped(activation):
        def run():  # expert 1 gets all N rows (above grouped.TWO_LEVEL_FROM), expert 0 none
            bank = ExpertBank(2, 3, 8, hidden=4, seed=0, dtype="float32", activation=activation, bias=True)
            bank.forward_grouped(rng.standard_normal((N, 3)), [0, 0, N])
            dout = _rows((N, 8))
            bank.backward_grouped(dout)
            return bank.grads["b_down" if activation != "relu" else "b2"][1], dout, (0,)
        return run

    def conv():
        layer = Conv2d(1, 4, 1, seed=0, dtype="float32")
        layer.forward(rng.standard_normal((N // 2, 1, 2, 2)))  # 2 N rows of dY (N Ho Wo, F)
        dy = _rows((N // 2, 4, 2, 2))
        layer.backward(dy)
        return layer.grads["b"], dy, (0, 2, 3)

    def layer_norm():
        layer = LayerNorm(8, dtype="float32")
        layer.forward(rng.standard_normal((N, 8)))
        dy = _rows((N, 8))
        layer.backward(dy)
        return layer.grads["beta"], dy, (0,)

    def positions():
        layer = PositionEmbedding(4, 8, seed=0, dtype="float32")
        layer.forward(rng.standard_normal((N, 2, 8)))
        dy = _rows((N, 2, 8))
        layer.backward(dy)
        return layer.grads["P"][:2], dy, (0,)

    return [("Linear", linear), ("ExpertBank relu dense", bank_dense("relu")),
            ("ExpertBank gptoss dense", bank_dense("gptoss_swiglu")),
            ("ExpertBank relu grouped", bank_grouped("relu")),
            ("ExpertBank gptoss grouped", bank_grouped("gptoss_swiglu")), ("Conv2d", conv),
            ("LayerNorm", layer_norm), ("PositionEmbedding", positions)]


@pytest.mark.parametrize("name,run", _bias_cases(), ids=[name for name, _ in _bias_cases()])
def test_float32_bias_gradients_over_many_rows_keep_float32_accuracy(name, run):
    """A bias gradient is a sum over N rows; in float32 NumPy's ``dy.sum(axis=0)`` adds them one after the other,
    an error of about 5e-6 of sum |dy| at N = 32768 (measured here before the fix: 5.3e-6 to 6.6e-6; 1.2e-6 for
    the grouped ReLU experts' one GEMV of a ones vector). backend.sum_rows keeps it at 3e-7 to 4e-7;
    1e-6 = 17 float32 epsilons. (The gates' bias gradients, sums of rows that add up to zero, were already
    within 4e-8: not tested here.)"""
    got, rows, axes = run()
    rows = rows.astype(np.float64)
    expected = rows.sum(axis=axes)
    error = np.max(np.abs(got.astype(np.float64) - expected) / np.abs(rows).sum(axis=axes))
    assert got.dtype == np.float32 and error < 1e-6, f"{name}: relative error {error:.2e}"
