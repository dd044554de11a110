"""The array backend: NumPy by default, CuPy when asked.

Compute code never imports numpy itself. It asks this module for the array module of its inputs
(``xp = get_array_module(x)``, the Chainer/CuPy idiom) and calls ``xp.*``; special functions that
NumPy lacks (the normal CDF) are reached through :func:`ndtr`, which picks ``scipy.special`` or
``cupyx.scipy.special``. Arrays leave the device only at the edges (plots, scikit-learn outputs)
through :func:`to_numpy`.

Choose CuPy with ``set_backend("cupy")`` or by exporting ``NUMPY_MOE_BACKEND=cupy`` before import.
Random draws always come from a ``numpy.random.Generator`` (seedable, identical on every backend) and
are moved to the device with :func:`asarray`.
"""
import contextlib
import math
import os

import numpy
import scipy.sparse
import scipy.special

try:  # SciPy's CSR x dense kernel, Y += A X (sparsetools; the public product allocates Y itself)
    from scipy.sparse._sparsetools import csr_matvecs as _csr_matvecs
except ImportError:  # pragma: no cover - another SciPy layout: the public product
    _csr_matvecs = None


_BACKENDS = ("numpy", "cupy")
_state = {"name": "numpy", "xp": numpy}


def _load_cupy():
    """Import CuPy and check that a GPU is visible; raise an actionable error otherwise."""
    try:
        import cupy
    except ImportError as err:
        raise ImportError(
            "backend 'cupy' was requested but CuPy is not installed: install the CuPy wheel that "
            "matches your CUDA (for example `pip install cupy-cuda12x`, or `pip install numpy-moe[cupy]`) "
            "or use set_backend('numpy')") from err
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:  # CUDA driver missing or broken: CuPy raises its own runtime errors
        raise RuntimeError(
            f"backend 'cupy' was requested but no GPU is usable ({err}); check the NVIDIA driver "
            "and CUDA_VISIBLE_DEVICES, or use set_backend('numpy')") from err
    if n_gpus < 1:
        raise RuntimeError("backend 'cupy' was requested but no GPU is visible (0 CUDA devices); "
                           "check CUDA_VISIBLE_DEVICES, or use set_backend('numpy')")
    return cupy


def set_backend(name):
    """Select the array library used for new arrays: ``"numpy"`` or ``"cupy"``."""
    if name not in _BACKENDS:
        raise ValueError(f"backend={name!r} must be one of {_BACKENDS}")
    _state["xp"] = numpy if name == "numpy" else _load_cupy()
    _state["name"] = name


def get_backend():
    """Name of the current backend, ``"numpy"`` or ``"cupy"``."""
    return _state["name"]


def get_array_module(*arrays):
    """The array module (numpy or cupy) for ``arrays``: the module of the arrays given, as CuPy's own
    ``get_array_module`` answers; the current backend when none of them is an array (nothing given, None,
    Python numbers or lists).

    A CuPy array among ``arrays`` selects CuPy whatever the current backend is, and a NumPy array (with no
    CuPy one) selects NumPy: arithmetic on host arrays stays on the host under the CuPy backend too, where
    CuPy would refuse them ("Unsupported type numpy.ndarray"). Layers move their inputs onto the backend
    first (:func:`numpy_moe.validation.check_input`, and the backward passes' gradients), so a model on the
    GPU takes NumPy arrays as well.
    """
    host = False
    for a in arrays:
        module = type(a).__module__
        if module.startswith("cupy"):
            import cupy
            return cupy
        if module == "numpy":  # numpy.ndarray (and its subclasses there) and NumPy's scalar types
            host = True
    return numpy if host else _state["xp"]


def asarray(a, dtype=None):
    """``a`` as an array of the current backend (a no-op for arrays already there).

    Under CuPy, anything that is neither a CuPy array nor already on the GPU (an object with
    ``__cuda_array_interface__``, such as a PyTorch CUDA tensor, which CuPy takes without a copy) is read
    by ``numpy.asarray`` first (a NumPy array, a list, a pandas object) and then copied to the GPU.
    """
    xp = _state["xp"]
    if xp is not numpy and not type(a).__module__.startswith("cupy") and not hasattr(a, "__cuda_array_interface__"):
        a = numpy.asarray(a)
    return xp.asarray(a, dtype=dtype)


def device_inputs(args, kwargs=None):
    """``args`` (a pass's positional arguments), or ``(args, kwargs)`` when ``kwargs`` is given, with every
    NumPy array moved to the GPU under the CuPy backend, so that a model there takes NumPy inputs, masks,
    keys and gradients whatever its first layer is; returned as they are, untouched, under NumPy."""
    xp = _state["xp"]
    if xp is numpy:
        return args if kwargs is None else (args, kwargs)
    args = tuple(xp.asarray(a) if isinstance(a, numpy.ndarray) else a for a in args)
    if kwargs is None:
        return args
    return args, {k: xp.asarray(v) if isinstance(v, numpy.ndarray) else v for k, v in kwargs.items()}


def on_backend(a):
    """``a`` moved onto the current backend unless it is already a CuPy array (then it is returned as is).

    For a gradient or target given to a model on the GPU as a NumPy array; on the NumPy backend a
    NumPy array is returned as is, and a list becomes an array.
    """
    if type(a).__module__.startswith("cupy"):
        return a
    return asarray(a)


def to_numpy(a):
    """``a`` as a NumPy array (copies from the GPU when ``a`` is a CuPy array)."""
    if type(a).__module__.split(".")[0] == "cupy":
        return a.get()
    return numpy.asarray(a)


def ndtr(x):
    """Standard normal CDF Φ(x), elementwise, on the backend of ``x``."""
    xp = get_array_module(x)
    if xp is numpy:
        return scipy.special.ndtr(x)
    import cupyx.scipy.special
    return cupyx.scipy.special.ndtr(x)


def linear_sum_assignment(value, maximize=False):
    """``scipy.optimize.linear_sum_assignment`` of a 2-D array, on the host: (rows, cols) as NumPy ints.

    There is no device solver, so a CuPy array is copied to the host first (BASE layers' balanced
    assignment, numpy_moe.gates.balanced).
    """
    import scipy.optimize
    return scipy.optimize.linear_sum_assignment(to_numpy(value), maximize=maximize)


def combine_rows(values, index, weight, out=None):
    """``out[n] += sum_k weight[n, k] values[index[n, k]]``: K rows of ``values`` gathered, weighted, summed.

    Parameters
    ----------
    values : (G, F). index : (N, K) integer row indices into ``values``. weight : (N, K).
    out : None, or an (N, F) array of the dtype of ``values`` that the sums are added to, in place (a
        block of rows of a larger C-contiguous array works: the threaded combine gives each thread one).

    Returns
    -------
    out : (N, F), of the dtype of ``values``: a new array when ``out`` is None.

    Notes
    -----
    On NumPy this is one product with a sparse matrix that has K entries per row (columns ``index[n]``,
    values ``weight[n]``), SciPy's CSR kernel ``csr_matvecs``, which adds into ``out`` while each output
    row's gathered rows are in cache: 1.4-4 times faster at the benchmark's shapes than a take of the N K
    rows followed by a contraction over K, which is what CuPy runs (and NumPy for small outputs, below
    16384 values, where the sparse product's set-up would cost more than it saves). The kernel releases
    the GIL, so blocks of rows can run on several threads. Into a new array the sums are exact as
    computed; into ``out`` the K products are added to out[n] one after the other.
    """
    xp = get_array_module(values)
    N, K = index.shape
    check_rows(index, values.shape[0], "index")
    weight = weight.astype(values.dtype, copy=False)
    if out is not None and (tuple(out.shape) != (N, values.shape[1]) or out.dtype != values.dtype):
        raise ValueError(f"out has shape {tuple(out.shape)} and dtype {out.dtype}; expected {(N, values.shape[1])} "
                         f"and {values.dtype}")
    if xp is numpy and N * values.shape[1] >= 16384:  # the CSR kernel does not check its column indices
        values = numpy.ascontiguousarray(values)
        if _csr_matvecs is None or out is not None and not out.flags.c_contiguous:
            S = scipy.sparse.csr_array((weight.reshape(-1), index.reshape(-1), numpy.arange(0, N * K + 1, K)),
                                       shape=(N, values.shape[0]))
            if out is None:
                return S @ values
            out += S @ values
            return out
        if out is None:
            out = numpy.zeros((N, values.shape[1]), dtype=values.dtype)
        _csr_matvecs(N, values.shape[0], values.shape[1], numpy.arange(0, N * K + 1, K, dtype=numpy.intp),
                     numpy.ascontiguousarray(index, dtype=numpy.intp).reshape(-1),
                     numpy.ascontiguousarray(weight).reshape(-1), values.reshape(-1), out.reshape(-1))
        return out
    part = xp.einsum("nk,nkf->nf", weight, xp.take(values, index.reshape(-1), axis=0).reshape(N, K, values.shape[1]))
    if out is None:
        return part
    out += part
    return out


def take_rows(a, index, out=None):
    """``a[index]`` along the first axis, into ``out`` when given: (len(index), ...) rows of ``a``.

    Every entry of ``index`` must lie in 0..len(a) - 1: the caller checks the range (once, for all its
    gathers; :func:`check_rows`). On NumPy the gather runs with ``mode="clip"``, because under the default
    ``mode="raise"`` NumPy gathers into a buffer and then copies it into ``out`` (its documentation says
    so): 2048 rows of 64 float32 took 30-35 µs against 99-108 µs. CuPy's take has no mode and no buffer.
    """
    xp = get_array_module(a)
    if xp is numpy:
        return numpy.take(a, index, axis=0, out=out, mode="clip")
    return xp.take(a, index, axis=0, out=out)


SUM_ROWS_PLAIN_BELOW = 512  # rows below which sum_rows is a.sum(axis=-2): as fast there, and its error small


def sum_rows(a, out=None):
    """The sum over the rows, a (..., N, H) -> (..., H) (into ``out`` when given): a bias gradient sum_n dy[n].

    NumPy's ``a.sum(axis=-2)`` over a C-ordered array adds the rows one after the other (its pairwise
    summation runs only along the contiguous axis), so in float32 its rounding error grows like N: about
    4e-6 of sum |a| at N = 16384 and 2e-5 at N = 1e6 for rows of mean 1. Here the N = nb B + r rows
    (B = isqrt(N)) are summed in two such sums of about sqrt(N) terms each: the nb blocks of B rows added
    one after the other as rows of B H values, ``(nb, B H) -> (B H,)``, then the B rows of that,
    ``(B, H) -> (H,)``, plus the r rows left: 3e-7 and 8e-7 at those sizes (MATH.md §1.1). The long rows
    also make it as fast as the plain sum or faster (20 times for 16 columns), with no BLAS call, so on any
    number of threads. Below SUM_ROWS_PLAIN_BELOW rows, and where the rows are the contiguous axis (a 2-D
    array in Fortran order, which NumPy sums pairwise), it is ``a.sum(axis=-2)``. The result is that sum
    up to rounding.
    """
    *lead, N, H = a.shape
    if N < SUM_ROWS_PLAIN_BELOW or a.ndim == 2 and a.T.flags.c_contiguous and not a.flags.c_contiguous:
        return a.sum(axis=-2, out=out)
    B = math.isqrt(N)
    nb = N // B
    n = nb * B
    blocks = a[..., :n, :].reshape(*lead, nb, B * H).sum(axis=-2)  # (..., B H): row r of every block, summed
    s = blocks.reshape(*lead, B, H).sum(axis=-2, out=out)  # (..., H)
    if n < N:
        s += a[..., n:, :].sum(axis=-2)
    return s


def check_rows(index, n_rows, name="rows"):
    """Raise IndexError unless every entry of ``index`` is a row of an array of ``n_rows`` rows."""
    if index.size and not (0 <= int(index.min()) and int(index.max()) < n_rows):
        raise IndexError(f"{name} has entries {int(index.min())}..{int(index.max())}; the array has {n_rows} rows")


def default_rng(seed=None):
    """A ``numpy.random.Generator``: ``seed`` may be None, an int >= 0 or a Generator (returned as is).

    A SeedSequence or BitGenerator is accepted as NumPy accepts it; a negative int is a ValueError and
    anything else a TypeError, each naming ``seed``.
    """
    if isinstance(seed, (numpy.random.Generator, numpy.random.SeedSequence, numpy.random.BitGenerator)):
        return numpy.random.default_rng(seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, numpy.integer))):
        raise TypeError(f"seed={seed!r} must be None, an int >= 0 or a numpy.random.Generator")
    if seed is not None and seed < 0:
        raise ValueError(f"seed={seed!r} must be None, an int >= 0 or a numpy.random.Generator")
    return numpy.random.default_rng(seed)


def is_sparse(a):
    """True for a SciPy sparse matrix or array (which the layers do not take)."""
    return scipy.sparse.issparse(a)


def is_floating_dtype(dtype):
    """True for float16/32/64 dtypes (the backend-independent test of a float dtype)."""
    return numpy.issubdtype(numpy.dtype(dtype), numpy.floating)


def result_dtype(dtype):
    """Validate a parameter dtype (float32 or float64) and return it as a NumPy dtype."""
    try:
        dt = numpy.dtype(dtype)
    except TypeError as err:
        raise TypeError(f"dtype={dtype!r} is not a dtype; expected float32 or float64") from err
    if dt not in (numpy.float32, numpy.float64):
        raise TypeError(f"dtype={dt} must be float32 or float64")
    return dt


def quiet_overflow(xp=None):
    """A context in which the array module ``xp`` (default: the current backend's) neither warns about nor raises
    on overflow and invalid operations, for code that checks its results itself (an inf it then reports);
    a no-op context where the module has no ``errstate`` (CuPy does not flag them)."""
    errstate = getattr(xp or get_array_module(), "errstate", None)
    return errstate(over="ignore", invalid="ignore") if errstate else contextlib.nullcontext()


_env = os.environ.get("NUMPY_MOE_BACKEND")
if _env:
    if _env not in _BACKENDS:
        raise ValueError(f"the environment variable NUMPY_MOE_BACKEND={_env!r} must be one of {_BACKENDS} "
                         "(lower case), or unset for NumPy")
    set_backend(_env)

