"""Routers that do not pick the top k (issue 14, MATH.md §10.8-10.11): Soft MoE, BASE (exact balanced
assignment), Sinkhorn (S-BASE) and hash routing. Gradients in float64 against finite differences with the
discrete choice asserted unchanged, BASE against brute force, Sinkhorn's marginals and order
independence, the hash's determinism across processes and the balanced hash's loads, and the bad input
each must refuse."""
import subprocess
import sys
import warnings
from itertools import product

import numpy as np
import pytest
from scipy.special import expit

from numpy_moe import io
from numpy_moe.experts import ExpertBank
from numpy_moe.gates import BaseGate, HashGate, SinkhornGate, TopKGate, balanced_assignment, sinkhorn
from numpy_moe.gradcheck import check_module
from numpy_moe.moe import MoE
from numpy_moe.soft_moe import SoftMoE

TOL = 1e-6  # a layer with its experts, float64, h = 1e-6 (MATH.md §8); measured errors are <= 2e-8


def check_fixed_choice(layer, x, **forward_kwargs):
    """Gradient check of ``layer`` with the discrete routing asserted unchanged at every perturbed x."""
    layer.forward(x, **forward_kwargs)
    expert = layer.routing.expert.copy()

    def forward(z):
        y = layer.forward(z, **forward_kwargs)
        assert np.array_equal(layer.routing.expert, expert), "a finite-difference step changed the routing"
        return y

    return check_module(layer, x, forward=forward, tol=TOL)


# ---------------------------------------------------------------- Soft MoE

@pytest.mark.parametrize("hidden, group_size, slots", [(None, 6, 1), (7, 4, 2), (7, None, 3)])
def test_soft_moe_gradients_input_and_every_parameter(hidden, group_size, slots, rng):
    layer = SoftMoE(5, 3, 4, slots=slots, group_size=group_size, hidden=hidden, seed=0)
    layer.params["scale"][:] = 1.7  # away from its initial 1, so a wrong dscale cannot hide
    errors = check_module(layer, rng.standard_normal((12, 5)), tol=TOL)
    assert {"input", "phi", "scale"} <= set(errors)


def test_soft_moe_weights_are_the_two_softmaxes_of_normalised_logits(rng):
    layer = SoftMoE(5, 3, 2, slots=3, group_size=4, seed=0)
    x = rng.standard_normal((8, 5))
    y = layer.forward(x)
    r = layer.routing
    assert r.dispatch.shape == (2, 4, 6)
    np.testing.assert_allclose(r.dispatch.sum(axis=1), 1, rtol=1e-12)  # each slot: a convex mix of tokens
    np.testing.assert_allclose(r.combine.sum(axis=2), 1, rtol=1e-12)  # each token: a convex mix of slots
    xh = x / np.sqrt((x ** 2).sum(axis=1, keepdims=True) + 1e-6)
    phi = layer.params["phi"]
    ph = phi / np.sqrt((phi ** 2).sum(axis=0, keepdims=True) + 1e-6)
    np.testing.assert_allclose(r.logits.reshape(8, 6), xh @ ph, rtol=1e-12)
    # by hand for group 0: slots take D^T X, expert e runs on its S slots, tokens take C Y
    slots_in = r.dispatch[0].T @ x[:4]  # (6, 5)
    W, b = layer.experts.params["W"], layer.experts.params["b"]
    slots_out = np.stack([slots_in[j] @ W[j // 3] + b[j // 3] for j in range(6)])
    np.testing.assert_allclose(y[:4], r.combine[0] @ slots_out, rtol=1e-12)
    assert layer.diagnostics["samples_per_expert"].tolist() == [6, 6] and layer.diagnostics["dropped"] == 0


def test_soft_moe_groups_are_independent_and_permutation_equivariant(rng):
    layer = SoftMoE(5, 3, 3, slots=2, group_size=4, hidden=6, seed=0)
    x = rng.standard_normal((8, 5))
    y = layer.forward(x)
    x2 = x.copy()
    x2[4:] = rng.standard_normal((4, 5))
    np.testing.assert_array_equal(layer.forward(x2)[:4], y[:4])  # group 1 does not reach group 0
    perm = np.array([2, 0, 3, 1, 4, 5, 6, 7])
    np.testing.assert_allclose(layer.forward(x[perm]), y[perm], rtol=1e-12, atol=1e-14)


def test_soft_moe_bad_input():
    with pytest.raises(ValueError, match="slots"):
        SoftMoE(4, 2, 3, slots=0)
    layer = SoftMoE(4, 2, 3, group_size=5, seed=0)
    with pytest.raises(ValueError, match="group_size=5 is larger than the batch of N=3"):
        layer.forward(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="does not split into groups of group_size=5"):
        layer.forward(np.zeros((7, 4)))
    with pytest.raises(ValueError, match="forward pass first"):
        SoftMoE(4, 2, 3, seed=0).backward(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="expected 4 -> 2 with 3"):
        SoftMoE(4, 2, 3, experts=ExpertBank(2, 4, 2))


# ---------------------------------------------------------------- BASE

def brute_force_balanced(scores):
    """The largest total score over every assignment whose loads are floor(N/E) or ceil(N/E)."""
    N, E = scores.shape
    f, r = divmod(N, E)
    best = -np.inf
    for a in product(range(E), repeat=N):
        load = np.bincount(a, minlength=E)
        if load.min() >= f and load.max() <= f + (r > 0):
            best = max(best, scores[np.arange(N), a].sum())
    return best


@pytest.mark.parametrize("N, E", [(4, 2), (6, 3), (6, 2), (5, 2), (7, 3), (2, 3)])
def test_balanced_assignment_is_the_brute_force_optimum_and_balanced(N, E, rng):
    for _ in range(5):
        scores = rng.standard_normal((N, E))
        a = balanced_assignment(scores)
        load = np.bincount(a, minlength=E)
        assert load.max() - load.min() <= 1 and load.min() == N // E  # floor or ceil; exact when E | N
        assert np.isclose(scores[np.arange(N), a].sum(), brute_force_balanced(scores), rtol=1e-12)


def test_balanced_assignment_moves_tokens_off_a_crowded_expert_and_breaks_ties_deterministically():
    # every token prefers expert 0; the balanced assignment must still give each expert 2 tokens,
    # the two with the strongest relative claim on expert 0 staying there
    scores = np.array([[5.0, 0.0, 0.0], [4.0, 3.9, 0.0], [4.0, 0.0, 3.9], [9.0, 0.0, 0.0], [1.0, 0.5, 0.0],
                       [2.0, 0.0, 1.5]])
    a = balanced_assignment(scores)
    assert np.bincount(a, minlength=3).tolist() == [2, 2, 2]
    assert a[0] == 0 and a[3] == 0
    ties = np.zeros((6, 3))
    first = balanced_assignment(ties)
    assert np.bincount(first, minlength=3).tolist() == [2, 2, 2]
    assert all(np.array_equal(balanced_assignment(ties), first) for _ in range(3))


def test_base_gate_balanced_in_training_greedy_in_eval(rng):
    gate = BaseGate(5, 4, seed=0)
    x = rng.standard_normal((16, 5)) + np.array([3.0, 0, 0, 0, 0])  # skewed: greedy crowds some experts
    r = gate.forward(x)
    assert np.bincount(r.expert, minlength=4).tolist() == [4, 4, 4, 4]
    np.testing.assert_allclose(r.weight, expit(r.logits[np.arange(16), r.expert]), rtol=1e-15)
    gate.eval()
    r = gate.forward(x)
    assert np.array_equal(r.expert, np.argmax(x @ gate.params["W"], axis=1))


def test_base_layer_gradients_with_the_residual(rng):
    layer = MoE(gate=BaseGate(5, 4, seed=0), experts=ExpertBank(4, 5, 5, 7, seed=1), residual=True)
    x = rng.standard_normal((12, 5))
    check_fixed_choice(layer, x)
    layer.eval()
    check_fixed_choice(layer, x)
    # the residual: output minus x is the weighted expert output, sigmoid(h) E_e(x)
    y = layer.forward(x)
    r = layer.routing
    e = r.expert
    W, b, W2, b2 = (layer.experts.params[k] for k in ("W1", "b1", "W2", "b2"))
    expert_out = np.stack([np.maximum(x[n] @ W[e[n]] + b[e[n]], 0) @ W2[e[n]] + b2[e[n]] for n in range(12)])
    np.testing.assert_allclose(y - x, r.weight[:, None] * expert_out, rtol=1e-12, atol=1e-14)


def test_base_bad_input():
    with pytest.raises(ValueError, match="residual=True .* out_features \\(3\\) must equal in_features \\(5\\)"):
        MoE(gate=BaseGate(5, 4), experts=ExpertBank(4, 5, 3), residual=True)
    with pytest.raises(ValueError, match="finite"):
        balanced_assignment(np.array([[0.0, np.nan]]))


# ---------------------------------------------------------------- Sinkhorn

def test_sinkhorn_reaches_its_marginals_within_the_stated_tolerance(rng):
    for N, E, tol in [(64, 4, 1e-4), (50, 8, 1e-4), (30, 3, 1e-6)]:
        logits = 2 * rng.standard_normal((N, E)) + rng.standard_normal(E)
        res = sinkhorn(logits, tol=tol, max_iter=20000)
        assert res.converged and res.iterations >= 1
        np.testing.assert_allclose(res.plan.sum(axis=0) * E, 1, rtol=1e-6)
        bound = E * tol / (res.col_scale.min() - E * tol)
        assert np.abs(res.plan.sum(axis=1) * N - 1).max() <= bound


def test_sinkhorn_plan_is_megatrons_and_independent_of_token_order_and_of_a_shift(rng):
    logits = rng.standard_normal((40, 5))
    plan = sinkhorn(logits).plan
    # Megatron-core's loop on exp(logits) itself (no shift), written out here
    c = np.exp(logits)
    d0, d1, err = np.ones(40), np.ones(5), 1e9
    while err > 1e-4:
        d0 = (1 / 40) / (c @ d1 + 1e-8)
        d1_new = (1 / 5) / (d0 @ c + 1e-8)
        err, d1 = np.abs(d1_new - d1).mean(), d1_new
    np.testing.assert_allclose(plan, d0[:, None] * c * d1, rtol=1e-6)
    np.testing.assert_array_equal(sinkhorn(logits).plan, plan)  # deterministic
    big = sinkhorn(logits + 1000)  # exp(1000) overflows: the shift keeps it finite and balanced
    assert np.isfinite(big.plan).all() and big.converged
    np.testing.assert_allclose(big.plan, plan, rtol=1e-3)
    perm = rng.permutation(40)
    np.testing.assert_allclose(sinkhorn(logits[perm]).plan, plan[perm], rtol=1e-10)
    gate = SinkhornGate(5, 5, top_k=2, seed=0)
    x = rng.standard_normal((40, 5))
    e = gate.forward(x).expert.reshape(40, 2)
    assert np.array_equal(gate.forward(x[perm]).expert.reshape(40, 2), e[perm])


def test_sinkhorn_balances_a_skewed_router_and_weights_with_the_unbalanced_scores(rng):
    gate = SinkhornGate(5, 4, top_k=1, seed=0)
    gate.params["W"][0] = [4.0, 0.0, 0.0, 0.0]  # feature 0 pushes every sample towards expert 0
    x = rng.standard_normal((200, 5)) + np.array([1.0, 0, 0, 0, 0])
    r = gate.forward(x)
    balanced = np.bincount(r.expert, minlength=4)
    greedy = np.bincount(np.argmax(r.logits, axis=1), minlength=4)
    assert balanced.max() / 50 < 0.8 * greedy.max() / 50
    np.testing.assert_allclose(r.weight, expit(r.logits[np.arange(200), r.expert]), rtol=1e-15)
    gate.eval()
    assert np.array_equal(gate.forward(x).expert, np.argmax(r.logits, axis=1))


@pytest.mark.parametrize("top_k", [1, 2])
def test_sinkhorn_layer_gradients(top_k, rng):
    layer = MoE(gate=SinkhornGate(5, 4, top_k=top_k, seed=0), experts=ExpertBank(4, 5, 3, 7, seed=1))
    check_fixed_choice(layer, rng.standard_normal((12, 5)))


def test_sinkhorn_non_convergence_warns_and_routes_on_the_last_iterate(rng):
    logits = 3 * rng.standard_normal((20, 4))
    with pytest.warns(RuntimeWarning, match="did not converge in max_iter=2"):
        res = sinkhorn(logits, tol=1e-12, max_iter=2)
    assert not res.converged and res.iterations == 2
    gate = SinkhornGate(4, 4, tol=1e-12, max_iter=2, seed=0)
    with pytest.warns(RuntimeWarning):
        r = gate.forward(rng.standard_normal((20, 4)))
    assert gate.sinkhorn_converged is False and r.expert.shape == (20,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gate.eval()
        gate.forward(rng.standard_normal((20, 4)))  # evaluation runs no Sinkhorn: nothing to warn about


def test_sinkhorn_bad_arguments():
    for kwargs, match in [({"tol": 0}, "tol=0"), ({"max_iter": 0}, "max_iter"), ({"top_k": 5}, "top_k=5")]:
        with pytest.raises(ValueError, match=match):
            SinkhornGate(4, 4, **kwargs)


# ---------------------------------------------------------------- hash

def test_hash_gate_routes_each_key_to_its_table_entry_with_weight_one(rng):
    gate = HashGate(5, 4, 10, seed=0)
    keys = rng.integers(0, 10, 30)
    r = gate.forward(rng.standard_normal((30, 5)), keys=keys)
    assert np.array_equal(r.expert, gate.buffers["table"][keys].astype(int))
    assert np.all(r.weight == 1) and gate.n_parameters() == 0
    assert set(gate.buffers["table"].tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_hash_table_is_the_same_in_another_process():
    code = ("from numpy_moe.gates import HashGate; "
            "print(HashGate(3, 8, 50, seed=7).buffers['table'].astype(int).tolist())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=".")
    assert other.stdout.strip() == str(HashGate(3, 8, 50, seed=7).buffers["table"].astype(int).tolist())


def test_balanced_hash_by_hand_and_its_load_bound(rng, tmp_path):
    # counts 5, 3, 3, 2, 1 over 2 experts: 0 -> e0 (5), 1 -> e1 (3), 2 -> e1 (6), 3 -> e0 (7), 4 -> e1 (7)
    keys = [0] * 5 + [1] * 3 + [2] * 3 + [3] * 2 + [4]
    gate = HashGate(3, 2, 5, kind="balanced").balance(keys)
    assert gate.buffers["table"].tolist() == [0, 1, 1, 0, 1]
    # every key once: within one token of equal
    distinct = rng.permutation(23)
    g = HashGate(3, 4, 23, kind="balanced").balance(distinct)
    load = np.bincount(g.forward(np.zeros((23, 3)), keys=distinct).expert, minlength=4)
    assert load.max() - load.min() <= 1
    # Zipf-like counts: the spread is at most the largest key count (greedy LPT), far below the random hash's
    zipf = rng.choice(40, size=2000, p=1 / np.arange(1, 41) / (1 / np.arange(1, 41)).sum())
    g = HashGate(3, 8, 40, kind="balanced").balance(zipf)
    load = np.bincount(g.forward(np.zeros((2000, 3)), keys=zipf).expert, minlength=8)
    assert load.max() - load.min() <= np.bincount(zipf).max()
    loaded = io.load(io.save(g, tmp_path / "hash.npz"))
    assert np.array_equal(loaded.buffers["table"], g.buffers["table"])


def test_hash_layer_gradients_reach_the_experts_only(rng):
    keys = rng.integers(0, 6, 12)
    layer = MoE(gate=HashGate(5, 3, 6, seed=0), experts=ExpertBank(3, 5, 2, 4, seed=1))
    errors = check_fixed_choice(layer, rng.standard_normal((12, 5)), keys=keys)
    assert not any(name.startswith("gate.") for name in errors)


def test_hash_bad_input(rng):
    gate = HashGate(3, 2, 5)
    x = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"keys range over \[0, 5\]; expected keys in \[0, n_keys=5\)"):
        gate.forward(x, keys=[0, 5, 1])
    with pytest.raises(ValueError, match=r"keys range over \[-1"):
        gate.forward(x, keys=[0, -1, 1])
    with pytest.raises(TypeError, match="expected integers"):
        gate.forward(x, keys=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        gate.forward(x, keys=[0, 1])
    with pytest.raises(ValueError, match="needs the samples' keys"):
        MoE(gate=HashGate(3, 2, 5), experts=ExpertBank(2, 3, 2)).forward(x)
    with pytest.raises(ValueError, match="keys are read by a HashGate only"):
        MoE(gate=TopKGate(3, 2, 1), experts=ExpertBank(2, 3, 2)).forward(x, keys=[0, 1, 2])
    with pytest.raises(ValueError, match="keys are read by a HashGate only"):
        MoE(3, 2, 2, hidden=4).forward(x, keys=[0, 1, 2])  # a dense layer too
    with pytest.raises(ValueError, match="kind='random'"):
        gate.balance([0, 1])
    with pytest.raises(ValueError, match="kind='md5'"):
        HashGate(3, 2, 5, kind="md5")


@pytest.mark.parametrize("make", [lambda: BaseGate(5, 4, seed=0), lambda: SinkhornGate(5, 4, top_k=2, seed=0)])
def test_balancing_gates_ignore_the_padding(make, rng):
    """With a mask the balanced choice is made over the counted tokens alone: adding padding rows leaves
    the counted tokens' experts as they were without them."""
    gate = make()
    x = rng.standard_normal((12, 5))
    alone = gate.forward(x).expert.reshape(12, -1)
    padded = np.concatenate([x[:5], 3 * rng.standard_normal((4, 5)), x[5:]])
    mask = np.ones(16, dtype=bool)
    mask[5:9] = False
    with_padding = gate.forward(padded, mask=mask).expert.reshape(16, -1)
    assert np.array_equal(with_padding[mask], alone)
    layer = MoE(gate=make(), experts=ExpertBank(4, 5, 3, seed=1))
    layer.forward(padded, mask=mask)
    if isinstance(layer.gate, BaseGate):
        assert layer.diagnostics["samples_per_expert"].tolist() == [3, 3, 3, 3]
