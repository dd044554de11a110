"""Top-k and expert-choice gates: the routing they return, both conventions, noise, the k=1 pitfall,
and their gradients by finite differences (float64, MATH.md §8)."""
import numpy as np
import pytest
from scipy.special import softmax

from numpy_moe.backend import default_rng
from numpy_moe.gating import (ExpertChoiceGate, TopKGate, expert_major_logits, route_topk, routing_backward,
                               topk_indices)
from numpy_moe.gates.base import weight_grad
from numpy_moe.gradcheck import numerical_gradient, rel_error

TOL = 1e-7  # single layer (MATH.md §8)


def test_softmax_then_topk_by_hand():
    # logits (1, 3, 2): softmax = (0.0900, 0.6652, 0.2447); top-2 = experts 1 then 2 with those
    # probabilities as weights (no renormalisation: they sum to 0.91).
    r = route_topk(np.array([[1.0, 3.0, 2.0]]), 2, "softmax_then_topk")
    p = np.exp([1.0, 3.0, 2.0]) / np.exp([1.0, 3.0, 2.0]).sum()
    assert r.expert.tolist() == [1, 2] and r.sample.tolist() == [0, 0] and r.kept.all()
    np.testing.assert_allclose(r.weight, [p[1], p[2]], rtol=1e-15)


def test_topk_then_softmax_by_hand():
    # the same logits, softmax over the two kept logits only: (e^3, e^2) / (e^3 + e^2) = (0.7311, 0.2689)
    r = route_topk(np.array([[1.0, 3.0, 2.0]]), 2, "topk_then_softmax")
    np.testing.assert_allclose(r.weight, [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))], rtol=1e-15)


@pytest.mark.parametrize("E", [3, 127, 128, 300])  # the rank dtype changes at 128 (int8 -> int16)
def test_topk_indices_match_a_stable_sort_with_ties(E, rng):
    # integer-valued logits force ties; the reference is a stable sort of -logits: largest first, and
    # among equal logits the lowest expert index first
    logits = rng.integers(-3, 4, size=(50, E)).astype(np.float64)
    logits[0] = 1.0  # a row that is all ties
    K = min(E, 4)
    expected = np.argsort(-logits, axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(topk_indices(logits, K), expected)
    expert_major = expert_major_logits(np.eye(50), logits)  # the same values in the gate's layout
    assert expert_major.flags.f_contiguous
    np.testing.assert_array_equal(topk_indices(expert_major, K), expected)


@pytest.mark.parametrize("convention", ["softmax_then_topk", "topk_then_softmax"])
@pytest.mark.parametrize("noise", [None, "shazeer", "vmoe"])
def test_topk_gate_gradients(convention, noise, rng):
    gate = TopKGate(5, 4, top_k=2, convention=convention, noise=noise, noise_std=4.0, seed=0)
    for p in gate.params.values():
        p += 0.5 * rng.standard_normal(p.shape)
    x = rng.standard_normal((7, 5))
    R = rng.standard_normal(14)  # L = sum_m R_m weight_m

    def loss(_):
        gate.rng = default_rng(3)  # the same noise draw every evaluation
        r = gate.forward(x)
        np.testing.assert_array_equal(r.expert, expert0, err_msg="routing changed under perturbation")
        return float((R * r.weight).sum())

    gate.rng = default_rng(3)
    expert0 = gate.forward(x).expert.copy()
    dx = gate.backward({"weight": R})
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    for key, p in gate.params.items():
        assert rel_error(gate.grads[key], numerical_gradient(loss, p)) < TOL, key


def test_k1_topk_then_softmax_gives_the_gate_zero_gradient(rng):
    # With K = 1 the softmax over one kept logit is 1 whatever the logits: the task loss cannot train the
    # gate (the pitfall MATH.md §2 names). softmax_then_topk keeps p_max, which does depend on the logits.
    x = rng.standard_normal((6, 5))
    R = rng.standard_normal(6)
    pitfall = TopKGate(5, 4, top_k=1, convention="topk_then_softmax", seed=0)
    assert np.array_equal(pitfall.forward(x).weight, np.ones(6))
    pitfall.backward({"weight": R})
    assert not pitfall.grads["W"].any() and not pitfall.grads["b"].any()
    fine = TopKGate(5, 4, top_k=1, convention="softmax_then_topk", seed=0)
    fine.forward(x)
    fine.backward({"weight": R})
    assert np.abs(fine.grads["W"]).max() > 1e-3


@pytest.mark.parametrize("noise", ["shazeer", "vmoe"])
def test_noise_only_in_training_and_seeded(noise, rng):
    x = rng.standard_normal((50, 5))
    gate = TopKGate(5, 4, top_k=2, noise=noise, noise_std=4.0, seed=1)
    clean = x @ gate.params["W"] + gate.params["b"]
    r = gate.forward(x)
    assert r.eps is not None and not np.allclose(r.logits, clean)
    np.testing.assert_allclose(r.logits, clean + r.eps * r.sigma, rtol=1e-14)
    if noise == "vmoe":
        np.testing.assert_array_equal(r.sigma, np.full((50, 4), 4.0 / 4))
    else:  # W_noise starts at zero: softplus(0) = log 2
        np.testing.assert_allclose(r.sigma, np.log(2), rtol=1e-15)
    again = TopKGate(5, 4, top_k=2, noise=noise, noise_std=4.0, seed=1).forward(x)
    np.testing.assert_array_equal(again.logits, r.logits)
    gate.eval()
    r_eval = gate.forward(x)
    assert r_eval.eps is None and np.array_equal(r_eval.logits, clean)


def test_expert_choice_gives_each_expert_its_top_c_samples(rng):
    gate = ExpertChoiceGate(5, 4, capacity_factor=2.0, seed=0)
    x = rng.standard_normal((10, 5))
    r = gate.forward(x)
    S = softmax(x @ gate.params["W"] + gate.params["b"], axis=1)
    C = 5  # ceil(10 * 2 / 4)
    assert np.array_equal(np.bincount(r.expert), [C] * 4)
    for e in range(4):
        assert set(r.sample[r.expert == e]) == set(np.argsort(-S[:, e])[:C])
    np.testing.assert_allclose(r.weight, S[r.sample, r.expert], rtol=1e-15)


def test_expert_choice_gradients(rng):
    gate = ExpertChoiceGate(5, 4, capacity_factor=1.5, seed=0)
    x = rng.standard_normal((8, 5))
    r0 = gate.forward(x)
    R = rng.standard_normal(r0.weight.shape)

    def loss(_):
        r = gate.forward(x)
        np.testing.assert_array_equal(r.sample, r0.sample, err_msg="routing changed under perturbation")
        return float((R * r.weight).sum())

    gate.forward(x)
    dx = gate.backward({"weight": R})
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    for key, p in gate.params.items():
        assert rel_error(gate.grads[key], numerical_gradient(loss, p)) < TOL, key


@pytest.mark.parametrize("convention", ["softmax_then_topk", "topk_then_softmax"])
def test_routing_backward_wrt_logits_clean_and_sigma(convention, rng):
    # logits = clean + eps * sigma with eps fixed; grad with every key at once
    clean, sigma, eps = rng.standard_normal((6, 5)), rng.uniform(0.5, 1.5, (6, 5)), rng.standard_normal((6, 5))
    G = {"weight": rng.standard_normal(12), "logits": rng.standard_normal((6, 5)),
         "clean": rng.standard_normal((6, 5)), "sigma": rng.standard_normal((6, 5))}

    def loss(_):
        r = route_topk(clean + eps * sigma, 2, convention, clean, sigma, eps)
        return float((G["weight"] * r.weight).sum() + (G["logits"] * r.logits).sum()
                     + (G["clean"] * r.clean).sum() + (G["sigma"] * r.sigma).sum())

    dclean, dsigma = routing_backward(route_topk(clean + eps * sigma, 2, convention, clean, sigma, eps), G)
    assert rel_error(dclean, numerical_gradient(loss, clean)) < TOL
    assert rel_error(dsigma, numerical_gradient(loss, sigma)) < TOL


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(top_k=5), ValueError, "top_k=5 must be between 1 and n_experts=4"),
    (dict(top_k=0), ValueError, "top_k=0 must be an integer >= 1"),
    (dict(top_k=1.5), TypeError, "top_k=1.5 must be an integer"),
    (dict(convention="topk"), ValueError, "convention='topk' must be one of"),
    (dict(noise="gauss"), ValueError, "noise='gauss' must be one of"),
    (dict(noise="vmoe", noise_std=0.0), ValueError, "noise_std=0.0 must be a finite number > 0"),
    (dict(noise="vmoe", noise_std=float("inf")), ValueError, "noise_std=inf must be a finite number > 0"),
])
def test_topk_gate_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        TopKGate(5, 4, **kwargs)


@pytest.mark.parametrize("cf", [0, float("inf")])
def test_expert_choice_rejects_bad_capacity(cf):
    with pytest.raises(ValueError, match=f"capacity_factor={cf} must be a finite number > 0"):
        ExpertChoiceGate(5, 4, capacity_factor=cf)


@pytest.mark.parametrize("n", [7, 3000])  # below and above FLAT_PAIRS / K: the fancy and the flat path
@pytest.mark.parametrize("layout", ["expert-major", "C"])
def test_pairs_are_gathered_and_added_as_numpy_fancy_indexing_does(n, layout):
    from numpy_moe.gates.base import add_at_pairs, pick_pairs
    rng = np.random.default_rng(n)
    E, K = 6, 2
    a = rng.standard_normal((n, E))
    a = np.ascontiguousarray(a.T).T if layout == "expert-major" else a
    cols = np.stack([rng.choice(E, K, replace=False) for _ in range(n)])  # (n, K), distinct per row
    rows = np.arange(n)[:, None]
    np.testing.assert_array_equal(pick_pairs(a, rows, cols), a[rows, cols])
    sample, expert, values = np.repeat(np.arange(n), K), cols.reshape(-1), rng.standard_normal(n * K)
    expected = a.copy()
    expected[sample, expert] += values
    got = a.copy(order="K")
    assert add_at_pairs(got, sample, expert, values) is got
    np.testing.assert_array_equal(got, expected)


def test_expert_major_logits_are_x_w_in_the_expert_major_layout():
    from numpy_moe.gates.base import expert_major_logits
    rng = np.random.default_rng(0)
    x, W = rng.standard_normal((50, 7)), rng.standard_normal((7, 5))
    h = expert_major_logits(x, W)
    assert h.shape == (50, 5) and h.T.flags.c_contiguous
    np.testing.assert_allclose(h, x @ W, rtol=1e-13, atol=1e-13)  # the same sums, in BLAS's order


def test_topk_indices_sorts_small_batches_into_the_order_of_its_column_passes(monkeypatch):
    # ties on purpose (integer logits), both layouts, every K: the argsort path and the K-pass path agree
    from numpy_moe.gates import base
    rng = np.random.default_rng(0)
    for _ in range(300):
        N, E = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        K = int(rng.integers(1, E + 1))
        h = rng.integers(-2, 3, (N, E)).astype(np.float64) + (rng.standard_normal((N, E)) if rng.random() < 0.3 else 0)
        h = np.ascontiguousarray(h.T).T if rng.random() < 0.5 else h
        sorted_ = base.topk_indices(h, K)
        with monkeypatch.context() as m:
            m.setattr(base, "SMALL_TOPK", -1)
            passes = base.topk_indices(h, K)
        np.testing.assert_array_equal(sorted_, passes)
        assert sorted_.dtype == passes.dtype


@pytest.mark.parametrize("layout", ["expert-major", "row-major"])
def test_weight_grad_is_x_transpose_d_in_c_order(layout):
    # the gate's dW = xᵀ d, computed as (dᵀ x)ᵀ when d is expert-major; either way C-ordered
    rng = np.random.default_rng(0)
    x, d = rng.standard_normal((300, 7)), rng.standard_normal((300, 5))
    if layout == "expert-major":
        d = np.ascontiguousarray(d.T).T
        assert d.T.flags.c_contiguous and not d.flags.c_contiguous
    got = weight_grad(x, d)
    assert got.shape == (7, 5) and got.flags.c_contiguous
    np.testing.assert_allclose(got, x.T @ d, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(got, np.einsum("nd,ne->de", x, d), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("convention", ["softmax_then_topk", "topk_then_softmax"])
@pytest.mark.parametrize("N, E, K, threads", [(8192, 16, 2, "2"), (300, 6, 3, "3"), (257, 5, 1, "2")])
def test_topk_gate_in_blocks_of_rows_equals_one_pass_bit_for_bit(monkeypatch, dtype, convention, N, E, K, threads):
    # the noiseless gate routes blocks of rows on the threads from SPLIT_ROUTE logits on (lowered here for the
    # small shapes); every step is row-wise, so the routing is the one-pass routing, bit for bit, ties included
    from numpy_moe.gates import softmax as softmax_gates
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, 12)).astype(dtype)
    x[: N // 3] = np.round(x[: N // 3])  # integer inputs and weights below: tied logits
    gate = TopKGate(12, E, top_k=K, convention=convention, seed=0, dtype=dtype)
    gate.params["W"][:] = np.round(4 * gate.params["W"]) / 4
    gate.params["b"][:] = rng.standard_normal(E)
    one = route_topk(expert_major_logits(x, gate.params["W"], gate.params["b"]), K, convention)
    calls = []
    blocks = softmax_gates.route_topk_blocks
    monkeypatch.setattr(softmax_gates, "route_topk_blocks", lambda *a: calls.append(a[-1]) or blocks(*a))
    monkeypatch.setattr(softmax_gates, "SPLIT_ROUTE", min(softmax_gates.SPLIT_ROUTE, N * E))
    monkeypatch.setenv("NUMPY_MOE_THREADS", threads)
    split = gate.forward(x)
    assert calls == [int(threads)], "the gate must have routed in blocks"
    for field in ("sample", "expert", "weight", "kept", "logits", "clean", "probs", "scores"):
        a, b = getattr(one, field), getattr(split, field)
        assert a.dtype == b.dtype and (a.ndim == 1 or a.strides == b.strides), field  # (N, E): expert-major
        np.testing.assert_array_equal(a, b, err_msg=field)
    assert split.sigma is None and split.eps is None and split.top_k == K and split.convention == convention
    grad = {"weight": rng.standard_normal(N * K)}
    gate_one = TopKGate(12, E, top_k=K, convention=convention, seed=0, dtype=dtype)
    gate_one.params.update({k: v.copy() for k, v in gate.params.items()})
    monkeypatch.setenv("NUMPY_MOE_THREADS", "1")
    gate_one.forward(x)
    np.testing.assert_array_equal(gate.backward(grad), gate_one.backward(grad))
    for key in gate.grads:
        np.testing.assert_array_equal(gate.grads[key], gate_one.grads[key], err_msg=key)


def test_noisy_or_small_topk_gates_route_in_one_pass(monkeypatch):
    from numpy_moe.gates import softmax as softmax_gates
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    monkeypatch.setattr(softmax_gates, "route_topk_blocks", lambda *a: pytest.fail("routed in blocks"))
    x = np.random.default_rng(0).standard_normal((64, 4))
    TopKGate(4, 8, top_k=2, noise="vmoe", seed=0).forward(x)  # noise: one pass (the draw is for all rows)
    monkeypatch.setattr(softmax_gates, "SPLIT_ROUTE", 64 * 8 + 1)
    TopKGate(4, 8, top_k=2, seed=0).forward(x)  # below SPLIT_ROUTE logits


@pytest.mark.parametrize("small", [True, False])  # the argsort path (N E <= SMALL_TOPK) and the K-pass path
@pytest.mark.parametrize("K", [1, 2])
def test_topk_indices_refuses_nan_by_name(small, K, monkeypatch):
    # NaN has no rank: the K passes used to return the index E (out of range) for K = 1 and an IndexError
    # for K > 1, and a router with a NaN weight crashed with "index 4 is out of bounds"
    from numpy_moe.gates import base
    if not small:
        monkeypatch.setattr(base, "SMALL_TOPK", -1)
    h = np.array([[0.1, 0.4, 0.3, 0.2], [0.1, np.nan, 0.3, 0.2]])
    with pytest.raises(ValueError, match="NaN in 1 row.*first row 1"):
        base.topk_indices(h, K)


@pytest.mark.parametrize("small", [True, False])
def test_topk_indices_rows_with_fewer_than_k_finite_values_stay_distinct(small, monkeypatch):
    # a row with fewer than K entries above -inf: the K passes picked column 0 again once only -inf was left
    from numpy_moe.gates import base
    if not small:
        monkeypatch.setattr(base, "SMALL_TOPK", -1)
    h = np.array([[3.0, -np.inf, -np.inf, -np.inf], [-np.inf] * 4, [-np.inf, 2.0, np.inf, 1.0]])
    idx = base.topk_indices(h, 3)
    np.testing.assert_array_equal(idx, [[0, 1, 2], [0, 1, 2], [2, 1, 3]])  # largest first, then lowest index
    np.testing.assert_array_equal(idx, np.argsort(-h, axis=1, kind="stable")[:, :3])
    # without the all -inf row the first pass sees a finite maximum in every row: only the check in the last
    # pass finds row 0 (its second and third picks are -inf)
    np.testing.assert_array_equal(base.topk_indices(h[[0, 2]], 3), [[0, 1, 2], [2, 1, 3]])


@pytest.mark.parametrize("K", [1, 2])
def test_a_router_with_a_nan_weight_fails_with_a_clear_error(K):
    from numpy_moe.experts import ExpertBank
    from numpy_moe.moe import MoE
    gate = TopKGate(4, 4, top_k=K, seed=0)
    moe = MoE(gate=gate, experts=ExpertBank(4, 4, 4, 8, seed=0))
    gate.params["W"][0, 1] = np.nan  # a diverged step, say
    with pytest.raises(ValueError, match="NaN"):
        moe.forward(np.ones((3, 4)))


def test_expert_choice_with_a_nan_weight_fails_with_a_clear_error():
    # argsort ranks NaN last, so the experts took samples around it and the layer returned NaN without a word
    from numpy_moe.experts import ExpertBank
    from numpy_moe.moe import MoE
    gate = ExpertChoiceGate(4, 4, capacity_factor=1.0, seed=0)
    moe = MoE(gate=gate, experts=ExpertBank(4, 4, 4, 8, seed=0))
    gate.params["W"][0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN in 6 of 6 rows"):
        moe.forward(np.ones((6, 4)))
