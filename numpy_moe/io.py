"""Save and load models as ``.npz``: configuration as JSON, parameters as arrays, never pickle.

``save(obj, path)`` writes any Module (an MoE in any configuration, Linear, MLP, Sequential, the classic
local-experts model, an image model) or a fitted numpy_moe estimator, alone or as a step of a
scikit-learn Pipeline (``make_pipeline(StandardScaler(), MoEClassifier())``); ``load(path)`` rebuilds it;
``load_into(model, path)`` copies a file's parameters into an existing model of the same architecture.

A file is an ordinary ``.npz`` archive, readable with ``numpy.load(path, allow_pickle=False)``:

- ``__meta__``: a JSON string ``{"format": "numpy-moe", "version": 1, "object": ...}``. A module is
  ``{"class": "numpy_moe.moe.MoE", "config": {...}, "params": "<prefix>"}``: its class, the arguments of
  its constructor (``Module.get_config()``; a nested module, such as the layers of a Sequential, appears as
  ``{"__module__": {"class": ..., "config": ...}}``), and where its parameters are. An estimator is
  ``{"class": ..., "estimator": {get_params(deep=False)}, "attributes": {fitted attributes ending in "_"}}``;
  an estimator among the parameters (a Pipeline's steps) is ``{"__estimator__": {...}}``, and a fitted
  array attribute is ``{"__array__": "<its entry>"}``.
- one array per parameter, named ``<prefix><dotted name>`` (``gate.W``, ``experts.W1``; inside an
  estimator ``model_/gate.W``), in the parameter's own dtype, so a round trip is bit-exact.

Loading rebuilds a module with ``Cls.from_config(config)`` and overwrites every parameter, so no new
Module subclass needs saving code. The ``seed`` argument is not stored: it only drew the initial weights,
which the stored ones replace. A class is looked up by its dotted name among the ``numpy_moe`` and
scikit-learn modules (imported on demand) and the modules already imported (a model class defined in
your own script); nothing else is imported.
Training state that is not a parameter (an optimiser's moments) is not saved: ``partial_fit`` after
loading starts a fresh optimiser.
"""
import importlib
import json
import sys
import zipfile

import numpy

from .backend import asarray, to_numpy
from .layers import Module

FORMAT, VERSION = "numpy-moe", 1


def save(obj, path):
    """Write a Module or an estimator to ``path`` (the name is used as given); returns ``path``."""
    arrays = {}
    if isinstance(obj, Module):
        record = _encode_module(obj, arrays, "")
    elif hasattr(obj, "get_params"):
        record = _encode_estimator(obj, arrays, "")
    else:
        raise TypeError(f"cannot save a {type(obj).__name__}: expected a numpy_moe Module or estimator")
    meta = json.dumps({"format": FORMAT, "version": VERSION, "object": record})
    with open(path, "wb") as f:
        numpy.savez(f, __meta__=numpy.array(meta), **arrays)
    return path


def load(path):
    """The Module or estimator saved in ``path``, rebuilt with its stored parameters."""
    record, arrays = _read(path)
    return _decode_object(record, arrays, path)


def load_into(model, path):
    """Copy the parameters saved in ``path`` into ``model``, which must have the file's architecture.

    Raises ValueError when the file holds another class, another configuration (for example another
    ``n_experts`` or ``top_k``), or parameters of other names, shapes or dtypes, or non-finite values;
    ``model`` is left untouched then. Returns ``model``.
    """
    record, arrays = _read(path)
    if "config" not in record:
        raise ValueError(f"{path} holds an estimator ({record['class']}), not a module: use load(path)")
    mine = _encode_module(model, None, "")
    if mine["class"] != record["class"]:
        raise ValueError(f"{path} holds a {record['class']}; the model is a {mine['class']}")
    keys = sorted(set(record["config"]) | set(mine["config"]))
    diff = [f"{k}={record['config'].get(k)!r} in the file, {mine['config'].get(k)!r} in the model"
            for k in keys if record["config"].get(k) != mine["config"].get(k)]
    if diff:
        raise ValueError(f"{path} holds a {record['class']} of another architecture: " + "; ".join(diff))
    _assign(model, arrays, record["params"], path)
    return model


# ----- writing ------------------------------------------------------------------------------------
def _class_name(obj):
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _encode_module(m, arrays, prefix):
    """JSON record of a Module; with an ``arrays`` dict, its parameters are stored there under ``prefix``."""
    config = {k: v for k, v in m.get_config().items() if k != "seed"}
    record = {"class": _class_name(m), "config": _encode(config, "config", None, prefix)}
    if arrays is not None:
        record["params"] = prefix
        for name, p in m.named_parameters():
            arrays[prefix + name] = to_numpy(p)
    return record


def _encode_estimator(est, arrays, prefix):
    """JSON record of an estimator: its parameters (fitted steps of a Pipeline included) and its fitted
    attributes (names ending in ``_``), arrays stored under ``prefix``."""
    fitted = {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_")}
    return {"class": _class_name(est),
            "estimator": _encode(est.get_params(deep=False), "parameters", arrays, f"{prefix}params/"),
            "attributes": {k: _encode(v, k, arrays, f"{prefix}{k}/") for k, v in fitted.items()}}


def _encode(value, name, arrays, prefix):
    """``value`` as JSON. With an ``arrays`` dict (fitted attributes) arrays and Modules' parameters are
    stored there under ``prefix``; without one (constructor arguments) a Module is its class and config."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, numpy.dtype) or isinstance(value, type) and issubclass(value, numpy.generic):
        return numpy.dtype(value).name
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{name}[{i}]", arrays, f"{prefix}{i}/") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _encode(v, f"{name}[{k!r}]", arrays, f"{prefix}{k}/") for k, v in value.items()}
    if isinstance(value, Module):
        return {"__module__": _encode_module(value, arrays, prefix)}
    if hasattr(value, "get_params") and not isinstance(value, type) and arrays is not None:
        return {"__estimator__": _encode_estimator(value, arrays, prefix)}  # a step of a Pipeline
    if hasattr(value, "__array__") and arrays is not None:
        a = to_numpy(value)
        if a.dtype.kind == "O" and all(isinstance(v, str) for v in a.ravel()):
            return {"__strings__": a.tolist()}  # feature names, string labels from pandas
        if a.dtype.kind not in "biufcUS":
            raise TypeError(f"cannot save {name}: an array of dtype {a.dtype} needs pickle")
        arrays[prefix[:-1]] = a
        return {"__array__": prefix[:-1]}
    raise TypeError(f"cannot save {name}={value!r}: expected numbers, strings, lists, dicts, Modules or "
                    f"(for fitted attributes) arrays; a {type(value).__name__} has no JSON form")


# ----- reading ------------------------------------------------------------------------------------
def _read(path):
    """(object record, {name: array}) from a numpy-moe file, with errors that say what is wrong."""
    try:
        npz = numpy.load(path, allow_pickle=False)
        if not hasattr(npz, "files"):
            raise ValueError("it holds a single array, not an .npz archive")
        with npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a complete numpy-moe .npz file (truncated or corrupt?): {err}") from err
    if "__meta__" not in arrays:
        raise ValueError(f"{path} is an .npz file but not a numpy-moe model: it has no __meta__ entry")
    meta = json.loads(str(arrays.pop("__meta__")))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path} has format {meta.get('format')!r} version {meta.get('version')!r}; "
                         f"expected {FORMAT!r} version {VERSION}")
    return meta["object"], arrays


def _find_class(name, path):
    """The class named ``module:qualname``, importing numpy_moe and scikit-learn modules on demand."""
    module_name, _, qualname = name.partition(":")
    if module_name.split(".")[0] in ("numpy_moe", "sklearn"):
        try:
            importlib.import_module(module_name)
        except ImportError:
            pass  # reported below as a missing class
    obj = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, type):
        raise ValueError(f"{path} holds a {name}, which is not defined here: import the module that "
                         "defines it before loading")
    return obj


def _decode(value, arrays, path):
    if isinstance(value, list):
        return [_decode(v, arrays, path) for v in value]
    if isinstance(value, dict):
        if "__module__" in value or "__estimator__" in value:
            return _decode_object(value.get("__module__") or value["__estimator__"], arrays, path)
        if "__array__" in value:
            return arrays[value["__array__"]]
        if "__strings__" in value:
            return numpy.array(value["__strings__"], dtype=object)
        return {k: _decode(v, arrays, path) for k, v in value.items()}
    return value


def _decode_object(record, arrays, path):
    cls = _find_class(record["class"], path)
    if "config" not in record:
        est = cls(**_decode(record["estimator"], arrays, path))
        for k, v in record["attributes"].items():
            setattr(est, k, _decode(v, arrays, path))
        return est
    if not issubclass(cls, Module):
        raise ValueError(f"{path} holds a {record['class']}, which is not a numpy_moe Module")
    try:
        model = cls.from_config(_decode(record["config"], arrays, path))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: cannot rebuild {record['class']} from its stored configuration: {err}") from err
    if "params" in record:
        _assign(model, arrays, record["params"], path)
    return model


def _assign(model, arrays, prefix, path):
    """Overwrite every parameter of ``model`` with ``arrays[prefix + name]``, after checking them all."""
    params = dict(model.named_parameters())
    stored = {k[len(prefix):]: a for k, a in arrays.items() if k.startswith(prefix)} if prefix else arrays
    missing, extra = sorted(set(params) - set(stored)), sorted(set(stored) - set(params))
    if missing or extra:
        raise ValueError(f"{path} does not match the architecture of {type(model).__name__}: parameters "
                         f"missing from the file {missing}, parameters the model does not have {extra}")
    for name, p in params.items():
        a = stored[name]
        if a.shape != tuple(p.shape) or a.dtype != p.dtype:
            raise ValueError(f"{path}: parameter {name!r} is {a.dtype}{list(a.shape)} in the file; the model "
                             f"expects {p.dtype}{list(p.shape)}")
        if not numpy.isfinite(a).all():
            raise ValueError(f"{path}: parameter {name!r} contains NaN or inf ({int((~numpy.isfinite(a)).sum())} "
                             "of its values); refusing to load a diverged model")
    for name, p in params.items():
        p[...] = asarray(stored[name])
