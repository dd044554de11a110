"""Layers for the image models: Conv2d, MaxPool2d, Flatten, LayerNorm, GELU (posts 000 and 004).

Images are NCHW arrays: (N, C, H, W) with N samples, C channels, H and W the height and width (in this
module C, H and W carry their image meaning, not "classes" and "hidden"); F is the number of output
channels of a convolution and k its kernel size.

Convolution and pooling go through im2col (Chellapilla, Puri & Simard 2006; the cs231n "fast layers"):
:func:`im2col` copies every k x k window of the padded input into the columns of a matrix with one
strided slice per kernel offset (a loop over the k² offsets, never over samples or pixels), so a
convolution is one matrix product and a max-pool one reduction; :func:`col2im` is its adjoint and
scatters column gradients back, summing where windows overlap.

Memory layout. :class:`Conv2d` takes and returns NCHW arrays but works channels-last (NHWC, TensorFlow's
default layout): it copies the windows of the NHWC input into rows (:func:`im2row`, (N Ho Wo, k k C), each
window a run of k C contiguous values per kernel row) and its product with the weights is the output in
NHWC memory, returned as an NCHW *view* (``y.transpose(0, 3, 1, 2)``) without a copy. ReLU keeps that
layout and :class:`MaxPool2d` with stride = kernel size (the common case) reads and writes it through
strided views, so a conv - ReLU - pool - conv stack never transposes; only Flatten copies, into the NCHW
order of the features. The values are those of the NCHW formulas: only the order in which a matrix product
adds its terms differs (rounding).
"""
import contextlib
import math

from . import functional as F
from .backend import asarray, default_rng, get_array_module, is_floating_dtype
from .layers import Module, init_weight, ones_param, zeros_param
from .validation import check_positive_int, check_real


def check_images(x, channels, dtype, name="x", min_images=0):
    """Validate a float batch of images (N, channels, H, W); return it as ``dtype`` (None: its own).

    min_images : the fewest images N allowed (a model with MoE layers needs 1, as they do).
    """
    x = asarray(x)  # onto the current backend, as validation.check_input does
    if not is_floating_dtype(x.dtype):
        raise TypeError(f"{name} has dtype {x.dtype}; expected a floating dtype (float32 or float64)")
    if x.ndim != 4:
        raise ValueError(f"{name} has ndim={x.ndim} (shape {tuple(x.shape)}); "
                         "expected a 4-D array of images (N, C, H, W)")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}); expected {channels}")
    if x.shape[0] < min_images:
        raise ValueError(f"{name} has {x.shape[0]} images (shape {tuple(x.shape)}); expected at least {min_images}")
    return cast_finite(x, dtype, name)


def cast_finite(x, dtype, name="x"):
    """``x`` as ``dtype`` (None: its own); ValueError if it holds NaN or inf, or finite values the cast overflows.

    Checked after the cast, as validation.check_input does: 1e39 is finite in float64 but inf in float32.
    """
    xp = get_array_module(x)
    if dtype is None or x.dtype == dtype:
        cast = x
    else:
        errstate = getattr(xp, "errstate", None)  # the overflow is reported below, not as a RuntimeWarning
        with errstate(over="ignore", invalid="ignore") if errstate else contextlib.nullcontext():
            cast = xp.asarray(x, dtype=dtype)
    if not bool(xp.isfinite(cast).all()):
        if bool(xp.isfinite(x).all()):
            raise ValueError(f"{name} has values up to {float(xp.abs(x).max()):.3g} that overflow the layer's "
                             f"dtype {xp.dtype(dtype).name}; rescale the inputs or use float64")
        raise ValueError(f"{name} contains NaN or inf; expected finite values")
    return cast


def output_size(size, k, stride, padding):
    """Output length of a k-window sliding with ``stride`` over ``size`` + 2 ``padding`` (floor mode)."""
    return (size + 2 * padding - k) // stride + 1


def im2col(x, k, stride=1, padding=0):
    """Every k x k window of the zero-padded images as a column.

    Parameters
    ----------
    x : (N, C, H, W). k : kernel size. stride, padding : ints.

    Returns
    -------
    cols : (C, k, k, N, Ho, Wo), cols[c, i, j, n, a, b] = xpad[n, c, a * stride + i, b * stride + j].
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    Ho, Wo = output_size(H, k, stride, padding), output_size(W, k, stride, padding)
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    cols = xp.empty((C, k, k, N, Ho, Wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            cols[:, i, j] = x[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride].transpose(1, 0, 2, 3)
    return cols


def image_columns(x, channels, dtype, k, stride, padding):
    """Validated images x (N, C, H, W) -> (x's shape, im2col columns (C, k, k, N, Ho, Wo)).

    The input check of every 2-D convolution: images of ``channels`` channels, large enough for the
    kernel with its padding.
    """
    x = check_image_size(check_images(x, channels, dtype), k, padding)
    return x.shape, im2col(x, k, stride, padding)


def check_image_size(x, k, padding):
    """Raise ValueError when the images x (N, C, H, W) are too small for a k x k kernel with ``padding``."""
    H, W = x.shape[2:]
    if H + 2 * padding < k or W + 2 * padding < k:
        raise ValueError(f"x has images of size {H}x{W}; kernel_size={k} with padding={padding} "
                         f"needs at least {k - 2 * padding}x{k - 2 * padding}")
    return x


def col2im(cols, x_shape, k, stride=1, padding=0):
    """Adjoint of :func:`im2col`: sum each column entry back onto the pixel it was copied from.

    cols : (C, k, k, N, Ho, Wo); x_shape : (N, C, H, W). Returns dx of shape x_shape.
    """
    xp = get_array_module(cols)
    N, C, H, W = x_shape
    Ho, Wo = cols.shape[-2:]
    dx = xp.zeros((N, C, H + 2 * padding, W + 2 * padding), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            dx[:, :, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += cols[:, i, j].transpose(1, 0, 2, 3)
    return dx[:, :, padding:padding + H, padding:padding + W]


def im2row(x, k, stride=1, padding=0):
    """Every k x k window of the zero-padded channels-last images as a row (the NHWC im2col).

    Parameters
    ----------
    x : (N, H, W, C), any strides (an NCHW array transposed by ``x.transpose(0, 2, 3, 1)`` is fine).
    k : kernel size. stride, padding : ints.

    Returns
    -------
    rows : (N, Ho, Wo, k, k, C), rows[n, a, b, i, j, c] = xpad[n, a * stride + i, b * stride + j, c]
    (the entries of :func:`im2col`'s columns, transposed: ``im2col(x_nchw)`` equals
    ``im2row(x_nhwc).transpose(5, 3, 4, 0, 1, 2)``).
    """
    xp = get_array_module(x)
    N, H, W, C = x.shape
    Ho, Wo = output_size(H, k, stride, padding), output_size(W, k, stride, padding)
    if padding:
        xpad = xp.zeros((N, H + 2 * padding, W + 2 * padding, C), dtype=x.dtype)
        xpad[:, padding:padding + H, padding:padding + W] = x
        x = xpad
    rows = xp.empty((N, Ho, Wo, k, k, C), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            rows[:, :, :, i, j] = x[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride]
    return rows


def row2im(rows, x_shape, k, stride=1, padding=0):
    """Adjoint of :func:`im2row`: add each row entry back onto the pixel it was copied from.

    rows : (N, Ho, Wo, k, k, C); x_shape : (N, H, W, C). Returns dx (N, H, W, C) (a view of a padded
    array when padding > 0). One strided addition per kernel offset.
    """
    xp = get_array_module(rows)
    N, H, W, C = x_shape
    Ho, Wo = rows.shape[1:3]
    dx = xp.zeros((N, H + 2 * padding, W + 2 * padding, C), dtype=rows.dtype)
    for i in range(k):
        for j in range(k):
            dx[:, i:i + stride * Ho:stride, j:j + stride * Wo:stride] += rows[:, :, :, i, j]
    return dx[:, padding:padding + H, padding:padding + W]


class Conv2d(Module):
    """2-D convolution (cross-correlation, as in PyTorch) with square kernels, stride and zero padding.

    Parameters
    ----------
    in_channels : C. out_channels : F. kernel_size : k. stride : >= 1. padding : >= 0 zeros on each side.
    seed : int or numpy Generator (He init, std sqrt(2 / (C k²))). dtype : float32 or float64.

    Shapes: x (N, C, H, W) -> y (N, F, Ho, Wo), Ho = (H + 2 padding - k) // stride + 1;
    W (F, C, k, k), b (F,).

    Notes
    -----
    With X = im2col(x) reshaped to (C k², N Ho Wo) and Wm = W reshaped to (F, C k²):
    Y = Wm X + b, y = Y reshaped to (F, N, Ho, Wo) and transposed to NCHW.
    Backward: dWm = dY Xᵀ, db = sum of dY over its columns, dx = col2im(Wmᵀ dY).

    Computed channels-last (module docstring): R = im2row(x) as (N Ho Wo, k k C), Wr = W transposed to
    (F, k, k, C) as (F, k k C), Y = R Wrᵀ + b is the output (N Ho Wo, F) in NHWC memory; dWr = dYᵀ R,
    db = column sums of dY, dx = row2im(dY Wr). These are the products above, transposed, with the
    kernel offsets and channels in another order.
    Each pass makes one matrix product per array, never one per kernel offset: with BLAS on several threads
    every product is a hand-over between threads, and on a busy machine each can wait a time slice
    (k² products of (N Ho Wo, C) blocks would let row2im add whole blocks, 0.2 ms faster per batch of 64
    on one thread, but made two-thread epochs several times slower on a shared machine).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, seed=None,
                 dtype="float64"):
        super().__init__(dtype)
        C = self.in_channels = check_positive_int(in_channels, "in_channels")
        Fo = self.out_channels = check_positive_int(out_channels, "out_channels")
        k = self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.stride = check_positive_int(stride, "stride")
        self.padding = check_positive_int(padding, "padding", minimum=0)
        self.params["W"] = init_weight(default_rng(seed), C * k * k, Fo, (Fo, C, k, k), "he", self.dtype)
        self.params["b"] = zeros_param(Fo, self.dtype)
        self.zero_grad()

    def forward(self, x):
        x = check_image_size(check_images(x, self.in_channels, self.dtype), self.kernel_size, self.padding)
        N = x.shape[0]
        self.x_shape = x.shape
        rows = im2row(x.transpose(0, 2, 3, 1), self.kernel_size, self.stride, self.padding)  # (N, Ho, Wo, k, k, C)
        Ho, Wo = rows.shape[1:3]
        self.rows = rows.reshape(N * Ho * Wo, math.prod(rows.shape[3:]))  # (N Ho Wo, k k C); no -1: N may be 0
        self.Wr = self.params["W"].transpose(0, 2, 3, 1).reshape(self.out_channels, -1)  # (F, k k C)
        Y = self.rows @ self.Wr.T  # (N Ho Wo, F)
        Y += self.params["b"]
        return Y.reshape(N, Ho, Wo, self.out_channels).transpose(0, 3, 1, 2)  # (N, F, Ho, Wo), NHWC memory

    def backward(self, dy):
        xp = get_array_module(dy)
        N, Fo, Ho, Wo = dy.shape
        C, k = self.in_channels, self.kernel_size
        dY = dy.transpose(0, 2, 3, 1).reshape(-1, Fo)  # (N Ho Wo, F), a view when dy is in NHWC memory
        dWr = (dY.T @ self.rows).reshape(Fo, k, k, C)
        self.grads["W"] = xp.ascontiguousarray(dWr.transpose(0, 3, 1, 2))  # (F, C, k, k)
        self.grads["b"] = dY.sum(axis=0)  # (F,)
        drows = (dY @ self.Wr).reshape(N, Ho, Wo, k, k, C)
        N, C, H, W = self.x_shape
        dx = row2im(drows, (N, H, W, C), k, self.stride, self.padding)  # (N, H, W, C)
        return dx.transpose(0, 3, 1, 2)  # (N, C, H, W)


class MaxPool2d(Module):
    """Max over k x k windows moved by ``stride`` (default k), no padding, floor mode (as PyTorch).

    Parameters
    ----------
    kernel_size : k. stride : >= 1, default k (non-overlapping windows).

    Shapes: x (N, C, H, W) -> y (N, C, Ho, Wo), Ho = (H - k) // stride + 1.

    Notes
    -----
    y[n, c, a, b] = max over the window; the gradient goes to the window's maximum (the first one in
    row-major order on a tie) and is summed where overlapping windows share that pixel. After forward,
    ``arg`` (N, C, Ho, Wo) holds the position of that maximum in its window, i k + j.

    With stride = k (windows that tile the image) the k² strided views x[:, :, i::k, j::k] hold one
    window entry each: y is their running maximum, taken in row-major order and moving ``arg`` only on a
    strict increase (so ties keep the first position), and backward writes dy into the view of each
    window's maximum. These views are taken of the channels-last x.transpose(0, 2, 3, 1), contiguous for a
    :class:`Conv2d`'s output, and y and dx come back in NHWC memory (module docstring). Otherwise the
    windows go through :func:`im2col`.
    """

    def __init__(self, kernel_size, stride=None):
        super().__init__()
        self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        self.stride = self.kernel_size if stride is None else check_positive_int(stride, "stride")

    def forward(self, x):
        x = check_images(x, None, None)  # pooling keeps the input dtype
        N, C, H, W = x.shape
        k = self.kernel_size
        if H < k or W < k:
            raise ValueError(f"x has images of size {H}x{W}; kernel_size={k} needs at least {k}x{k}")
        self.x_shape = x.shape
        if self.stride == k:
            return self._forward_tiled(x)
        cols = im2col(x, k, self.stride)  # (C, k, k, N, Ho, Wo)
        cols = cols.reshape(C, k * k, *cols.shape[3:])  # (C, k², N, Ho, Wo)
        self.arg = cols.argmax(axis=1).transpose(1, 0, 2, 3)  # (N, C, Ho, Wo)
        return cols.max(axis=1).transpose(1, 0, 2, 3)  # (N, C, Ho, Wo)

    def _windows(self, x):
        """The k² views x[:, i::k, j::k] of channels-last images x (N, H, W, C), cut to (N, Ho, Wo, C),
        in row-major order of (i, j)."""
        k = self.kernel_size
        Ho, Wo = x.shape[1] // k, x.shape[2] // k
        return [x[:, i:i + k * Ho:k, j:j + k * Wo:k] for i in range(k) for j in range(k)]

    def _forward_tiled(self, x):
        xp = get_array_module(x)
        views = self._windows(x.transpose(0, 2, 3, 1))  # (N, Ho, Wo, C) each
        y = views[0].copy()  # (N, Ho, Wo, C)
        arg = xp.zeros(y.shape, dtype=xp.int16 if len(views) <= 32767 else xp.int64)
        for pos, v in enumerate(views[1:], 1):
            # pos exceeds every earlier position, so "arg = pos where v > y" is a maximum; strict > keeps
            # the first of tied maxima
            xp.maximum(arg, (v > y) * arg.dtype.type(pos), out=arg)
            xp.maximum(y, v, out=y)
        self.arg = arg.transpose(0, 3, 1, 2)  # (N, C, Ho, Wo)
        return y.transpose(0, 3, 1, 2)  # (N, C, Ho, Wo) in NHWC memory

    def backward(self, dy):
        xp = get_array_module(dy)
        N, C, Ho, Wo = dy.shape
        k = self.kernel_size
        if self.stride == k:
            H, W = self.x_shape[2:]
            dx = xp.zeros((N, H, W, C), dtype=dy.dtype)
            arg, dy = self.arg.transpose(0, 2, 3, 1), dy.transpose(0, 2, 3, 1)  # (N, Ho, Wo, C)
            for pos, view in enumerate(self._windows(dx)):
                xp.multiply(dy, arg == pos, out=view)
            return dx.transpose(0, 3, 1, 2)  # (N, C, H, W) in NHWC memory, as a Conv2d makes
        arg = self.arg.transpose(1, 0, 2, 3)  # (C, N, Ho, Wo)
        hit = xp.arange(k * k).reshape(1, -1, 1, 1, 1) == arg[:, None]  # (C, k², N, Ho, Wo)
        dcols = (hit * dy.transpose(1, 0, 2, 3)[:, None]).reshape(C, k, k, N, Ho, Wo)
        return col2im(dcols, self.x_shape, k, self.stride)  # (N, C, H, W)


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), C order, so an NCHW batch becomes (N, C H W)."""

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # no -1: N may be 0

    def backward(self, dy):
        return dy.reshape(self.x_shape)


class LayerNorm(Module):
    """Layer normalisation over the last axis (Ba, Kiros & Hinton 2016), as in MLP-Mixer.

    Parameters
    ----------
    n_features : D, the length of the last axis. eps : added to the variance. dtype : float32 or float64.

    Shapes: x (..., D) -> y (..., D); gamma (D,), beta (D,).

    Notes
    -----
    mu = mean(x), var = mean((x - mu)²), xhat = (x - mu) / sqrt(var + eps), y = gamma xhat + beta, per row.
    Backward: dgamma = sum dy xhat, dbeta = sum dy (over every row); with g = dy gamma,
    dx = (g - mean(g) - xhat mean(g xhat)) / sqrt(var + eps).
    """

    def __init__(self, n_features, eps=1e-5, dtype="float64"):
        super().__init__(dtype)
        self.n_features = check_positive_int(n_features, "n_features")
        self.eps = check_real(eps, "eps", 0, low_open=True)  # inf would flatten every output to beta
        self.params["gamma"] = ones_param(self.n_features, self.dtype)
        self.params["beta"] = zeros_param(self.n_features, self.dtype)
        self.zero_grad()

    def forward(self, x):
        x = asarray(x)
        if not is_floating_dtype(x.dtype):
            raise TypeError(f"x has dtype {x.dtype}; expected a floating dtype (float32 or float64)")
        if x.ndim < 1 or x.shape[-1] != self.n_features:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected a last axis of length {self.n_features}")
        x = cast_finite(x, self.dtype)  # the layer's dtype, as check_input gives the other layers
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        self.inv_std = 1 / (var + self.eps) ** 0.5  # (..., 1)
        self.xhat = (x - mu) * self.inv_std  # (..., D)
        return self.params["gamma"] * self.xhat + self.params["beta"]

    def backward(self, dy):
        D = self.n_features
        self.grads["gamma"] = (dy * self.xhat).reshape(-1, D).sum(axis=0)
        self.grads["beta"] = dy.reshape(-1, D).sum(axis=0)
        g = dy * self.params["gamma"]
        return (g - g.mean(axis=-1, keepdims=True)
                - self.xhat * (g * self.xhat).mean(axis=-1, keepdims=True)) * self.inv_std


class GELU(Module):
    """Exact GELU (Hendrycks & Gimpel 2016), the MLP-Mixer activation: y = x Φ(x), elementwise.

    Notes
    -----
    dy/dx = Φ(x) + x φ(x), Φ and φ the standard normal CDF and density.
    """

    def forward(self, x):
        self.x = x
        return x * F.normal_cdf(x)

    def backward(self, dy):
        return dy * (F.normal_cdf(self.x) + self.x * F.normal_pdf(self.x))


class Unflatten(Module):
    """``(N, prod(shape)) -> (N, *shape)``, the inverse of :class:`Flatten`.

    Lets code written for 2-D batches (``numpy_moe.train.fit`` validates X as (N, D)) train an image model:
    ``fit(Sequential(Unflatten((C, H, W)), model), X.reshape(N, -1), y)``.
    """

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(check_positive_int(s, "shape") for s in shape)
        self.size = 1
        for s in self.shape:
            self.size *= s

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.size:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, {self.size}) to unflatten to "
                             f"(N, {', '.join(map(str, self.shape))})")
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, dy):
        return dy.reshape(dy.shape[0], -1)
