"""Convolutional mixtures of experts: E convolutions of one shape, blended per position by a conv gate.

The layer of post 003's Keras page (convolutional MoE layers beside the dense ones), written out. At
every output position the gate, itself a convolution with the experts' kernel size, stride and padding,
gives a softmax over the E experts, and the output is the blend of the experts' convolutions there:

    Y_e  = W_e * x + b_e            expert e's convolution, (N, F, Ho, Wo)
    a    = Wg * x + bg              gate logits, (N, E, Ho, Wo)
    g    = softmax_e(a)             dense: every expert weighted at every position
    g    = softmax over the K largest a at each position, 0 elsewhere          top_k=K
    y    = Σ_e g_e ⊙ Y_e           (N, F, Ho, Wo)

:class:`ConvMoE2d` takes the arguments of :class:`numpy_moe.image_layers.Conv2d` plus ``n_experts`` and
``top_k`` and has its input and output shapes, so it replaces a Conv2d in any model; :class:`ConvMoE1d`
is the same on sequences (N, C, L). Every expert runs at every position (E times a Conv2d's work; top-k
zeroes weights, it does not skip work): this is a reference for the formula, not a fast kernel.

Notes
-----
With X the im2col matrix (C k^d, P) of the P = N Ho Wo output positions, Wm_e (F, C k^d), Wgm (E, C k^d):
Y_e = Wm_e X + b_e, a = Wgm X + bg, y = Σ_e g_e ⊙ Y_e. Backward for dy (F, P)::

    dY_e = g_e ⊙ dy,   dg_e = Σ_f dy ⊙ Y_e,   da = g ⊙ (dg - Σ_e g_e dg_e)
    (the softmax backward over the kept set: dropped experts have g_e = 0, so their da is 0 and top-k
    needs no extra term),
    dWm_e = dY_e Xᵀ, db_e = Σ_P dY_e, dWgm = da Xᵀ, dbg = Σ_P da,
    dX = Σ_e Wm_eᵀ dY_e + Wgmᵀ da, dx = col2im(dX).
"""
from . import functional as F
from .backend import asarray, default_rng, get_array_module, is_floating_dtype
from .image_layers import cast_finite, col2im, image_columns, output_size
from .layers import Module, init_weight, zeros_param
from .validation import check_positive_int


def im2col_1d(x, k, stride=1, padding=0):
    """Every length-k window of the zero-padded sequences x (N, C, L) as a column: (C, k, N, Lo)."""
    xp = get_array_module(x)
    N, C, L = x.shape
    Lo = output_size(L, k, stride, padding)
    if padding:
        x = xp.pad(x, ((0, 0), (0, 0), (padding, padding)))
    cols = xp.empty((C, k, N, Lo), dtype=x.dtype)
    for i in range(k):
        cols[:, i] = x[:, :, i:i + stride * Lo:stride].transpose(1, 0, 2)
    return cols


def col2im_1d(cols, x_shape, k, stride=1, padding=0):
    """Adjoint of :func:`im2col_1d`: cols (C, k, N, Lo) summed back onto x_shape (N, C, L)."""
    xp = get_array_module(cols)
    N, C, L = x_shape
    Lo = cols.shape[-1]
    dx = xp.zeros((N, C, L + 2 * padding), dtype=cols.dtype)
    for i in range(k):
        dx[:, :, i:i + stride * Lo:stride] += cols[:, i].transpose(1, 0, 2)
    return dx[:, :, padding:padding + L]


class _ConvMoE(Module):
    """The layer on im2col columns; subclasses say how an input becomes columns and back."""
    spatial = None  # number of spatial dimensions

    def __init__(self, in_channels, out_channels, kernel_size, n_experts=4, top_k=None, stride=1, padding=0,
                 seed=None, dtype="float64"):
        super().__init__(dtype)
        C = self.in_channels = check_positive_int(in_channels, "in_channels")
        Fo = self.out_channels = check_positive_int(out_channels, "out_channels")
        k = self.kernel_size = check_positive_int(kernel_size, "kernel_size")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        if top_k is not None and not (check_positive_int(top_k, "top_k") <= E):
            raise ValueError(f"top_k={top_k} must be between 1 and n_experts={E}")
        self.top_k = top_k
        self.stride = check_positive_int(stride, "stride")
        self.padding = check_positive_int(padding, "padding", minimum=0)
        rng = default_rng(seed)
        fan_in = C * k ** self.spatial
        kernel = (k,) * self.spatial
        self.params["W"] = init_weight(rng, fan_in, Fo, (E, Fo, C) + kernel, "he", self.dtype)
        self.params["b"] = zeros_param((E, Fo), self.dtype)
        self.params["Wg"] = zeros_param((E, C) + kernel, self.dtype)  # uniform gates at first
        self.params["bg"] = zeros_param((E,), self.dtype)
        self.zero_grad()

    def _gate(self, a):
        """g (E, P) from logits a (E, P): softmax, over the K largest per column for top_k=K."""
        xp = get_array_module(a)
        if self.top_k is None or self.top_k == self.n_experts:
            return F.softmax(a, axis=0)
        rank = xp.argsort(xp.argsort(-a, axis=0, kind="stable"), axis=0)  # 0 for the largest; ties to the lower index
        return F.softmax(xp.where(rank < self.top_k, a, -xp.inf), axis=0)

    def gate(self, x):
        """Per-position expert weights g (N, E, *output spatial shape); what the last forward left for backward
        is kept (the gates come from a forward of their own)."""
        saved = {k: v for k, v in vars(self).items() if k in ("x_shape", "out_shape", "cols", "Y", "g")}
        saved["_ran_forward"] = vars(self).get("_ran_forward", False)  # what backward may differentiate (layers.Module)
        saved["_ran_forward_shape"] = vars(self).get("_ran_forward_shape")  # and the shape of its gradient
        saved["_ran_forward_dtype"] = vars(self).get("_ran_forward_dtype")  # and the dtype it converts one to
        try:
            self.forward(x)
            E = self.n_experts
            return self.g.reshape((E,) + self.out_shape).transpose((1, 0) + tuple(range(2, 2 + self.spatial)))
        finally:
            vars(self).update(saved)

    def forward(self, x):
        cols = self._to_cols(x)  # (C k^d, P)
        E, Fo = self.n_experts, self.out_channels
        Y = (self.params["W"].reshape(E * Fo, -1) @ cols).reshape(E, Fo, cols.shape[1]) + self.params["b"][:, :, None]
        a = self.params["Wg"].reshape(E, -1) @ cols + self.params["bg"][:, None]  # (E, P)
        g = self._gate(a)
        self.cols, self.Y, self.g = cols, Y, g
        out = (g[:, None, :] * Y).sum(axis=0)  # (F, P)
        return out.reshape((Fo,) + self.out_shape).transpose((1, 0) + tuple(range(2, 2 + self.spatial)))

    def backward(self, dy):
        xp = get_array_module(dy)
        E, Fo = self.n_experts, self.out_channels
        dout = dy.transpose((1, 0) + tuple(range(2, 2 + self.spatial))).reshape(Fo, -1)  # (F, P)
        dY = self.g[:, None, :] * dout  # (E, F, P)
        dg = xp.einsum("fp,efp->ep", dout, self.Y)
        da = F.softmax_backward(dg, self.g, axis=0)  # (E, P); 0 for experts outside the top k
        self.grads["W"] = (dY.reshape(E * Fo, -1) @ self.cols.T).reshape(self.params["W"].shape)
        self.grads["b"] = dY.sum(axis=2)
        self.grads["Wg"] = (da @ self.cols.T).reshape(self.params["Wg"].shape)
        self.grads["bg"] = da.sum(axis=1)
        dcols = self.params["W"].reshape(E * Fo, -1).T @ dY.reshape(E * Fo, -1) + self.params["Wg"].reshape(E, -1).T @ da
        return self._from_cols(dcols)


class ConvMoE2d(_ConvMoE):
    """A mixture of E 2-D convolutions with a convolutional gate, per output position; replaces a Conv2d.

    Parameters
    ----------
    in_channels : C. out_channels : F. kernel_size : k. n_experts : E. top_k : None (dense) or K in 1..E.
    stride, padding, seed, dtype : as for Conv2d (He init of the experts; the gate starts at zero,
    every expert weighted 1/E, or 1/K among the K kept, which are then tied: the first K by index).

    Shapes: x (N, C, H, W) -> y (N, F, Ho, Wo), Ho = (H + 2 padding - k) // stride + 1.
    Parameters: W (E, F, C, k, k), b (E, F), Wg (E, C, k, k), bg (E,). Module docstring: the formulas.
    """
    spatial = 2

    def _to_cols(self, x):
        self.x_shape, cols = image_columns(x, self.in_channels, self.dtype, self.kernel_size, self.stride,
                                           self.padding)  # (C, k, k, N, Ho, Wo)
        self.out_shape = cols.shape[3:]
        return cols.reshape(self.in_channels * self.kernel_size ** 2, -1)  # (C k², P); P may be 0

    def _from_cols(self, dcols):
        k = self.kernel_size
        return col2im(dcols.reshape((self.in_channels, k, k) + self.out_shape), self.x_shape, k, self.stride,
                      self.padding)


class ConvMoE1d(_ConvMoE):
    """The 1-D case of :class:`ConvMoE2d`: sequences x (N, C, L) -> (N, F, Lo), Lo = (L + 2 p - k) // s + 1.

    Parameters as ConvMoE2d; W (E, F, C, k), b (E, F), Wg (E, C, k), bg (E,).
    """
    spatial = 1

    def _to_cols(self, x):
        x = asarray(x)
        if not is_floating_dtype(x.dtype):
            raise TypeError(f"x has dtype {x.dtype}; expected a floating dtype (float32 or float64)")
        if x.ndim != 3 or x.shape[1] != self.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected sequences (N, {self.in_channels}, L)")
        x = cast_finite(x, self.dtype)
        k, s, p = self.kernel_size, self.stride, self.padding
        if x.shape[2] + 2 * p < k:
            raise ValueError(f"x has sequences of length {x.shape[2]}; kernel_size={k} with padding={p} "
                             f"needs at least {k - 2 * p}")
        self.x_shape = x.shape
        cols = im2col_1d(x, k, s, p)  # (C, k, N, Lo)
        self.out_shape = cols.shape[2:]
        return cols.reshape(self.in_channels * k, -1)  # (C k, P); P may be 0

    def _from_cols(self, dcols):
        k = self.kernel_size
        return col2im_1d(dcols.reshape((self.in_channels, k) + self.out_shape), self.x_shape, k, self.stride,
                         self.padding)
