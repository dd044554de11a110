"""numpy_moe.routing.Capacity in the layer: DeepSpeed's drop policies and min_capacity, renormalisation of
the kept weights after dropping (fairseq / DeepSpeed top2gating), its hand-derived backward (MATH.md §4.4)."""
import numpy as np
import pytest

from numpy_moe import balance as B
from numpy_moe.experts import ExpertBank
from numpy_moe.gates import ScoreGate
from numpy_moe.gradcheck import check_module
from numpy_moe.moe import MoE
from numpy_moe.presets.dropping import deepspeed_capacity, deepspeed_keep
from numpy_moe.routing import Capacity
from test_golden import DS_LOGITS, DS_LOGITS2
from test_moe_sparse import frozen_forward

TOL = 1e-6  # a composed model: gate + capacity + renormalisation + experts + loss (MATH.md §8), as test_moe_sparse


def layer(D, E, K, capacity, hidden=6, seed=0, balance=None, rng=None):
    gate = ScoreGate(D, E, top_k=K, score="softmax", normalize=False, seed=seed)
    moe = MoE(gate=gate, experts=ExpertBank(E, D, 3, hidden, seed=seed), capacity=capacity, balance=balance)
    if rng is not None:
        for _, p in moe.named_parameters():  # nonzero biases, as after training
            p += 0.3 * rng.standard_normal(p.shape)
    return moe


def identity_router(logits, K, capacity):
    """A layer whose router logits are its input: x = logits, W = I."""
    E = logits.shape[1]
    moe = layer(E, E, K, capacity)
    moe.gate.params["W"][...] = np.eye(E)
    moe.forward(np.asarray(logits, dtype=float))
    return moe


@pytest.mark.parametrize("policy", ["position", "logits"])
def test_deepspeed_golden_masks_through_the_layer(policy):
    """DeepSpeed tests/unit/moe/test_moe.py TestTopkGate masks (as (token, expert) pairs) from the layer's routing:
    topkgating(capacity_factor=1, min_capacity=1, drop_policy='probs' | 'position')."""
    expected = {  # tests/test_golden.py's hand-written masks, slots left out
        ("logits", 2): {(0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)},
        ("position", 2): {(0, 1), (0, 3), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2)},
        ("logits", 3): {(0, 2), (0, 4), (0, 5), (1, 3), (2, 1), (2, 2), (2, 3), (3, 0), (3, 1), (3, 5)},
        ("position", 3): {(0, 2), (0, 4), (0, 5), (1, 1), (1, 3), (1, 5), (2, 1), (2, 2), (2, 3), (3, 0)},
    }
    for logits, K in ((DS_LOGITS, 2), (DS_LOGITS2, 3)):
        for scale in (1, 2):
            r = identity_router(logits * scale, K, Capacity(1.0, policy, min_capacity=1)).routing
            got = {(int(n), int(e)) for n, e, k in zip(r.sample, r.expert, r.kept) if k}
            assert got == expected[policy, K]


@pytest.mark.parametrize("policy", ["position", "logits"])
def test_policies_agree_with_deepspeed_keep(policy, rng):
    for trial in range(20):
        N, E, K = 12, 5, 3
        logits = rng.standard_normal((N, E))
        cf = rng.uniform(0.3, 1.2)
        moe = identity_router(logits, K, Capacity(cf, policy))
        idx = moe.routing.expert.reshape(N, K)
        C = deepspeed_capacity(N, E, K, cf, min_capacity=0)
        kept, _ = deepspeed_keep(idx, np.take_along_axis(logits, idx, 1), E, C,
                                 "probs" if policy == "logits" else "position")
        np.testing.assert_array_equal(moe.routing.kept, kept.reshape(-1))


def test_min_capacity_floors_the_capacity():
    assert Capacity(0.1).slots(16, 2, 8) == 1  # ceil(16 * 2 * 0.1 / 8) = ceil(0.4)
    assert Capacity(0.1, min_capacity=4).slots(16, 2, 8) == 4
    assert Capacity(2.0, min_capacity=4).slots(16, 2, 8) == 8
    logits = np.tile(np.array([[3.0, 2.0, 0.0, -1.0]]), (6, 1))  # every token picks experts 0 and 1
    for m, per_expert in ((0, 1), (3, 3), (6, 6), (9, 6)):  # C = max(ceil(6 * 2 * 0.25 / 4), m) = max(1, m)
        moe = identity_router(logits, 2, Capacity(0.25, "position", min_capacity=m))
        assert moe.routing.kept.sum() == 2 * per_expert  # experts 0 and 1 keep min(C, 6) tokens each


@pytest.mark.parametrize("policy, kept", [("logits", [0, 2]), ("probs", [0, 2]), ("position", [0, 1])])
def test_score_policies_break_ties_by_position(policy, kept):
    """Hand-worked: 3 tokens all pick expert 0 (K = 1), C = ceil(3 * 1 * 2 / 3) = 2. By score token 2 comes
    first, then tokens 0 and 1 tie and the earlier token wins (DeepSpeed topkgating, routing.ordered_keep);
    by position tokens 0 and 1. Random logits never tie, so the comparison with deepspeed_keep above
    cannot see the tie rule."""
    logits = np.array([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [3.0, 0.0, -1.0]])
    r = identity_router(logits, 1, Capacity(2.0, policy)).routing
    assert r.expert.tolist() == [0, 0, 0]
    assert np.flatnonzero(r.kept).tolist() == kept

def test_a_token_whose_second_choice_is_dropped_puts_weight_one_on_its_first():
    """Hand-worked: 2 tokens, 3 experts, K = 2, capacity C = ceil(2 * 2 * 0.5 / 3) = 1, gshard order.
    Token 0 picks (0, 1), token 1 picks (1, 2): expert 1's slot goes to token 1's FIRST choice (first choices
    before second choices), so token 0's second choice is dropped; renormalised, token 0 has weight
    p00 / p00 = 1 on expert 0 and token 1 weights p11 / (p11 + p12), p12 / (p11 + p12)."""
    logits = np.array([[2.0, 1.0, -1.0], [-1.0, 2.0, 0.5]])
    for renormalize in (False, True):
        moe = identity_router(logits, 2, Capacity(0.5, renormalize=renormalize))
        r = moe.routing
        np.testing.assert_array_equal(r.kept, [True, False, True, True])
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        x = logits
        y = moe.forward(x)
        out = moe.experts.forward(x)  # (E, N, O), every expert on every token
        if renormalize:
            w00, w11, w12 = 1.0, p[1, 1] / (p[1, 1] + p[1, 2]), p[1, 2] / (p[1, 1] + p[1, 2])
        else:
            w00, w11, w12 = p[0, 0], p[1, 1], p[1, 2]
        np.testing.assert_allclose(y[0], w00 * out[0, 0], rtol=1e-14)
        np.testing.assert_allclose(y[1], w11 * out[1, 1] + w12 * out[2, 1], rtol=1e-14)


def test_renormalised_weights_sum_to_one_over_the_kept_and_clamp_at_eps(rng):
    moe = identity_router(rng.standard_normal((16, 6)), 3, Capacity(0.5, renormalize=True))
    r = moe.routing
    w = (r.weight * r.kept).reshape(16, 3)
    some = r.kept.reshape(16, 3).any(axis=1)
    np.testing.assert_allclose(w[some].sum(axis=1), 1.0, rtol=1e-14)
    assert moe.diagnostics["dropped"] > 0
    # a token with every choice dropped: sum = 0, clamped at eps; dropped assignments keep their gate weight
    from numpy_moe.routing import renormalize_kept
    r0 = r._replace(kept=np.zeros_like(r.kept))
    r1, d = renormalize_kept(r0)
    np.testing.assert_array_equal(d, np.finfo(float).eps)
    np.testing.assert_array_equal(r1.weight, r0.weight)
    # and in the layer: kept weights divided, dropped ones as the gate gave them
    w0 = moe.gate.forward(moe.routing.logits).weight  # the identity router: x = logits
    np.testing.assert_array_equal(r.weight[~r.kept], w0[~r.kept])


def test_importance_over_the_gates_with_renormalisation_reads_the_gate_weight_of_dropped_choices(rng):
    """A sample with every choice dropped used to carry the weights w / eps (up to 4.5e15 here, float64), which
    Importance over the gates summed, so one such sample decided the loss. Dropped choices now keep their
    gate weight (kept ones are divided by their sum), and the gradient through the layer checks."""
    logits = np.tile(np.array([[3.0, 2.0, 0.0, -1.0]]), (6, 1))  # all pick experts 0 and 1; C = 1 drops most
    logits = logits + 0.1 * rng.standard_normal(logits.shape)
    balance = [B.Importance(0.5, source="gates")]
    moe = layer(4, 4, 2, Capacity(0.25, "position", renormalize=True), balance=balance)
    moe.gate.params["W"][...] = np.eye(4)
    moe.forward(logits)
    r = moe.routing
    none_kept = ~r.kept.reshape(6, 2).any(axis=1)
    assert none_kept.any(), "some sample must lose both choices"
    w = moe.gate.forward(logits).weight.reshape(6, 2)
    kept = r.kept.reshape(6, 2)
    expected = np.where(kept, w / np.maximum((w * kept).sum(1, keepdims=True), np.finfo(float).eps), w)
    np.testing.assert_allclose(r.weight.reshape(6, 2), expected, rtol=1e-15)
    assert np.abs(r.weight).max() <= 1.0
    imp = np.bincount(r.expert, weights=r.weight, minlength=4)
    np.testing.assert_allclose(moe.aux_loss, 0.5 * imp.var(ddof=0) / (imp.mean() ** 2 + 1e-10), rtol=1e-12)  # CV², MATH §3.1
    x = rng.standard_normal((12, 4))
    moe = layer(4, 4, 2, Capacity(0.5, "position", renormalize=True), rng=rng, balance=balance)
    errors = check_module(moe, x, tol=TOL, forward=frozen_forward(moe))
    assert max(errors.values()) < TOL
    assert (~moe.routing.kept).any()


@pytest.mark.parametrize("policy", ["gshard", "position", "logits"])
def test_renormalisation_gradients_through_the_layer(policy, rng):
    """Float64 finite differences through the whole layer with drops and renormalisation (routing frozen:
    the check asserts the routing never changes under the perturbations)."""
    moe = layer(5, 4, 2, Capacity(0.75, policy, renormalize=True), rng=rng,
                balance=[B.FrameworkBalance(0.5, "gshard")])
    x = rng.standard_normal((12, 5))
    errors = check_module(moe, x, tol=TOL, forward=frozen_forward(moe))
    assert set(errors) == {"input"} | {name for name, _ in moe.named_parameters()}
    assert max(errors.values()) < TOL
    print(policy, {k: f"{v:.1e}" for k, v in errors.items()})
    assert moe.diagnostics["dropped"] > 0
    k = moe.routing.kept.reshape(12, 2)
    assert (k[:, 0] != k[:, 1]).any(), "some token must keep exactly one choice (weight 1 after renormalising)"


def test_short_form_is_a_capacity_and_config_round_trips(rng):
    a = MoE(5, 3, 4, hidden=6, seed=0, top_k=2, capacity_factor=0.75, batch_priority=True)
    assert a.capacity == Capacity(0.75, "batch_priority")
    b = layer(5, 4, 2, Capacity(0.5, "logits", min_capacity=2, renormalize=True))
    config = b.get_config()
    assert config["capacity"] == {"factor": 0.5, "policy": "logits", "min_capacity": 2, "renormalize": True}
    c = MoE.from_config(config)
    assert c.capacity == b.capacity
    x = rng.standard_normal((10, 5))
    for (_, c_p), (_, b_p) in zip(c.named_parameters(), b.named_parameters()):
        c_p[...] = b_p
    np.testing.assert_array_equal(b.forward(x), c.forward(x))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(capacity=Capacity(1.0), capacity_factor=1.0), ValueError, "not both"),
    (dict(capacity="big"), TypeError, "capacity='big' must be None"),
    (dict(capacity={"factor": 1.0, "policy": "random"}), ValueError, "policy='random' must be one of"),
    (dict(capacity={"factor": 0}), ValueError, "factor=0"),
    (dict(capacity={"factor": 1.0, "min_capacity": -1}), ValueError, "min_capacity=-1"),
    (dict(capacity={"factor": 1.0, "renormalize": "yes"}), TypeError, "renormalize='yes'"),
])
def test_bad_capacity_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MoE(5, 3, 4, hidden=6, seed=0, top_k=2, **kwargs)


def test_capacity_needs_a_top_k_gate():
    with pytest.raises(ValueError, match="needs a top-k gate"):
        MoE(5, 3, 4, hidden=6, seed=0, capacity=Capacity(1.0))


def dense_reference(moe, x, keep):
    """y_n = sum_e c[n, e] E_e(x_n) with c = softmax(h) * keep / max(sum_e softmax(h) * keep, eps): the
    combine weights of fairseq / DeepSpeed top2gating and topkgating written densely (keep: (N, E) 0/1)."""
    h = x @ moe.gate.params["W"]
    p = np.exp(h - h.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    c = p * keep
    c /= np.maximum(c.sum(1, keepdims=True), np.finfo(float).eps)
    return np.einsum("ne,eno->no", c, moe.experts.forward(x))


def gshard_keep(h, C):
    """fairseq top2gating's masks after capacity, as its one-hot cumsums: first choices, then second choices
    offset by each expert's first-choice count; kept where the location < C."""
    N, E = h.shape
    order = np.argsort(-h, axis=1, kind="stable")
    m1, m2 = np.eye(E)[order[:, 0]], np.eye(E)[order[:, 1]]
    loc1 = np.cumsum(m1, 0) - 1
    loc2 = np.cumsum(m2, 0) - 1 + m1.sum(0, keepdims=True)
    return m1 * (loc1 < C) + m2 * (loc2 < C)


@pytest.mark.parametrize("policy, K", [("probs", 2), ("position", 2), ("probs", 3), ("position", 3)])
def test_deepspeed_topk_preset_reproduces_deepspeeds_masks_and_combine(policy, K, rng):
    """The deepspeed_topk block on DeepSpeed's test logits (router = identity): the kept pairs are the test's
    hand-written masks and the output is the dense topkgating combine (kept weights renormalised)."""
    from numpy_moe.presets import build
    logits = DS_LOGITS if K == 2 else DS_LOGITS2
    E = logits.shape[1]
    cfg = {"model_dim": E, "hidden": 5, "num_experts": E, "k": K, "capacity_factor": 1.0, "min_capacity": 1,
           "drop_policy": policy}
    moe = build("deepspeed_topk", cfg, seed=1)
    moe.gate.params["W"][...] = np.eye(E)
    y = moe.forward(logits)
    r = moe.routing
    keep = np.zeros((4, E))
    keep[r.sample[r.kept], r.expert[r.kept]] = 1
    name = "logits" if policy == "probs" else "position"
    expected = {("logits", 2): {(0, 1), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2), (3, 3)},
                ("position", 2): {(0, 1), (0, 3), (1, 0), (1, 1), (2, 2), (2, 3), (3, 2)},
                ("logits", 3): {(0, 2), (0, 4), (0, 5), (1, 3), (2, 1), (2, 2), (2, 3), (3, 0), (3, 1), (3, 5)},
                ("position", 3): {(0, 2), (0, 4), (0, 5), (1, 1), (1, 3), (1, 5), (2, 1), (2, 2), (2, 3), (3, 0)}}
    assert {tuple(map(int, t)) for t in zip(*np.nonzero(keep))} == expected[name, K]
    np.testing.assert_allclose(y, dense_reference(moe, logits, keep), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("preset", ["gshard", "deepspeed_top2"])
def test_top2_presets_match_top2gating_with_drops(preset, rng):
    """gshard / deepspeed_top2 against fairseq's top2gating written densely (one-hot cumsum locations,
    renormalised after dropping), over several random draws with drops."""
    from numpy_moe.presets import build
    N, E, D = 20, 4, 6
    for trial in range(5):
        cf = [0.5, 0.75, 1.0][trial % 3]
        cfg = {"model_dim": D, "hidden": 5, "num_experts": E, "capacity_factor": cf, "min_capacity": 0}
        moe = build(preset, cfg, seed=trial)
        x = rng.standard_normal((N, D))
        y = moe.forward(x)
        keep = gshard_keep(x @ moe.gate.params["W"], int(np.ceil(N * 2 * cf / E)))
        assert moe.diagnostics["dropped"] == 2 * N - keep.sum() > 0
        np.testing.assert_allclose(y, dense_reference(moe, x, keep), rtol=1e-13, atol=1e-15)
    # renormalising before dropping (fairseq's normalize_gate_prob_before_dropping=True) keeps p1 / (p1 + p2)
    if preset == "gshard":
        before = build(preset, dict(cfg, normalize_gate_prob_before_dropping=True), seed=4)
        yb = before.forward(x)
        one = (keep.sum(1) == 1)
        assert one.any() and not np.allclose(yb[one], y[one])
        np.testing.assert_allclose(yb[~one], y[~one], rtol=1e-13)
