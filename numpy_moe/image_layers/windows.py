"""Every k x k window of a batch of images as a column (im2col) or a row (im2row), and their adjoints.

Convolution and pooling go through im2col (Chellapilla, Puri & Simard 2006; the cs231n "fast layers"):
:func:`im2col` copies every k x k window of the padded input into the columns of a matrix with one
strided slice per kernel offset (a loop over the k² offsets, never over samples or pixels), so a
convolution is one matrix product and a max-pool one reduction; :func:`col2im` is its adjoint and
scatters column gradients back, summing where windows overlap.

:func:`im2row` is the channels-last (NHWC) form that :class:`numpy_moe.image_layers.Conv2d` uses.
"""
from ..backend import get_array_module
from .checks import check_image_size, check_images


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
