"""Tests for numpy_moe.image_layers: agreement with direct loops, finite-difference gradients, errors.

Gradient checks are float64 with h = 1e-6 and pass below 1e-7 (MATH.md §8, single layers).
"""
import numpy as np
import pytest

from numpy_moe.gradcheck import check_module
from numpy_moe.image_layers import (GELU, Conv2d, Flatten, LayerNorm, MaxPool2d, Unflatten, col2im, im2col, im2row,
                                    row2im)

TOL = 1e-7


def conv_loop(x, W, b, stride, padding):
    """Direct convolution: one dot product per (sample, filter, output pixel)."""
    N, C, H, Wd = x.shape
    Fo, _, k, _ = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (Wd + 2 * padding - k) // stride + 1
    y = np.zeros((N, Fo, Ho, Wo))
    for n in range(N):
        for f in range(Fo):
            for a in range(Ho):
                for c in range(Wo):
                    y[n, f, a, c] = (xp[n, :, a * stride:a * stride + k, c * stride:c * stride + k] * W[f]).sum() + b[f]
    return y


def conv_loop_backward(x, W, dy, stride, padding):
    """Gradients of sum(dy * conv_loop(x)) by the same loops: each output pixel adds its share."""
    N, C, H, Wd = x.shape
    Fo, _, k, _ = W.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    dxp, dW = np.zeros_like(xp), np.zeros_like(W)
    for n in range(N):
        for f in range(Fo):
            for a in range(dy.shape[2]):
                for c in range(dy.shape[3]):
                    win = (n, slice(None), slice(a * stride, a * stride + k), slice(c * stride, c * stride + k))
                    dW[f] += dy[n, f, a, c] * xp[win]
                    dxp[win] += dy[n, f, a, c] * W[f]
    return dxp[:, :, padding:padding + H, padding:padding + Wd], dW, dy.sum(axis=(0, 2, 3))


def pool_loop(x, k, stride):
    """Direct max-pool and, per output, the flat position of its window's maximum (first on ties)."""
    N, C, H, W = x.shape
    Ho, Wo = (H - k) // stride + 1, (W - k) // stride + 1
    y, where = np.zeros((N, C, Ho, Wo)), np.zeros((N, C, Ho, Wo, 2), dtype=int)
    for n in range(N):
        for c in range(C):
            for a in range(Ho):
                for b in range(Wo):
                    win = x[n, c, a * stride:a * stride + k, b * stride:b * stride + k]
                    i, j = np.unravel_index(win.argmax(), win.shape)
                    y[n, c, a, b] = win[i, j]
                    where[n, c, a, b] = (a * stride + i, b * stride + j)
    return y, where


def pool_loop_backward(x, dy, where):
    dx = np.zeros_like(x)
    for n, c, a, b in np.ndindex(*dy.shape):
        i, j = where[n, c, a, b]
        dx[n, c, i, j] += dy[n, c, a, b]
    return dx


def window_gap(x, k, stride):
    """Smallest gap between the largest and second-largest value over all pooling windows."""
    cols = im2col(x, k, stride)
    C = x.shape[1]
    top2 = np.sort(cols.reshape(C, k * k, -1), axis=1)[:, -2:]
    return float((top2[:, 1] - top2[:, 0]).min())


CONV_CASES = [  # (C, F, k, stride, padding, H, W)
    (1, 2, 3, 1, 0, 5, 5),
    (2, 3, 3, 1, 1, 5, 4),
    (3, 2, 3, 2, 1, 7, 6),
    (2, 2, 2, 2, 0, 6, 6),
    (2, 1, 1, 1, 0, 3, 3),
    (1, 2, 3, 3, 2, 5, 5),
]


@pytest.mark.parametrize("C,F,k,stride,padding,H,W", CONV_CASES)
def test_conv_matches_direct_loops(C, F, k, stride, padding, H, W):
    rng = np.random.default_rng(0)
    conv = Conv2d(C, F, k, stride=stride, padding=padding, seed=1)
    conv.params["b"][:] = rng.standard_normal(F)
    x = rng.standard_normal((2, C, H, W))
    y = conv.forward(x)
    ref = conv_loop(x, conv.params["W"], conv.params["b"], stride, padding)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = conv.backward(dy)
    dx_ref, dW_ref, db_ref = conv_loop_backward(x, conv.params["W"], dy, stride, padding)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["W"], dW_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv.grads["b"], db_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C,F,k,stride,padding,H,W", CONV_CASES)
def test_conv_gradcheck(C, F, k, stride, padding, H, W):
    conv = Conv2d(C, F, k, stride=stride, padding=padding, seed=2)
    conv.params["b"][:] = np.random.default_rng(3).standard_normal(F)
    x = np.random.default_rng(4).standard_normal((2, C, H, W))
    errors = check_module(conv, x, tol=TOL)
    assert set(errors) == {"input", "W", "b"}


@pytest.mark.parametrize("copy, add_back, shape", [(im2col, col2im, (2, 3, 7, 6)),  # NCHW
                                                  (im2row, row2im, (2, 7, 6, 3))])  # NHWC
def test_window_copies_and_their_adding_back_are_adjoint(copy, add_back, shape):
    # <copy(x), c> = <x, add_back(c)> for every x, c: col2im / row2im are the transposes of im2col / im2row.
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape)
    cols = copy(x, 3, 2, 1)
    c = rng.standard_normal(cols.shape)
    assert abs((cols * c).sum() - (x * add_back(c, x.shape, 3, 2, 1)).sum()) < 1e-10


@pytest.mark.parametrize("k,stride,H,W", [(2, 2, 4, 4), (2, 2, 5, 7), (3, 2, 7, 7), (3, 1, 5, 4), (2, 1, 3, 3)])
def test_maxpool_matches_direct_loops(k, stride, H, W):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, H, W))
    pool = MaxPool2d(k, stride)
    y = pool.forward(x)
    ref, where = pool_loop(x, k, stride)
    np.testing.assert_array_equal(y, ref)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(pool.backward(dy), pool_loop_backward(x, dy, where), rtol=1e-14, atol=1e-14)


def test_maxpool_tie_goes_to_first_maximum():
    x = np.zeros((1, 1, 2, 2))
    pool = MaxPool2d(2)
    pool.forward(x)
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 1)))[0, 0], [[1, 0], [0, 0]])


@pytest.mark.parametrize("k,stride", [(2, 2), (3, 2), (2, 1)])
def test_maxpool_gradcheck(k, stride):
    x = np.random.default_rng(7).standard_normal((2, 2, 6, 5))
    h = 1e-6
    assert window_gap(x, k, stride) > 10 * h  # the argmax cannot move under a perturbation of h
    check_module(MaxPool2d(k, stride), x, h=h, tol=TOL)


def test_flatten_roundtrip_and_gradcheck():
    x = np.random.default_rng(8).standard_normal((3, 2, 2, 2))
    flat = Flatten()
    y = flat.forward(x)
    assert y.shape == (3, 8)
    np.testing.assert_array_equal(y[1], x[1].ravel())
    check_module(flat, x, tol=TOL)


def test_unflatten_inverts_flatten_and_gradcheck():
    x = np.random.default_rng(8).standard_normal((3, 2, 2, 2))
    unflat = Unflatten((2, 2, 2))
    np.testing.assert_array_equal(unflat.forward(Flatten().forward(x)), x)
    check_module(unflat, x.reshape(3, -1), tol=TOL)
    with pytest.raises(ValueError, match=r"expected \(N, 8\) to unflatten to \(N, 2, 2, 2\)"):
        unflat.forward(np.zeros((3, 7)))


def test_layernorm_normalises_and_gradcheck():
    rng = np.random.default_rng(9)
    ln = LayerNorm(5)
    x = 3 + 2 * rng.standard_normal((3, 4, 5))
    y = ln.forward(x)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-12)
    v = x.var(axis=-1)
    np.testing.assert_allclose(y.var(axis=-1), v / (v + 1e-5), rtol=1e-12)  # unit variance up to eps
    ln.params["gamma"][:] = rng.standard_normal(5)
    ln.params["beta"][:] = rng.standard_normal(5)
    errors = check_module(ln, x, tol=TOL)
    assert set(errors) == {"input", "gamma", "beta"}


def test_gelu_values_and_gradcheck():
    # GELU(x) = x Φ(x): Φ(1) = 0.8413447460685429, Φ(-1) = 1 - Φ(1).
    gelu = GELU()
    np.testing.assert_allclose(gelu.forward(np.array([[-1.0, 0.0, 1.0]])),
                               [[-0.15865525393145707, 0.0, 0.8413447460685429]], rtol=1e-12)
    check_module(gelu, np.random.default_rng(10).standard_normal((4, 6)) * 2, tol=TOL)


def test_float32_conv_agrees_with_float64():
    x = np.random.default_rng(11).standard_normal((2, 3, 6, 6))
    y64 = Conv2d(3, 4, 3, padding=1, seed=0).forward(x)
    conv32 = Conv2d(3, 4, 3, padding=1, seed=0, dtype="float32")
    y32 = conv32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)


def test_conv_seed_reproducible():
    a, b = Conv2d(2, 3, 3, seed=4), Conv2d(2, 3, 3, seed=4)
    np.testing.assert_array_equal(a.params["W"], b.params["W"])
    assert not np.array_equal(a.params["W"], Conv2d(2, 3, 3, seed=5).params["W"])


@pytest.mark.parametrize("x,err,match", [
    (np.zeros((2, 3, 4)), ValueError, "4-D"),
    (np.zeros((2, 2, 4, 4)), ValueError, "2 channels"),
    (np.zeros((2, 3, 4, 4), dtype=int), TypeError, "floating"),
    (np.full((1, 3, 4, 4), np.nan), ValueError, "NaN"),
    (np.zeros((1, 3, 2, 2)), ValueError, "2x2"),
])
def test_conv_input_errors(x, err, match):
    with pytest.raises(err, match=match):
        Conv2d(3, 2, 3).forward(x)


def test_float32_layer_refuses_inputs_that_overflow_float32():
    # 1e39 is finite in float64 but inf in float32: before, the cast made an inf (and -inf output) silently
    with pytest.raises(ValueError, match="overflow the layer's dtype float32"):
        Conv2d(1, 1, 1, dtype="float32").forward(np.full((1, 1, 2, 2), 1e39))
    with pytest.raises(ValueError, match="NaN or inf"):
        Conv2d(1, 1, 1, dtype="float32").forward(np.full((1, 1, 2, 2), np.inf))


def test_an_empty_batch_gives_empty_outputs_and_zero_gradients():
    # torch's conv2d, max_pool2d and flatten take N = 0; before, Conv2d and Flatten failed in a reshape
    x = np.zeros((0, 2, 5, 5))
    for layer in (Conv2d(2, 3, 3, padding=1, seed=0), Conv2d(2, 3, 2, stride=2, seed=0), MaxPool2d(2), Flatten()):
        y = layer.forward(x)
        assert y.shape[0] == 0
        dx = layer.backward(np.zeros(y.shape))
        assert dx.shape == x.shape
        assert all(g.shape == layer.params[k].shape and not g.any() for k, g in layer.grads.items())
    assert Conv2d(2, 3, 3, padding=1).forward(x).shape == (0, 3, 5, 5)
    assert Flatten().forward(x).shape == (0, 50)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(kernel_size=0), ValueError, "kernel_size=0"),
    (dict(stride=0), ValueError, "stride=0"),
    (dict(padding=-1), ValueError, "padding=-1"),
    (dict(kernel_size=2.5), TypeError, "kernel_size=2.5"),
])
def test_conv_argument_errors(kwargs, err, match):
    args = dict(in_channels=1, out_channels=1, kernel_size=3) | kwargs
    with pytest.raises(err, match=match):
        Conv2d(**args)


def test_pool_and_layernorm_errors():
    with pytest.raises(ValueError, match="kernel_size=0"):
        MaxPool2d(0)
    with pytest.raises(ValueError, match="1x1"):
        MaxPool2d(2).forward(np.zeros((1, 1, 1, 1)))
    with pytest.raises(ValueError, match="4-D"):
        MaxPool2d(2).forward(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="last axis of length 4"):
        LayerNorm(4).forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="eps=0"):
        LayerNorm(4, eps=0)
    with pytest.raises(ValueError, match="eps=inf must be a finite number > 0"):  # before: accepted, y = beta
        LayerNorm(4, eps=float("inf"))
    with pytest.raises(TypeError, match="eps='1e-5' must be a finite number > 0"):  # before: '>' not supported
        LayerNorm(4, eps="1e-5")


@pytest.mark.parametrize("k,stride,padding,H,W", [(3, 1, 1, 5, 4), (3, 2, 1, 7, 6), (2, 2, 0, 6, 6), (1, 1, 0, 3, 3),
                                                  (3, 3, 2, 5, 5)])
def test_im2row_is_im2col_transposed_exactly(k, stride, padding, H, W):
    # The channels-last windows hold the very entries of the NCHW columns (copies, no arithmetic).
    x = np.random.default_rng(12).standard_normal((2, 3, H, W))
    rows = im2row(x.transpose(0, 2, 3, 1), k, stride, padding)  # (N, Ho, Wo, k, k, C)
    np.testing.assert_array_equal(rows.transpose(5, 3, 4, 0, 1, 2), im2col(x, k, stride, padding))




@pytest.mark.parametrize("k,H,W", [(2, 4, 4), (2, 5, 7), (3, 7, 6)])
def test_tiled_maxpool_equals_im2col_argmax_with_ties(k, H, W):
    # The stride = k path (strided views, running maximum) against argmax over im2col windows, on
    # ReLU-like inputs where whole windows tie at 0: same maxima, same first-maximum positions, same dx.
    rng = np.random.default_rng(14)
    x = np.maximum(rng.standard_normal((3, 2, H, W)), 0)
    x[0, 0] = 0.0  # every window of this image ties
    pool = MaxPool2d(k)
    y = pool.forward(x)
    cols = im2col(x, k, k).reshape(2, k * k, 3, H // k, W // k)  # (C, k², N, Ho, Wo)
    np.testing.assert_array_equal(y, cols.max(axis=1).transpose(1, 0, 2, 3))
    np.testing.assert_array_equal(pool.arg, cols.argmax(axis=1).transpose(1, 0, 2, 3))
    dy = rng.standard_normal(y.shape)
    hit = np.arange(k * k).reshape(1, -1, 1, 1, 1) == cols.argmax(axis=1)[:, None]
    dcols = (hit * dy.transpose(1, 0, 2, 3)[:, None]).reshape(2, k, k, 3, H // k, W // k)
    np.testing.assert_array_equal(pool.backward(dy), col2im(dcols, x.shape, k, k))


def test_conv_relu_pool_stack_keeps_channels_last_memory_and_values():
    # Conv2d returns an NCHW view of NHWC memory, and ReLU and the tiled MaxPool2d keep that layout, so the
    # next Conv2d reads its input without a transpose; values and gradients are those of NCHW arrays.
    rng = np.random.default_rng(15)
    conv = Conv2d(2, 4, 3, padding=1, seed=16)
    x = rng.standard_normal((3, 2, 6, 6))
    y = conv.forward(x)
    assert y.shape == (3, 4, 6, 6) and y.transpose(0, 2, 3, 1).flags.c_contiguous
    pool = MaxPool2d(2)
    z = pool.forward(np.maximum(y, 0))
    assert z.shape == (3, 4, 3, 3) and z.transpose(0, 2, 3, 1).flags.c_contiguous
    np.testing.assert_allclose(y, conv_loop(x, conv.params["W"], conv.params["b"], 1, 1), rtol=1e-12, atol=1e-12)
    dz = pool.backward(rng.standard_normal(z.shape))
    assert dz.shape == y.shape and dz.transpose(0, 2, 3, 1).flags.c_contiguous


def test_layer_norm_takes_its_own_dtype_and_refuses_integers_and_nan():
    # before, float64 input to a float32 LayerNorm came out float64 (every other layer casts to its dtype),
    # integer input was normalised without a word, and NaN went through
    norm = LayerNorm(3, dtype="float32")
    x = np.arange(12, dtype=np.float64).reshape(2, 2, 3)
    y = norm.forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, LayerNorm(3).forward(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="dtype int64"):
        norm.forward(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="NaN or inf"):
        norm.forward(np.full((2, 3), np.nan))
