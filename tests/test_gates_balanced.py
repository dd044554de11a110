"""BaseGate and balanced_assignment (BASE layers, Lewis et al. 2021, MATH.md §10.10): the assignment against
brute force over all assignments (E dividing N or not), deterministic ties, greedy evaluation, gradients with
the residual and the assignment held fixed, padding excluded from the balancing, bad input."""
from itertools import product

import numpy as np
import pytest
from scipy.special import expit

from numpy_moe.experts import ExpertBank
from numpy_moe.gates import BaseGate, SinkhornGate, balanced_assignment
from numpy_moe.moe import MoE


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
    # E not dividing N: 7 tokens on 3 experts load (3, 2, 2), never (3, 3, 1), which scores more here
    crowded = balanced_assignment(np.tile([3.0, 2.0, 0.0], (7, 1)))
    assert np.bincount(crowded, minlength=3).tolist() == [3, 2, 2]
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


def test_base_layer_gradients_with_the_residual(rng, check_fixed_choice):
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
