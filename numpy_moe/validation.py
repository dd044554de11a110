"""Input checks for the public boundary: errors that name the argument, the value and what was expected.

Layers call :func:`check_input` on what a user hands them; internal calls between modules skip it.
"""
import math
import numbers

from .backend import asarray, get_array_module, is_floating_dtype, is_sparse, quiet_overflow


def check_input(x, n_features, dtype, name="x", min_rows=0):
    """Validate a 2-D float batch and return it as an array of ``dtype`` on the current backend.

    Parameters
    ----------
    x : array-like of shape (N, n_features), floating dtype, all finite.
    n_features : int or None, the expected number of columns (None: any).
    dtype : the dtype to convert to (the module's parameter dtype).
    name : the argument's name, for the error message.
    min_rows : the fewest rows N allowed (a routing layer needs 1: its balance statistics are means over
        the batch, undefined for no sample).
    """
    if is_sparse(x):
        raise TypeError(f"{name} is a sparse matrix ({type(x).__name__}); numpy_moe layers take dense arrays: "
                        f"pass {name}.toarray()")
    x = asarray(x)  # onto the current backend (a NumPy array is copied to the GPU under CuPy)
    if x.dtype.kind == "O":
        raise TypeError(f"{name} has dtype object; expected a floating dtype (float32 or float64)")
    if not is_floating_dtype(x.dtype):
        raise TypeError(f"{name} has dtype {x.dtype}; expected a floating dtype (float32 or float64)")
    if x.ndim != 2:
        raise ValueError(f"{name} has ndim={x.ndim} (shape {tuple(x.shape)}); expected a 2-D array (N, D)")
    if n_features is not None and x.shape[1] != n_features:
        raise ValueError(f"{name} has {x.shape[1]} features (shape {tuple(x.shape)}); "
                         f"expected {n_features}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} has {x.shape[0]} rows (shape {tuple(x.shape)}); expected at least {min_rows}")
    return cast_finite(x, dtype, name)  # no cast when x has dtype already (the common case in training loops)


def cast_finite(x, dtype, name="x"):
    """``x`` as ``dtype`` (None: its own); ValueError if it holds NaN or inf, or finite values the cast overflows.

    Checked after the cast, as :func:`check_input` does: 1e39 is finite in float64 but inf in float32.
    """
    xp = get_array_module(x)
    if dtype is None or x.dtype == dtype:
        cast = x
    else:
        with quiet_overflow(xp):  # the overflow is reported below, not as a RuntimeWarning
            cast = xp.asarray(x, dtype=dtype)
    if not bool(xp.isfinite(cast).all()):
        if bool(xp.isfinite(x).all()):
            raise ValueError(f"{name} has values up to {float(xp.abs(x).max()):.3g} that overflow the layer's "
                             f"dtype {xp.dtype(dtype).name}; rescale the inputs or use float64")
        raise ValueError(f"{name} contains NaN or inf; expected finite values")
    return cast


def to_dtype(x, dtype, name="x"):
    """``x`` as an array of the layer's parameter ``dtype``, for the layers that other layers call without checks
    (the gates, the experts, the residual blocks) but that are public too.

    An array already of ``dtype`` is returned as it is, unchecked, at the cost of one comparison (the calls
    between layers); any other must have a floating dtype (TypeError otherwise) and is cast, NaN, inf and
    overflow refused as :func:`check_input` refuses them. A float32 layer given float64 input so computes,
    returns and keeps float32, as the layers that call check_input do.
    """
    if getattr(x, "dtype", None) == dtype:
        return x
    x = asarray(x)
    if not is_floating_dtype(x.dtype):
        raise TypeError(f"{name} has dtype {x.dtype}; expected a floating dtype (float32 or float64)")
    return cast_finite(x, dtype, name)


def check_positive_int(value, name, minimum=1):
    """Return ``value`` if it is an integer >= ``minimum``; otherwise raise, naming ``name``, TypeError for a
    value that is not an integer (a bool, a float such as 2.0) and ValueError for one below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
        raise TypeError(f"{name}={value!r} must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"{name}={value} must be an integer >= {minimum}")
    return int(value)


def check_bool(value, name):
    """Return ``value`` if it is True or False (a NumPy bool too); TypeError naming ``name`` otherwise: a flag
    read by its truth value would take "false", None, 0.5 or nan without a word."""
    if isinstance(value, bool) or (getattr(value, "dtype", None) is not None and value.dtype.kind == "b"
                                   and value.ndim == 0):
        return bool(value)
    raise TypeError(f"{name}={value!r} must be True or False")


def check_real(value, name, low=None, high=None, low_open=False, high_open=False):
    """Return ``value`` as a finite float in the given range; TypeError / ValueError naming ``name`` otherwise.

    low, high : bounds (None: unbounded); low_open, high_open : exclude the bound itself.
    """
    if low is not None and high is not None:
        expected = f"a finite number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    elif low is not None:
        expected = f"a finite number {'>' if low_open else '>='} {low}"
    else:
        expected = "a finite number"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r} must be {expected}, not a {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x) or (low is not None and (x <= low if low_open else x < low)) or \
            (high is not None and (x >= high if high_open else x > high)):
        raise ValueError(f"{name}={value!r} must be {expected}")
    return x


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


def check_mask(mask, n_samples):
    """Validate a token mask: (N,) bool, at least one True; returned on the current backend."""
    mask = asarray(mask)
    if mask.dtype != bool:
        raise TypeError(f"mask has dtype {mask.dtype}; expected bool (True for the samples that count)")
    if mask.shape != (n_samples,):
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected ({n_samples},), one entry per sample")
    if not bool(mask.any()):
        raise ValueError("mask is False everywhere; at least one sample must count")
    return mask


def check_seq_lengths(seq_lengths, n_samples):
    """Validate sequence lengths: positive ints summing to N; returned as a list."""
    try:
        lengths = [int(t) for t in seq_lengths]
        bad = any(t != v or isinstance(v, bool) for t, v in zip(lengths, seq_lengths))
    except (TypeError, ValueError):
        lengths, bad = [], True
    if bad or not lengths or min(lengths) < 1:
        raise ValueError(f"seq_lengths={seq_lengths!r} must be a non-empty list of positive integers")
    if sum(lengths) != n_samples:
        raise ValueError(f"seq_lengths={seq_lengths!r} sum to {sum(lengths)}; expected the {n_samples} samples of x")
    return lengths
