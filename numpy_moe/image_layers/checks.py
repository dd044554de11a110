"""Input checks of the image layers: a float batch of NCHW images, finite in the layer's dtype, large
enough for a kernel."""
from ..backend import asarray, is_floating_dtype
from ..validation import cast_finite


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


def check_image_size(x, k, padding):
    """Raise ValueError when the images x (N, C, H, W) are too small for a k x k kernel with ``padding``."""
    H, W = x.shape[2:]
    if H + 2 * padding < k or W + 2 * padding < k:
        raise ValueError(f"x has images of size {H}x{W}; kernel_size={k} with padding={padding} "
                         f"needs at least {k - 2 * padding}x{k - 2 * padding}")
    return x
