"""Parameter constructors and the parameter budget: every parameter is created here, its size checked
against the budget of :func:`parameter_budget` before anything is allocated (numpy_moe.io builds models
from untrusted files this way), and, budget or not, against this machine's physical memory
(:func:`machine_memory`): a size no machine here can hold is a :class:`ParameterBudgetError` (a ValueError)
at once, not a MemoryError, an "array is too big" from NumPy, or a constructor that loops or fills memory
first. Constructors that build many sub-modules from one count (towers per task, blocks per depth) call
:func:`check_budget` on their total before the first."""
import contextlib
import contextvars
import functools
import math
import operator
import os

from ..backend import asarray, get_array_module, result_dtype

_budget = contextvars.ContextVar("numpy_moe_parameter_budget", default=None)


class ParameterBudgetError(ValueError):
    """A module's parameters would exceed the budget of :func:`parameter_budget`."""


@contextlib.contextmanager
def parameter_budget(n_bytes):
    """Within this block, modules may allocate at most ``n_bytes`` of parameters in all.

    The parameter constructors (:func:`init_weight`, :func:`zeros_param`, ...) check each request before
    allocating and raise :class:`ParameterBudgetError` when it does not fit. numpy_moe.io builds models
    from files this way, with the bytes of the parameters the file actually holds as the budget.
    """
    token = _budget.set([int(n_bytes)])
    try:
        yield
    finally:
        _budget.reset(token)


@functools.cache
def machine_memory():
    """This machine's physical memory in bytes (``os.sysconf``), or None where the platform does not say."""
    try:
        n_bytes = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name
        return None
    return n_bytes if n_bytes > 0 else None


def check_budget(shape, dtype, what=None):
    """Raise :class:`ParameterBudgetError` if a parameter of ``shape`` and ``dtype`` would not fit in what is
    left of the current :func:`parameter_budget` (if any) or is larger than this machine's physical memory,
    without charging it: for a constructor whose work before creating that parameter, or those parameters,
    grows with their size. ``what`` names them in the message (default: "a parameter of shape ...").
    Returns the size in bytes."""
    # a size may be any integer (a NumPy integer from an array's shape, arithmetic on sizes): operator.index
    shape = (operator.index(shape),) if hasattr(shape, "__index__") else tuple(int(s) for s in shape)
    n_bytes = math.prod(shape) * result_dtype(dtype).itemsize
    what = what or f"a parameter of shape {shape}"
    left = _budget.get()
    if left is not None and n_bytes > left[0]:
        raise ParameterBudgetError(f"{what} ({n_bytes} bytes) does not fit in the {left[0]} bytes of parameters "
                                   "left in the budget")
    memory = machine_memory()
    if memory is not None and n_bytes > memory:
        raise ParameterBudgetError(f"{what} ({n_bytes} bytes) cannot be allocated: this machine has {memory} "
                                   "bytes of physical memory")
    return n_bytes


def _claim(shape, dtype):
    """Charge a parameter of ``shape`` and ``dtype`` to the current budget, if any, before allocating it."""
    n_bytes = check_budget(shape, dtype)
    left = _budget.get()
    if left is not None:
        left[0] -= n_bytes


def zeros_param(shape, dtype):
    """A parameter of zeros on the current backend (charged to the :func:`parameter_budget`)."""
    _claim(shape, dtype)
    return get_array_module().zeros(shape, dtype=dtype)


def ones_param(shape, dtype):
    """A parameter of ones on the current backend (charged to the :func:`parameter_budget`)."""
    _claim(shape, dtype)
    return get_array_module().ones(shape, dtype=dtype)


def normal_param(rng, std, shape, dtype):
    """``std`` times a standard normal draw from ``rng`` in float64, cast to ``dtype`` (budget-checked)."""
    _claim(shape, dtype)
    return asarray(std * rng.standard_normal(shape), dtype=dtype)


def init_weight(rng, fan_in, fan_out, shape, init, dtype):
    """Draw a weight of ``shape`` in float64 from ``rng`` with He or Glorot scale, cast to ``dtype``."""
    if init == "he":
        std = (2.0 / fan_in) ** 0.5
    elif init == "glorot":
        std = (2.0 / (fan_in + fan_out)) ** 0.5
    else:
        raise ValueError(f"init={init!r} must be 'he' or 'glorot'")
    return normal_param(rng, std, shape, dtype)
