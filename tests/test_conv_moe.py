"""Convolutional mixtures of experts (numpy_moe/conv_moe.py), checked against Conv2d and by finite differences.

One layer: central differences at h = 1e-6 in float64 below 1e-7 (MATH.md §8). For top-k the check
asserts that no position's K-th and (K+1)-th gate logits are within 1e-4 of each other, so the routing
cannot change under a perturbation of 1e-6.
"""
import numpy as np
import pytest

from numpy_moe.conv_moe import ConvMoE1d, ConvMoE2d, col2im_1d, im2col_1d
from numpy_moe.gradcheck import check_module
from numpy_moe.image_layers import Conv2d

TOL = 1e-7


def randomise(layer, rng):
    for _, p in layer.named_parameters():
        p[...] = rng.standard_normal(p.shape)
    return layer


def assert_no_near_ties(layer, x):
    g_logits = layer.params["Wg"].reshape(layer.n_experts, -1) @ layer._to_cols(x) + layer.params["bg"][:, None]
    s = -np.sort(-g_logits, axis=0)
    assert (s[layer.top_k - 1] - s[layer.top_k]).min() > 1e-4


@pytest.mark.parametrize("top_k", [None, 2])
@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 0)])
def test_conv_moe_2d_gradcheck(top_k, stride, padding, rng):
    layer = randomise(ConvMoE2d(2, 3, 3, n_experts=4, top_k=top_k, stride=stride, padding=padding, seed=0), rng)
    x = rng.standard_normal((2, 2, 5, 5))
    if top_k:
        assert_no_near_ties(layer, x)
    assert max(check_module(layer, x, tol=TOL).values()) < TOL


@pytest.mark.parametrize("top_k", [None, 1, 3])
def test_conv_moe_1d_gradcheck(top_k, rng):
    layer = randomise(ConvMoE1d(3, 2, 3, n_experts=3, top_k=top_k, stride=1, padding=1, seed=0), rng)
    x = rng.standard_normal((2, 3, 7))
    if top_k and top_k < 3:
        assert_no_near_ties(layer, x)
    assert max(check_module(layer, x, tol=TOL).values()) < TOL


def test_one_expert_is_a_conv2d(rng):
    conv = Conv2d(2, 4, 3, stride=2, padding=1, seed=0)
    moe = ConvMoE2d(2, 4, 3, n_experts=1, stride=2, padding=1, seed=0)
    moe.params["W"][0], moe.params["b"][0] = conv.params["W"], rng.standard_normal(4)
    conv.params["b"][...] = moe.params["b"][0]
    x = rng.standard_normal((3, 2, 6, 6))
    np.testing.assert_allclose(moe.forward(x), conv.forward(x), rtol=1e-12, atol=1e-12)


def test_output_is_the_per_position_blend_of_the_expert_convolutions(rng):
    moe = randomise(ConvMoE2d(2, 3, 3, n_experts=3, padding=1, seed=0), rng)
    x = rng.standard_normal((2, 2, 4, 4))
    g = moe.gate(x)  # (N, E, 4, 4)
    np.testing.assert_allclose(g.sum(axis=1), 1, rtol=1e-12)
    expected = 0
    for e in range(3):
        conv = Conv2d(2, 3, 3, padding=1)
        conv.params["W"][...], conv.params["b"][...] = moe.params["W"][e], moe.params["b"][e]
        expected = expected + g[:, e:e + 1] * conv.forward(x)
    np.testing.assert_allclose(moe.forward(x), expected, rtol=1e-12)


def test_top_k_keeps_k_experts_per_position_and_starts_from_the_first_k(rng):
    moe = ConvMoE2d(1, 2, 3, n_experts=4, top_k=2, padding=1, seed=0)
    g = moe.gate(rng.standard_normal((2, 1, 4, 4)))
    np.testing.assert_allclose(g[:, :2], 0.5)  # zero gate: a tie, broken toward the lower index
    assert (g[:, 2:] == 0).all()
    randomise(moe, rng)
    g = moe.gate(rng.standard_normal((2, 1, 4, 4)))
    assert ((g > 0).sum(axis=1) == 2).all()


def test_im2col_1d_and_its_adjoint(rng):
    x, k = rng.standard_normal((2, 3, 9)), 3
    cols = im2col_1d(x, k, stride=2, padding=1)
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1)))
    assert cols[1, 2, 0, 3] == xp[0, 1, 3 * 2 + 2]
    c = rng.standard_normal(cols.shape)  # <im2col x, c> = <x, col2im c>
    assert (cols * c).sum() == pytest.approx((x * col2im_1d(c, x.shape, k, 2, 1)).sum(), rel=1e-12)


@pytest.mark.parametrize("kwargs,error,match", [({"top_k": 5}, ValueError, "top_k=5"),
                                                ({"n_experts": 0}, ValueError, "n_experts=0")])
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        ConvMoE2d(1, 2, 3, **{"n_experts": 4, **kwargs})


def test_bad_inputs_are_named(rng):
    with pytest.raises(ValueError, match="expected sequences"):
        ConvMoE1d(2, 2, 3).forward(rng.standard_normal((2, 3, 5)))
    with pytest.raises(ValueError, match="channels"):
        ConvMoE2d(2, 2, 3).forward(rng.standard_normal((2, 3, 5, 5)))


def test_float32_inputs_that_overflow_are_refused():
    # before: 1e39 became inf in the float32 cast and the output NaN, without a word
    for layer, shape in ((ConvMoE2d(1, 2, 1, n_experts=2, dtype="float32"), (1, 1, 2, 2)),
                         (ConvMoE1d(1, 2, 1, n_experts=2, dtype="float32"), (1, 1, 2))):
        with pytest.raises(ValueError, match="overflow the layer's dtype float32"):
            layer.forward(np.full(shape, 1e39))


def test_an_empty_batch_gives_empty_outputs_and_zero_gradients():
    # N = 0 (as torch's convolutions): empty outputs, zero gradients; before, a reshape of size 0 failed
    for layer, shape in ((ConvMoE2d(2, 3, 3, n_experts=2, top_k=1, padding=1, seed=0), (0, 2, 4, 4)),
                         (ConvMoE1d(2, 3, 3, n_experts=2, stride=2, seed=0), (0, 2, 7))):
        y = layer.forward(np.zeros(shape))
        assert y.shape == (0, 3) + ((4, 4) if len(shape) == 4 else (3,))
        assert layer.backward(np.zeros(y.shape)).shape == shape
        assert all(g.shape == layer.params[k].shape and not g.any() for k, g in layer.grads.items())


def test_reading_the_gates_between_forward_and_backward_leaves_the_backward_alone(rng):
    # gate(x) ran a forward of its own: before, gate(x2) after forward(x) made backward return x2's gradients
    layer = ConvMoE2d(2, 3, 3, n_experts=3, padding=1, seed=0)
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    x, x2 = rng.standard_normal((2, 2, 4, 4)), rng.standard_normal((1, 2, 5, 5))
    dy = rng.standard_normal((2, 3, 4, 4))
    layer.forward(x)
    dx = layer.backward(dy)
    grads = {k: g.copy() for k, g in layer.grads.items()}
    layer.forward(x)
    g2 = layer.gate(x2)
    assert g2.shape == (1, 3, 5, 5) and np.allclose(g2.sum(axis=1), 1)
    np.testing.assert_array_equal(layer.backward(dy), dx)
    for k, g in layer.grads.items():
        np.testing.assert_array_equal(g, grads[k])
