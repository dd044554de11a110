"""ScoreGate: sigmoid / softmax scores, renormalisation and scaling by hand, group-limited selection
against brute force (ties included), the selection bias (moves the choice, never the weights; updated by
Algorithm 1 of Wang et al. 2024 on a hand-worked example), gradients (float64, MATH.md §8), bad input."""
from itertools import combinations

import numpy as np
import pytest
from scipy.special import expit

from numpy_moe.backend import default_rng
from numpy_moe.gates import ScoreGate, TopKGate
from numpy_moe.gradcheck import numerical_gradient, rel_error

TOL = 1e-7  # single layer (MATH.md §8)


def gate_with_logits(h, **kwargs):
    """A ScoreGate whose logits for x = I are h: W = h (N = D)."""
    N, E = h.shape
    gate = ScoreGate(N, E, **kwargs)
    gate.params["W"][:] = h
    return gate, np.eye(N)


def test_deepseek_v3_weights_by_hand():
    # logits (0, 1, -1, 2): sigmoid s = (0.5, 0.7311, 0.2689, 0.8808); top-2 = experts 3 then 1;
    # weights = 2.5 * (0.8808, 0.7311) / (0.8808 + 0.7311 + 1e-20) = (1.3661, 1.1339)
    h = np.array([[0.0, 1.0, -1.0, 2.0]])
    gate, x = gate_with_logits(h, top_k=2, score="sigmoid", normalize=True, scale=2.5)
    r = gate.forward(x)
    s = expit(h[0])
    assert r.expert.tolist() == [3, 1]
    np.testing.assert_allclose(r.weight, 2.5 * s[[3, 1]] / (s[3] + s[1]), rtol=1e-15)
    np.testing.assert_allclose(r.scores, expit(h), rtol=1e-15)
    # without renormalisation the weights are the scaled scores themselves (DeepSeek-V2 with softmax)
    gate.normalize = False
    np.testing.assert_allclose(gate.forward(x).weight, 2.5 * s[[3, 1]], rtol=1e-15)


def test_norm_eps_is_added_to_the_renormalising_sum():
    # the default 1e-20 changes nothing visible, so a large one: w = scale s_kept / (sum s_kept + norm_eps)
    h = np.array([[0.0, 1.0, -1.0, 2.0]])
    gate, x = gate_with_logits(h, top_k=2, score="sigmoid", normalize=True, scale=2.5, norm_eps=0.5)
    s = expit(h[0])
    np.testing.assert_allclose(gate.forward(x).weight, 2.5 * s[[3, 1]] / (s[3] + s[1] + 0.5), rtol=1e-15)


def test_softmax_renormalised_is_mixtral_and_shazeer_topk_then_softmax(rng):
    # Mixtral: softmax over all E, keep K, divide by their sum = a softmax over the K kept logits
    x = rng.standard_normal((9, 5))
    mixtral = ScoreGate(5, 6, top_k=2, score="softmax", normalize=True, norm_eps=0.0, seed=0)
    shazeer = TopKGate(5, 6, top_k=2, convention="topk_then_softmax", seed=0)
    shazeer.params["W"][:] = mixtral.params["W"]
    a, b = mixtral.forward(x), shazeer.forward(x)
    np.testing.assert_array_equal(a.expert, b.expert)
    np.testing.assert_allclose(a.weight, b.weight, rtol=1e-14)


def brute_force_select(c, n_groups, topk_groups, top_k, group_score):
    """Group-limited top-k, one row at a time in plain Python, independently of numpy_moe.

    Groups are ranked by their score (largest first, lower group index on ties) and the first topk_groups
    kept; then the top_k experts of the kept groups by c (largest first, lower expert index on ties).
    """
    out = []
    size = len(c[0]) // n_groups
    for row in c:
        groups = [row[g * size:(g + 1) * size] for g in range(n_groups)]
        score = [max(g) if group_score == "max" else sum(sorted(g)[-2:]) for g in groups]
        kept = sorted(range(n_groups), key=lambda g: (-score[g], g))[:topk_groups]
        cands = [e for g in kept for e in range(g * size, (g + 1) * size)]
        best = sorted(cands, key=lambda e: (-row[e], e))[:top_k]
        # the chosen set has the largest sum of any top_k experts of the kept groups
        assert sum(row[e] for e in best) == max(sum(row[e] for e in s) for s in combinations(cands, top_k))
        out.append(best)
    return np.array(out)


@pytest.mark.parametrize("n_groups,topk_groups,top_k,group_score", [
    (3, 2, 2, "top2"), (3, 1, 2, "max"), (4, 2, 3, "top2"), (2, 1, 1, "max"), (6, 3, 3, "max")])
def test_group_limited_selection_matches_brute_force_with_ties(n_groups, topk_groups, top_k, group_score, rng):
    # small integers force ties between experts and between groups
    c = rng.integers(-2, 3, size=(200, 12)).astype(float)
    c[0] = 1.0  # a row of ties everywhere
    gate = ScoreGate(3, 12, top_k=top_k, n_groups=n_groups, topk_groups=topk_groups, group_score=group_score)
    np.testing.assert_array_equal(gate.select(c), brute_force_select(c, n_groups, topk_groups, top_k, group_score))


def test_group_limit_changes_the_choice_v2_max_vs_v3_top2():
    # two groups of three experts; row scores (0.9, 0.1, 0.1 | 0.8, 0.7, 0.0), keep 1 group, top-2:
    # V2 (max) keeps group 0 (0.9 > 0.8) -> experts 0, 1 (1 before 2 on the tie); V3 (top-2 sum) keeps group 1
    # (1.5 > 1.0) -> experts 3, 4. Without a limit the top-2 are 0 and 3.
    c = np.array([[0.9, 0.1, 0.1, 0.8, 0.7, 0.0]])
    v2 = ScoreGate(2, 6, top_k=2, n_groups=2, topk_groups=1, group_score="max")
    v3 = ScoreGate(2, 6, top_k=2, n_groups=2, topk_groups=1, group_score="top2")
    free = ScoreGate(2, 6, top_k=2)
    assert v2.select(c).tolist() == [[0, 1]] and v3.select(c).tolist() == [[3, 4]]
    assert free.select(c).tolist() == [[0, 3]]


def test_bias_changes_the_choice_but_never_the_weights():
    h = np.array([[2.0, 1.0, 0.0, -1.0], [0.5, 0.0, 1.5, -0.5]])
    gate, x = gate_with_logits(h, top_k=2, score="sigmoid", normalize=True)
    before = gate.forward(x)
    gate.buffers["bias"][:] = [0.0, 0.0, 0.0, 5.0]  # expert 3 now wins every row's selection
    after = gate.forward(x)
    assert before.expert.reshape(2, 2)[:, 0].tolist() == [0, 2]
    assert after.expert.reshape(2, 2)[:, 0].tolist() == [3, 3]
    s = expit(h)
    for n in range(2):  # the weights are the unbiased scores of the chosen experts, renormalised
        chosen = after.expert.reshape(2, 2)[n]
        np.testing.assert_allclose(after.weight.reshape(2, 2)[n], s[n, chosen] / s[n, chosen].sum(), rtol=1e-15)
    np.testing.assert_array_equal(after.scores, before.scores)


def test_bias_update_by_hand_and_its_defining_property():
    # four samples, top-1, the bias pushes every row's choice: rows choose experts 0, 0, 0, 1.
    # load = (3, 1, 0, 0), mean 1: sign(mean - load) = (-1, 0, +1, +1); u = 0.1 -> bias (-0.1, 0, 0.1, 0.1).
    h = np.array([[3.0, 0, 0, 0], [2.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 3.0, 0, 0]])
    gate, x = gate_with_logits(h, top_k=1, normalize=False, bias_update=0.1)
    gate.forward(x)
    np.testing.assert_array_equal(gate.load, [3, 1, 0, 0])
    gate.end_step()
    np.testing.assert_allclose(gate.buffers["bias"], [-0.1, 0.0, 0.1, 0.1], rtol=0, atol=1e-17)
    gate.end_step()  # no forward since the last update: nothing to update from
    np.testing.assert_allclose(gate.buffers["bias"], [-0.1, 0.0, 0.1, 0.1], rtol=0, atol=1e-17)
    # the mean-centred variant subtracts the mean update 0.025: (-0.125, -0.025, 0.075, 0.075), sum 0
    centred, x = gate_with_logits(h, top_k=1, normalize=False, bias_update=0.1, bias_centered=True)
    centred.forward(x)
    centred.end_step()
    np.testing.assert_allclose(centred.buffers["bias"], [-0.125, -0.025, 0.075, 0.075], rtol=1e-15)
    # eval(): the bias stays fixed, whatever end_step is called
    gate.eval()
    gate.forward(x)
    gate.end_step()
    np.testing.assert_allclose(gate.buffers["bias"], [-0.1, 0.0, 0.1, 0.1], rtol=0, atol=1e-17)


def test_bias_updates_spread_a_collapsed_load():
    # a bias of 0.5 on expert 0 sends almost every sample there (MaxVio near E - 1 = 3); sign updates of
    # u = 0.01 bring the load back to near balance, without any gradient
    x = np.random.default_rng(0).standard_normal((256, 3))
    gate = ScoreGate(3, 4, top_k=1, normalize=False, bias_update=0.01, seed=0)
    gate.buffers["bias"][:] = [0.5, 0.0, 0.0, 0.0]
    maxvio = []
    for _ in range(60):
        gate.forward(x)
        maxvio.append(gate.load.max() / gate.load.mean() - 1)
        gate.end_step()
    assert maxvio[0] > 2.5 and max(maxvio[-10:]) < 0.3, f"MaxVio went {maxvio[0]:.2f} -> {maxvio[-1]:.2f}"


@pytest.mark.parametrize("kwargs", [
    dict(score="sigmoid", normalize=True, scale=2.5),
    dict(score="sigmoid", normalize=False),
    dict(score="softmax", normalize=True),
    dict(score="softmax", normalize=False, scale=16.0, n_groups=3, topk_groups=2, group_score="max"),
    dict(score="sigmoid", normalize=True, n_groups=3, topk_groups=2, jitter=0.1),
    dict(score="sigmoid", normalize=True, norm_eps=0.5),  # the eps in the backward's denominators
], ids=str)
def test_gradients(kwargs, rng):
    gate = ScoreGate(5, 6, top_k=2, seed=0, **kwargs)
    gate.params["W"] += 0.5 * rng.standard_normal(gate.params["W"].shape)
    gate.buffers["bias"][:] = 0.3 * rng.standard_normal(6)
    x = rng.standard_normal((7, 5))
    R, Rs, Rl = rng.standard_normal(14), rng.standard_normal((7, 6)), rng.standard_normal((7, 6))

    def loss(_):
        gate.rng = default_rng(3)  # the same jitter draw every evaluation
        r = gate.forward(x)
        np.testing.assert_array_equal(r.expert, expert0, err_msg="routing changed under perturbation")
        return float((R * r.weight).sum() + (Rs * r.scores).sum() + (Rl * r.logits).sum())

    gate.rng = default_rng(3)
    expert0 = gate.forward(x).expert.copy()
    dx = gate.backward({"weight": R, "scores": Rs, "logits": Rl})
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    assert rel_error(gate.grads["W"], numerical_gradient(loss, gate.params["W"])) < TOL


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_top1_renormalised_gives_the_router_no_task_gradient(score, rng):
    gate = ScoreGate(5, 4, top_k=1, score=score, normalize=True, seed=0)
    x = rng.standard_normal((6, 5))
    np.testing.assert_allclose(gate.forward(x).weight, 1.0, rtol=1e-15)  # s / (s + 1e-20) = 1
    gate.backward({"weight": rng.standard_normal(6)})
    assert np.abs(gate.grads["W"]).max() < 1e-15
    gate.normalize = False
    gate.forward(x)
    gate.backward({"weight": rng.standard_normal(6)})
    assert np.abs(gate.grads["W"]).max() > 1e-3


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(n_groups=4), "n_groups=4 must divide n_experts=6"),
    (dict(n_groups=3, topk_groups=4), "topk_groups=4 must be at most n_groups=3"),
    (dict(n_groups=3, topk_groups=1, top_k=3), "top_k=3 must be at most the 2 experts of the topk_groups=1"),
    (dict(scale=-1.0), r"scale=-1.0 must be a finite number > 0"),
    (dict(scale=float("inf")), r"scale=inf must be a finite number > 0"),
    (dict(bias_update=-0.1), r"bias_update=-0.1 must be a finite number >= 0"),
    (dict(bias_update=float("inf")), r"bias_update=inf must be a finite number >= 0"),
    (dict(norm_eps=float("inf")), r"norm_eps=inf must be a finite number >= 0"),
    (dict(jitter=1.0), r"jitter=1.0 must be a finite number in \[0, 1\)"),
    (dict(score="relu"), "score='relu' must be one of"),
    (dict(n_groups=6, topk_groups=3, group_score="top2"), "group_score='top2' needs groups of at least 2"),
])
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ScoreGate(5, 6, **kwargs)


def test_numeric_arguments_accept_any_real_number_type():
    # NumPy scalars (a config read through NumPy, say) were refused as "not a number" unless float64
    gate = ScoreGate(5, 6, scale=np.float32(2.5), bias_update=np.float32(0.5), jitter=np.float16(0.25))
    assert (gate.scale, gate.bias_update, gate.jitter) == (2.5, 0.5, 0.25)
    assert type(gate.scale) is float
