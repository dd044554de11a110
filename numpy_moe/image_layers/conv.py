"""Conv2d and MaxPool2d: the windowed layers of the image models (posts 000 and 004).

Images are NCHW arrays: (N, C, H, W) with N samples, C channels, H and W the height and width (in this
module C, H and W carry their image meaning, not "classes" and "hidden"); F is the number of output
channels of a convolution and k its kernel size.

Memory layout. :class:`Conv2d` takes and returns NCHW arrays but works channels-last (NHWC, TensorFlow's
default layout): it copies the windows of the NHWC input into rows (:func:`im2row`, (N Ho Wo, k k C), each
window a run of k C contiguous values per kernel row) and its product with the weights is the output in
NHWC memory, returned as an NCHW *view* (``y.transpose(0, 3, 1, 2)``) without a copy. ReLU keeps that
layout and :class:`MaxPool2d` with stride = kernel size (the common case) reads and writes it through
strided views, so a conv - ReLU - pool - conv stack never transposes; only Flatten copies, into the NCHW
order of the features. The values are those of the NCHW formulas: only the order in which a matrix product
adds its terms differs (rounding).
"""
import math

from ..backend import default_rng, get_array_module, sum_rows
from ..layers import Module, init_weight, zeros_param
from ..validation import check_positive_int
from .checks import check_image_size, check_images
from .windows import col2im, im2col, im2row, row2im


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
    Backward: dWm = dY Xᵀ, db = sum of dY over its columns, dx = col2im(Wmᵀ dY) (MATH.md §14.1).

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
        self.grads["b"] = sum_rows(dY)  # (F,)
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
    y[n, c, a, b] = max over the window (MATH.md §14.2); the gradient goes to the window's maximum (the first one in
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
