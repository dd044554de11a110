"""SoftMoE (Puigcerver et al. 2023, MATH.md §10.9): gradients of the input and every parameter in float64, the
dispatch and combine weights against a hand computation, groups independent and permutation-equivariant,
bad input."""
import numpy as np
import pytest

from numpy_moe.experts import ExpertBank
from numpy_moe.gradcheck import check_module
from numpy_moe.soft_moe import SoftMoE

TOL = 1e-6  # a layer with its experts, float64, h = 1e-6 (MATH.md §8); measured errors are <= 6e-9 (MATH.md §10.12)

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
