"""A stand-in for CuPy on a machine without a GPU, for tests only (``tests/test_fake_cupy.py``).

NumPy computes underneath; on top, the refusals by which CuPy tells a program that mixes host and device
arrays: a NumPy array (not a scalar) given to a CuPy function, ufunc or operator raises TypeError
("Unsupported type"), and assigning one into a CuPy array raises ValueError ("non-scalar numpy.ndarray
cannot be used for fill"). Arrays are ``cupy.ndarray``, a NumPy subclass whose type lives in module
``cupy``, with ``.get()``; reductions return 0-d arrays, as CuPy's do. What it cannot show: CuPy's refusal
of ``numpy.asarray(device_array)`` (NumPy converts a subclass without asking it), kernels' rounding, and
functions NumPy has that CuPy lacks (only ``errstate`` is hidden, as CuPy has none). So it finds where a
program mixes the two kinds of array, not whether it runs on a GPU.
"""
import types as _types

import numpy as _np

__version__ = "0.0-fake"


class ndarray(_np.ndarray):
    """A "device" array: NumPy memory, CuPy's type and refusals."""

    def get(self):
        """A NumPy copy (CuPy's device-to-host copy)."""
        return _np.array(self.view(_np.ndarray))

    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kwargs):
        _refuse(inputs, f"{ufunc.__name__}.{method}")
        if out is not None:
            _refuse(out, f"{ufunc.__name__}.{method} out=")
            kwargs["out"] = tuple(_host(o) for o in out)
        result = getattr(ufunc, method)(*(_host(a) for a in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        _refuse(args, func.__name__)
        _refuse(kwargs.values(), func.__name__)
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    def __setitem__(self, key, value):
        if _is_host_array(value):
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        _np.ndarray.__setitem__(self.view(_np.ndarray), _unwrap(key), _host(value))

    def __getitem__(self, key):
        _refuse([key] if not isinstance(key, tuple) else key, "__getitem__", allow_index=True)
        return _wrap(_np.ndarray.__getitem__(self.view(_np.ndarray), _unwrap(key)))


ndarray.__module__ = "cupy"


def _is_host_array(a):
    return isinstance(a, _np.ndarray) and not isinstance(a, ndarray) and a.ndim > 0


def _refuse(values, where, allow_index=False):
    for a in values:
        if isinstance(a, (list, tuple)):
            _refuse(a, where, allow_index)
        elif _is_host_array(a) and not (allow_index and a.dtype.kind in "biu"):
            raise TypeError(f"Unsupported type {type(a)} (fake CuPy: a NumPy array given to {where})")


def _host(a):
    return a.view(_np.ndarray) if isinstance(a, ndarray) else a


def _unwrap(value):
    if isinstance(value, ndarray):
        return value.view(_np.ndarray)
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wrap(value):
    if type(value) is _np.ndarray:
        return value.view(ndarray)
    if isinstance(value, _np.generic) and not isinstance(value, (_np.str_, _np.bytes_)):
        return _np.asarray(value).view(ndarray)  # CuPy's reductions return 0-d arrays
    if isinstance(value, tuple):
        return type(value)(*(_wrap(v) for v in value)) if hasattr(value, "_fields") else tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class _Ufunc:
    def __init__(self, ufunc):
        self._ufunc = ufunc
        self.__name__ = ufunc.__name__

    def __call__(self, *args, **kwargs):
        return _call(self._ufunc, args, kwargs, self.__name__)

    def __getattr__(self, method):
        attr = getattr(self._ufunc, method)
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: _call(attr, args, kwargs, f"{self.__name__}.{method}")


def _call(func, args, kwargs, name, host_ok=False):
    if not host_ok:
        _refuse(args, name)
        _refuse(kwargs.values(), name)
    out = kwargs.get("out")
    result = func(*_unwrap(args), **_unwrap(kwargs))
    if out is not None and isinstance(out, ndarray):
        return out
    return _wrap(result)


_HOST_OK = {"asarray", "array", "asanyarray"}  # CuPy copies a NumPy array to the device here
_HIDDEN = {"errstate", "seterr", "geterr"}  # CuPy has no floating-point error state


def _function(name, func):
    if name in _HOST_OK:
        def f(a, dtype=None, *args, **kwargs):
            if isinstance(a, ndarray) and dtype in (None, a.dtype) and not args and not kwargs:
                return a
            return _call(func, (_host(a), dtype) + args, kwargs, name, host_ok=True)
    else:
        def f(*args, **kwargs):
            return _call(func, args, kwargs, name)
    f.__name__ = name
    return f


def _proxy(module, prefix):
    proxy = _types.ModuleType(f"cupy.{prefix}")
    for name in dir(module):
        obj = getattr(module, name)
        if callable(obj) and not isinstance(obj, type):
            setattr(proxy, name, _function(name, obj))
        else:
            setattr(proxy, name, obj)
    return proxy


linalg = _proxy(_np.linalg, "linalg")


def __getattr__(name):
    if name in _HIDDEN or name.startswith("__"):
        raise AttributeError(f"module 'cupy' has no attribute {name!r}")
    obj = getattr(_np, name)
    if isinstance(obj, _np.ufunc):
        value = _Ufunc(obj)
    elif callable(obj) and not isinstance(obj, type):
        value = _function(name, obj)
    else:
        value = obj  # dtypes, constants, finfo
    globals()[name] = value
    return value


class _Device:
    def __init__(self, i=0):
        self.id = i

    def synchronize(self):
        pass


cuda = _types.SimpleNamespace(runtime=_types.SimpleNamespace(getDeviceCount=lambda: 1), Device=_Device)
