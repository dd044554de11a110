"""Capacity with dropping and priority, grouping by expert, and the scatter-add combine."""
import numpy as np
import pytest

from numpy_moe.gating import route_topk
from numpy_moe.routing import (apply_capacity, combine_topk, combine_weights, expert_capacity, group_by_expert,
                               scatter_add)

# four samples, top-2 of three experts; choices (best first): n0 (0, 1), n1 (0, 2), n2 (0, 1), n3 (1, 0)
LOGITS = np.array([[3.0, 2, 1], [3, 1, 2], [3, 2, 1], [2, 3, 1]])


def reference_kept(expert, top_weight, K, E, C, batch_priority):
    """Loop reference: serve rank 0 of every sample, then rank 1, ...; samples in priority order."""
    N = len(top_weight)
    order = np.argsort(-top_weight, kind="stable") if batch_priority else np.arange(N)
    load, kept = np.zeros(E, int), np.zeros((N, K), bool)
    for k in range(K):
        for n in order:
            e = expert[n, k]
            if load[e] < C:
                load[e] += 1
                kept[n, k] = True
    return kept.reshape(-1)


def test_capacity_by_position_by_hand():
    # C = 2. Rank 0: expert 0 takes n0, n1 and drops n2; expert 1 takes n3.
    # Rank 1: n0 -> expert 1 (its 2nd slot), n1 -> expert 2, n2 -> expert 1 full, n3 -> expert 0 full.
    r = apply_capacity(route_topk(LOGITS, 2, "softmax_then_topk"), capacity=2)
    assert r.kept.tolist() == [True, True, True, True, False, False, True, False]


def test_capacity_with_batch_priority_by_hand():
    # top probabilities max_e p[n, e] = 0.5, 0.6, 0.9, 0.7 -> priority n2, n3, n1, n0.
    # Rank 0: expert 0 takes n2, n1 and drops n0; expert 1 takes n3.
    # Rank 1: n2 -> expert 1 (2nd slot), n3 -> expert 0 full, n1 -> expert 2, n0 -> expert 1 full.
    r = route_topk(LOGITS, 2, "softmax_then_topk")
    r = r._replace(probs=np.array([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3], [0.9, 0.06, 0.04], [0.2, 0.7, 0.1]]))
    kept = apply_capacity(r, capacity=2, batch_priority=True).kept
    assert kept.tolist() == [False, False, True, True, True, True, True, False]


@pytest.mark.parametrize("batch_priority", [False, True])
@pytest.mark.parametrize("K,E,C", [(1, 4, 3), (2, 4, 5), (3, 5, 2), (2, 8, 1)])
@pytest.mark.parametrize("convention", ["softmax_then_topk", "topk_then_softmax"])
def test_capacity_matches_the_loop_reference(convention, batch_priority, K, E, C, rng):
    r = route_topk(rng.standard_normal((20, E)), K, convention)
    kept = apply_capacity(r, C, batch_priority).kept
    expected = reference_kept(r.expert.reshape(20, K), r.probs.max(axis=1), K, E, C, batch_priority)
    np.testing.assert_array_equal(kept, expected)
    assert np.bincount(r.expert[kept], minlength=E).max() <= C


def test_expert_capacity_formula():
    assert expert_capacity(100, 2, 8, 1.0) == 25  # 100 * 2 / 8
    assert expert_capacity(10, 1, 4, 1.25) == 4  # ceil(3.125)


def test_capacities_take_the_decimal_factor_at_its_word():
    # 1.1 is stored as 1.1000000000000000888: in floating point 100 * 2 * 1.1 / 4 = 55.00000000000001, and the
    # plain ceil gave 56 slots where ceil(N K cf / E) = 55 (one more than DeepSpeed and the formula give)
    from fractions import Fraction
    from math import ceil

    from numpy_moe.gates import expert_choice_capacity
    assert expert_capacity(100, 2, 4, 1.1) == 55
    assert expert_choice_capacity(50, 5, 1.1) == 11  # 50 * 1.1 / 5 = 11.000000000000002
    assert expert_capacity(199, 1, 16, 125 * 16 / 199) == 125  # a factor from an integer capacity C E / N
    assert expert_capacity(10, 1, 4, 1.25 + 1e-6) == 4 and expert_capacity(8, 1, 4, 1.0 + 1e-6) == 3  # no snap
    bad = [(N, K, E, cf) for N in range(1, 600) for K in (1, 2, 3) for E in (3, 4, 6, 8, 16)
           for cf in ("0.7", "1.1", "1.2", "1.25", "1.3", "2.2")
           if expert_capacity(N, K, E, float(cf)) != ceil(Fraction(cf) * N * K / E)]
    assert bad == []  # 371 such cases before


def test_group_by_expert_skips_dropped_and_sorts_stably():
    r = apply_capacity(route_topk(LOGITS, 2, "softmax_then_topk"), capacity=2)
    g = group_by_expert(r, 3)
    # kept assignments: m0 (n0,e0) m1 (n0,e1) m2 (n1,e0) m3 (n1,e2) m6 (n3,e1)
    assert g.assignment.tolist() == [0, 2, 1, 6, 3]
    assert g.sample.tolist() == [0, 1, 0, 3, 1]
    assert g.offsets == [0, 2, 4, 5]


@pytest.mark.parametrize("n_experts, capacity", [(6, None), (6, 5), (9, None), (40000, None)])
def test_group_by_expert_equals_a_stable_sort_of_the_kept(rng, n_experts, capacity):
    # both paths (every assignment kept, some dropped), experts with no rows, and 32-bit keys (E >= 32768)
    logits = rng.standard_normal((40, n_experts))
    logits[:, [1, -1]] -= 50  # experts 1 and E - 1 are never chosen: empty blocks inside and at the end
    r = route_topk(logits, 3, "softmax_then_topk")
    if capacity is not None:
        r = apply_capacity(r, capacity)
        assert not r.kept.all(), "the check needs dropped assignments"
    g = group_by_expert(r, n_experts)
    kept = [m for m in range(r.expert.size) if r.kept[m]]
    expected = sorted(kept, key=lambda m: r.expert[m])  # Python's sort is stable
    assert g.assignment.tolist() == expected
    assert g.sample.tolist() == [int(r.sample[m]) for m in expected]
    counts = np.bincount(r.expert[expected], minlength=n_experts)
    assert g.offsets == [0] + np.cumsum(counts).tolist()
    assert (counts == 0).any(), "the check needs experts with no rows"
    assert all(g.slot[m] == i for i, m in enumerate(expected))
    assert all(g.slot[m] == 0 for m in range(r.expert.size) if not r.kept[m]), "a dropped assignment has slot 0"


def test_scatter_add_equals_add_at(rng):
    r = route_topk(rng.standard_normal((30, 6)), 3, "softmax_then_topk")
    r = apply_capacity(r, 12)
    g = group_by_expert(r, 6)
    values = rng.standard_normal((len(g.sample), 4))
    target = rng.standard_normal((30, 4))
    expected = target.copy()
    np.add.at(expected, g.sample, values)
    np.testing.assert_allclose(scatter_add(target, values, g), expected, rtol=1e-14)


def test_combine_topk_equals_weighted_add_at(rng):
    r = apply_capacity(route_topk(rng.standard_normal((30, 6)), 3, "softmax_then_topk"), 12)
    assert not r.kept.all(), "the check needs dropped assignments"
    g = group_by_expert(r, 6)
    values = rng.standard_normal((len(g.sample), 4))
    w = r.weight * r.kept
    expected = np.zeros((30, 4))
    np.add.at(expected, g.sample, w[g.assignment][:, None] * values)
    np.testing.assert_allclose(combine_topk(values, g, w.reshape(30, 3)), expected, rtol=1e-13, atol=1e-15)


def test_combine_weights_by_hand_zero_where_not_routed_or_dropped():
    # capacity 2 keeps (see test_capacity_by_position_by_hand): n0 -> 0, 1; n1 -> 0, 2; n2 -> nothing; n3 -> 1
    r = apply_capacity(route_topk(LOGITS, 2, "softmax_then_topk"), capacity=2)
    p = np.exp(LOGITS) / np.exp(LOGITS).sum(axis=1, keepdims=True)
    expected = np.array([[p[0, 0], p[0, 1], 0], [p[1, 0], 0, p[1, 2]], [0, 0, 0], [0, p[3, 1], 0]])
    W = combine_weights(r)
    assert W.shape == (4, 3) and W.dtype == LOGITS.dtype
    np.testing.assert_allclose(W, expected, rtol=1e-15, atol=0)
    with pytest.raises(TypeError, match="routing"):
        combine_weights(LOGITS)


@pytest.mark.parametrize("kwargs", [
    dict(top_k=2, capacity_factor=0.5),  # assignments dropped
    dict(top_k=2, gate="topk_then_softmax"),
    dict(capacity={"factor": 0.5, "renormalize": True}, top_k=2),  # kept weights renormalised after dropping
    dict(router="expert_choice", capacity_factor=1.0),  # 0..E experts per sample
])
def test_combine_weights_reproduce_the_layers_output(kwargs, rng):
    from numpy_moe.moe import MoE

    layer = MoE(5, 3, n_experts=4, hidden=6, seed=0, **kwargs)
    x = rng.standard_normal((16, 5))
    y = layer.forward(x)
    W = combine_weights(layer.routing)  # (N, E)
    np.testing.assert_allclose(np.einsum("ne,eno->no", W, layer.experts.forward(x)), y, rtol=1e-12, atol=1e-12)
    kept = layer.routing.kept
    assert (W != 0).sum() == kept.sum()  # one entry per kept assignment, none for the dropped ones
    if "capacity_factor" in kwargs and "top_k" in kwargs or "capacity" in kwargs:
        assert not kept.all()  # the case really drops something


@pytest.mark.parametrize("threads", ["2", "3"])
def test_combine_topk_on_threads_equals_one_block_bit_for_bit(monkeypatch, threads):
    # from COMBINE_SPLIT output values on, blocks of rows go to the threads, each into its own rows
    from numpy_moe import routing
    rng = np.random.default_rng(0)
    N, K, E, F = 5000, 2, 7, 16
    assert N * F >= routing.COMBINE_SPLIT
    r = apply_capacity(route_topk(rng.standard_normal((N, E)), K, "softmax_then_topk"), 1300)
    assert not r.kept.all(), "the check needs dropped assignments"
    g = group_by_expert(r, E)
    values = rng.standard_normal((len(g.sample), F)).astype(np.float32)
    w = (r.weight * r.kept).reshape(N, K)
    monkeypatch.setenv("NUMPY_MOE_THREADS", "1")
    one = combine_topk(values, g, w)
    blocks = []
    run_blocks = routing.run_blocks
    monkeypatch.setattr(routing, "run_blocks", lambda work, **kw: blocks.append(len(work)) or run_blocks(work, **kw))
    monkeypatch.setenv("NUMPY_MOE_THREADS", threads)
    split = combine_topk(values, g, w)
    assert blocks == [int(threads)]
    assert split.dtype == one.dtype == np.float32 and split.flags.c_contiguous
    np.testing.assert_array_equal(split, one)
    expected = np.zeros((N, F))
    np.add.at(expected, g.sample, (r.weight * r.kept)[g.assignment][:, None] * values.astype(np.float64))
    np.testing.assert_allclose(split, expected, rtol=1e-5, atol=1e-5)
