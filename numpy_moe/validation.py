"""Input checks for the public boundary: errors that name the argument, the value and what was expected.

Layers call :func:`check_input` on what a user hands them; internal calls between modules skip it.
"""
from .backend import asarray, get_array_module, is_floating_dtype


def check_input(x, n_features, dtype, name="x"):
    """Validate a 2-D float batch and return it as an array of ``dtype`` on the current backend.

    Parameters
    ----------
    x : array-like of shape (N, n_features), floating dtype, all finite.
    n_features : int or None, the expected number of columns (None: any).
    dtype : the dtype to convert to (the module's parameter dtype).
    name : the argument's name, for the error message.
    """
    x = asarray(x)  # onto the current backend (a NumPy array is copied to the GPU under CuPy)
    xp = get_array_module(x)
    if not is_floating_dtype(x.dtype):
        raise TypeError(f"{name} has dtype {x.dtype}; expected a floating dtype (float32 or float64)")
    if x.ndim != 2:
        raise ValueError(f"{name} has ndim={x.ndim} (shape {tuple(x.shape)}); expected a 2-D array (N, D)")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"{name} has {x.shape[1]} features (shape {tuple(x.shape)}); "
                         f"expected {n_features}")
    if not bool(xp.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf; expected finite values")
    return xp.asarray(x, dtype=dtype)


def check_positive_int(value, name, minimum=1):
    """Return ``value`` if it is an integer >= ``minimum``; raise ValueError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be an integer >= {minimum}")
    return int(value)


def check_labels(y, n_classes, n_samples, name="y"):
    """Validate integer class labels in [0, n_classes) of length ``n_samples``."""
    y = asarray(y)
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise ValueError(f"{name} has shape {tuple(y.shape)}; expected ({n_samples},) integer labels")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {y.dtype}; expected integer class labels")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"{name} has labels in [{int(y.min())}, {int(y.max())}]; "
                         f"expected labels in [0, {n_classes - 1}]")
    return y
