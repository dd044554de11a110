"""JSON records of Modules and estimators: encoding, a strict check of untrusted records, and rebuilding.

A module record is ``{"class": "module:qualname", "config": {...}, "params": "<prefix>"}`` (plus
``"buffers": "<prefix>"`` when the module has buffers); an estimator record is ``{"class": ...,
"estimator": {get_params(deep=False)}, "attributes": {fitted attributes}}``. Inside a record a value is
JSON, or one of five tagged objects: ``{"__module__": module record}``, ``{"__estimator__": estimator
record}``, ``{"__array__": "<entry>"}``, ``{"__strings__": [str, ...]}`` and ``{"__tuple__": [...]}`` (a
tuple, which scikit-learn's parameter checks tell from a list).

Loading checks the whole record tree first (:func:`check_object`): its shape, its depth, every class
against the registry and every array reference against the archive. Nothing is constructed before that
check has passed, and nothing outside the registry is ever constructed.
"""
import bisect
import re

import numpy

from ..backend import asarray, to_numpy
from ..layers import Module, ParameterBudgetError, parameter_budget
from .archive import FileError
from .registry import UNSAVABLE, class_name, lookup
from .state import BIT_GENERATORS, bit_generator, decode_optimizer, encode_optimizer, generator_state

MAX_DEPTH = 64
BUFFER_TAG = "buffer:"
TRAINING_TAG = "training/"  # an estimator's optimiser state: "<prefix>training/optimizer/<slot>/<parameter>"
_ATTRIBUTE = re.compile(r"[A-Za-z][A-Za-z0-9_]*_\Z")  # fitted attributes: public names ending in "_"
_TAGS = ("__module__", "__estimator__", "__array__", "__strings__", "__tuple__")


# ----- writing ------------------------------------------------------------------------------------
def encode_module(m, arrays, prefix):
    """Record of a Module; with an ``arrays`` dict, its parameters and buffers are stored there."""
    reason = UNSAVABLE.get(class_name(type(m)))
    if reason is not None:
        raise TypeError(f"cannot save {type(m).__name__}: {reason}")
    config = {k: v for k, v in m.get_config().items() if k != "seed"}
    record = {"class": class_name(type(m)), "config": encode(config, "config", None, prefix)}
    if arrays is not None:
        record["params"] = prefix
        for name, p in m.named_parameters():
            arrays[prefix + name] = to_numpy(p)
        buffers = dict(m.named_buffers())
        if buffers:
            record["buffers"] = prefix + BUFFER_TAG
            for name, b in buffers.items():
                arrays[prefix + BUFFER_TAG + name] = to_numpy(b)
    return record


def encode_estimator(est, arrays, prefix):
    """Record of an estimator: its parameters (fitted Pipeline steps included) and fitted attributes."""
    if hasattr(est, "steps") and getattr(est, "memory", None) is not None:
        raise ValueError(f"refusing to save a {type(est).__name__} with memory={est.memory!r}: loading refuses a "
                         "cache directory (a file may not choose where a refit writes); set memory=None before "
                         "saving and set it again after loading")
    fitted = {k: v for k, v in vars(est).items() if k.endswith("_") and not k.startswith("_")}
    record = {"class": class_name(type(est)),
              "estimator": encode(est.get_params(deep=False), "parameters", arrays, f"{prefix}params/"),
              "attributes": {k: encode(v, k, arrays, f"{prefix}{k}/") for k, v in fitted.items()}}
    hook = getattr(est, "_training_state", None)
    state = hook() if callable(hook) and arrays is not None else None
    if state is not None and type(state[1].bit_generator).__name__ in BIT_GENERATORS:
        # a numpy_moe estimator's optimiser and generator, so that partial_fit after loading goes on bit for bit;
        # a generator of another kind (random_state=Generator(MT19937(...))) cannot be checked when read: then
        # the file holds none, and partial_fit after loading starts afresh from random_state
        optimizer, rng = state
        base = f"{prefix}{TRAINING_TAG}"
        record["training"] = {"prefix": base, "rng": generator_state(rng, "random state"),
                              "optimizer": encode_optimizer(optimizer, est.model_, arrays, base + "optimizer/")}
    return record


def encode(value, name, arrays, prefix):
    """``value`` as JSON. With an ``arrays`` dict (fitted attributes) arrays and Modules' parameters are
    stored there under ``prefix``; without one (constructor arguments) a Module is its class and config."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, numpy.generic):
        return value.item()
    if isinstance(value, numpy.dtype) or isinstance(value, type) and issubclass(value, numpy.generic):
        return numpy.dtype(value).name
    if isinstance(value, (list, tuple)):
        items = [encode(v, f"{name}[{i}]", arrays, f"{prefix}{i}/") for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if isinstance(value, dict) and all(isinstance(k, str) and not k.startswith("__") for k in value):
        return {k: encode(v, f"{name}[{k!r}]", arrays, f"{prefix}{k}/") for k, v in value.items()}
    if isinstance(value, Module):
        return {"__module__": encode_module(value, arrays, prefix)}
    if hasattr(value, "get_params") and not isinstance(value, type) and arrays is not None:
        return {"__estimator__": encode_estimator(value, arrays, prefix)}  # a step of a Pipeline
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


# ----- checking an untrusted record ---------------------------------------------------------------
class _Checker:
    """Walks a record tree and raises FileError at the first thing that is not allowed."""

    def __init__(self, path, archive):
        self.path, self.archive = path, archive
        self.prefixes, self.entries = [], []  # (params prefix, where) of modules with arrays; (entry, where)

    def fail(self, where, what):
        return FileError(f"{self.path}: {where}: {what}")

    def claims(self):
        """Each array of the file may be read by one record only: every ``__array__`` entry once, and no
        module's parameter prefix inside another's or over an ``__array__`` entry. Otherwise a few KB of
        records could rebuild the same parameters (or read the same array) any number of times, each within
        max_bytes, together far past it."""
        prefixes = sorted(self.prefixes)
        for (a, where_a), (b, where_b) in zip(prefixes, prefixes[1:]):
            if b.startswith(a):  # sorted: a prefix relation between any two shows between neighbours
                raise self.fail(where_b, f"its parameters {b!r} overlap those of {where_a} ({a!r}); every array "
                                         "of a file belongs to one record")
        seen, keys = {}, [p for p, _ in prefixes]
        for entry, where in self.entries:
            if entry in seen:
                raise self.fail(where, f"refers to array {entry!r}, which {seen[entry]} already uses; every array "
                                       "of a file belongs to one record")
            seen[entry] = where
            i = bisect.bisect_right(keys, entry) - 1  # the only candidate once no prefix holds another
            if i >= 0 and entry.startswith(keys[i]):
                raise self.fail(where, f"refers to array {entry!r}, a parameter of {prefixes[i][1]}; every array "
                                       "of a file belongs to one record")

    def object(self, record, where, depth, kind=None, with_arrays=True):
        """A module or estimator record; ``kind`` "module" or "estimator" restricts which."""
        if depth > MAX_DEPTH:
            raise self.fail(where, f"nested more than {MAX_DEPTH} levels deep")
        if not isinstance(record, dict):
            raise self.fail(where, f"expected an object record (a JSON object), found {type(record).__name__}")
        name = record.get("class")
        if not isinstance(name, str):
            raise self.fail(where, f"the record has no class name (\"class\": {name!r})")
        cls = lookup(name)
        if cls is None:
            raise self.fail(where, f"class {name!r} is not registered as loadable. Files may only name "
                                   "numpy_moe's classes, the scikit-learn classes of "
                                   "numpy_moe.io.registry.SKLEARN_CLASSES and classes your program passed to "
                                   "numpy_moe.io.register(cls) before loading")
        if issubclass(cls, Module):
            if kind == "estimator":
                raise self.fail(where, f"{name} is a Module where an estimator is expected")
            # a module with its own arrays (the saved object, a fitted model_) names where its parameters are;
            # a module inside a configuration has none: it is rebuilt under its container's parameter budget
            if with_arrays:
                self.keys(record, where, {"class", "config", "params"}, {"buffers"})
            else:
                self.keys(record, where, {"class", "config"}, set())
            if not isinstance(record["config"], dict):
                raise self.fail(where, f"config is a {type(record['config']).__name__}, not a JSON object")
            for key in ("params", "buffers"):
                if key in record and not isinstance(record[key], str):
                    raise self.fail(where, f"{key} is {record[key]!r}, not an entry prefix")
            if with_arrays:
                self.prefixes.append((record["params"], where))
                if "buffers" in record and record["buffers"] != record["params"] + BUFFER_TAG:
                    raise self.fail(where, f"buffers is {record['buffers']!r}; a module's buffers are stored under "
                                           f"its parameters, {record['params'] + BUFFER_TAG!r}")
            self.value(record["config"], f"{where}.config", depth + 1, ("__module__", "__tuple__"))
        else:
            if kind == "module":
                raise self.fail(where, f"{name} is an estimator where a Module is expected")
            self.keys(record, where, {"class", "estimator", "attributes"}, {"training"})
            if "training" in record:
                self.training(record["training"], f"{where}.training", cls)
            params, attributes = record["estimator"], record["attributes"]
            if not isinstance(params, dict) or not isinstance(attributes, dict):
                raise self.fail(where, "estimator parameters and attributes must be JSON objects, found "
                                       f"{type(params).__name__} and {type(attributes).__name__}")
            allowed = set(cls._get_param_names()) if hasattr(cls, "_get_param_names") else None
            if allowed is not None and not set(params) <= allowed:
                raise self.fail(where, f"{name} takes no parameters {sorted(set(params) - allowed)}")
            self.value(params, f"{where}.estimator", depth + 1, ("__estimator__", "__tuple__"))
            for attr, v in attributes.items():
                if not _ATTRIBUTE.match(attr):
                    raise self.fail(where, f"{attr!r} is not a fitted attribute name (a public name ending in _)")
                self.value(v, f"{where}.{attr}", depth + 1, _TAGS if with_arrays else ())

    def training(self, record, where, cls):
        """An estimator's training state: its shape here, and its arrays claimed (each array of a file belongs to
        one record); the values are checked against the rebuilt model when it is read (Builder.estimator)."""
        if not callable(getattr(cls, "_restore_training_state", None)):
            raise self.fail(where, f"{cls.__name__} keeps no training state")
        if not isinstance(record, dict):
            raise self.fail(where, f"expected a JSON object, found {type(record).__name__}")
        self.keys(record, where, {"prefix", "optimizer", "rng"}, set())
        optimizer = record["optimizer"]
        if not isinstance(record["prefix"], str) or not isinstance(optimizer, dict):
            raise self.fail(where, "prefix must be a string and optimizer a JSON object")
        state = optimizer.get("state")
        if not isinstance(state, dict) or not all(isinstance(v, dict) for v in state.values()):
            raise self.fail(where, "optimizer.state must map each slot to an object parameter name -> array entry")
        for slot, entries in state.items():
            for name, entry in entries.items():
                if not isinstance(entry, str) or entry == "__meta__" or entry not in self.archive.headers:
                    raise self.fail(where, f"optimizer.state[{slot!r:.40}][{name!r:.80}] refers to array "
                                           f"{entry!r:.80}, which the file does not hold")
                self.entries.append((entry, where))

    def keys(self, record, where, required, optional):
        missing, extra = required - set(record), set(record) - required - optional
        if missing or extra:
            raise self.fail(where, f"record keys missing {sorted(missing)}, unexpected {sorted(extra)}")

    def value(self, v, where, depth, tags):
        if depth > MAX_DEPTH:
            raise self.fail(where, f"nested more than {MAX_DEPTH} levels deep")
        if v is None or isinstance(v, (bool, int, float, str)):
            return
        if isinstance(v, list):
            for i, item in enumerate(v):
                self.value(item, f"{where}[{i}]", depth + 1, tags)
            return
        if not isinstance(v, dict):  # json.loads gives nothing else; a bug guard
            raise self.fail(where, f"unexpected {type(v).__name__}")
        special = [k for k in v if k.startswith("__")]
        if not special:
            for k, item in v.items():
                self.value(item, f"{where}[{k!r}]", depth + 1, tags)
            return
        tag = special[0]
        if len(v) != 1 or tag not in tags:
            raise self.fail(where, f"keys {sorted(special)} are not allowed here (allowed tags: {list(tags)})")
        content = v[tag]
        if tag == "__module__":
            self.object(content, where, depth + 1, "module", with_arrays="__array__" in tags)
        elif tag == "__estimator__":
            self.object(content, where, depth + 1, "estimator", with_arrays=True)
        elif tag == "__tuple__":
            if not isinstance(content, list):
                raise self.fail(where, "__tuple__ must hold a list")
            self.value(content, where, depth + 1, tags)
        elif tag == "__array__":
            if not isinstance(content, str) or content == "__meta__" or content not in self.archive.headers:
                raise self.fail(where, f"refers to array {content!r}, which the file does not hold")
            self.entries.append((content, where))
        elif not isinstance(content, list) or not all(isinstance(s, str) for s in content):
            raise self.fail(where, "__strings__ must be a list of strings")


def check_object(record, path, archive):
    """Raise FileError unless ``record`` is a well-formed tree of registered classes and held arrays."""
    checker = _Checker(path, archive)
    checker.object(record, "object", 0)
    checker.claims()


# ----- rebuilding ---------------------------------------------------------------------------------
class Builder:
    """Rebuilds checked records from an :class:`.Archive`; parameters are read only after their shapes and
    dtypes match the rebuilt model's."""

    def __init__(self, path, archive):
        self.path, self.archive = path, archive

    def object(self, record):
        cls = lookup(record["class"])
        if issubclass(cls, Module):
            return self.module(cls, record)
        return self.estimator(cls, record)

    def module(self, cls, record):
        prefixes = [record[k] for k in ("params", "buffers") if k in record]
        held = sum(n for name, n in self.archive.n_bytes.items()
                   if name != "__meta__" and any(name.startswith(p) for p in prefixes))
        try:
            with parameter_budget(held) if "params" in record else _no_budget():
                model = cls.from_config(self.value(record["config"]))
        except FileError:
            raise
        except ParameterBudgetError as err:
            hint = "" if "buffers" in record else ("; the file has no buffers: if it was written by an earlier "
                                                   "version for a model that now has buffers, re-save it")
            raise FileError(f"{self.path}: the configuration of {record['class']} needs more parameters than "
                            f"the file holds ({held} bytes): {err}{hint}") from err
        except Exception as err:  # an untrusted configuration: any failure of the constructor is the file's
            raise FileError(f"{self.path}: cannot rebuild {record['class']} from its stored configuration: "
                            f"{type(err).__name__}: {err}") from err
        if "params" in record:
            assign(model, self.archive, record["params"], record.get("buffers"), self.path)
        return model

    def estimator(self, cls, record):
        try:
            est = cls(**self.value(record["estimator"]))
            for k, v in record["attributes"].items():
                setattr(est, k, self.value(v))
            check_fitted_state(est, self.archive.max_bytes)
            if "training" in record:
                self.training(est, record)
        except FileError:
            raise
        except Exception as err:
            raise FileError(f"{self.path}: the stored {record['class']} is inconsistent: "
                            f"{type(err).__name__}: {err}") from err
        return est

    def training(self, est, record):
        """Give a loaded estimator its stored optimiser and generator, checked against its model."""
        training, where = record["training"], f"{record['class']}.training"
        model = getattr(est, "model_", None)
        if not isinstance(model, Module):
            raise FileError(f"{self.path}: {where}: the estimator holds training state but no fitted model_")
        optimizer = decode_optimizer(training["optimizer"], model, self.archive, self.path, where + ".optimizer",
                                     training["prefix"] + "optimizer/")
        rng = numpy.random.Generator(bit_generator(training["rng"], where + ".rng", self.path))
        est._restore_training_state(optimizer, rng)

    def value(self, v):
        if isinstance(v, list):
            return [self.value(item) for item in v]
        if isinstance(v, dict):
            if "__module__" in v or "__estimator__" in v:
                return self.object(v.get("__module__") or v["__estimator__"])
            if "__array__" in v:
                return self.archive.read(v["__array__"])
            if "__strings__" in v:
                return numpy.array(v["__strings__"], dtype=object)
            if "__tuple__" in v:
                return tuple(self.value(item) for item in v["__tuple__"])
            return {k: self.value(item) for k, item in v.items()}
        return v


class _no_budget:
    """A module nested in a configuration is built under the budget of the record that holds it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def check_fitted_state(est, max_bytes=None):
    """Validate a loaded estimator's parameters and fitted attributes (types, shapes, consistency).

    numpy_moe's estimators check themselves (``_check_fitted_state``); the others validate their
    parameters (scikit-learn's ``_validate_params``) and, when fitted, transform (or predict) one row of
    zeros, which fails on attributes of the wrong type or shape. That row (float64, ``n_features_in_``
    wide, which a transformer without arrays does not bound) must fit in ``max_bytes`` (None: no limit).
    """
    own = getattr(est, "_check_fitted_state", None)
    if callable(own):
        own()
        return
    if getattr(est, "_parameter_constraints", None) is not None:  # scikit-learn's own classes
        est._validate_params()
    if hasattr(est, "steps"):  # a Pipeline: each step was checked when it was built
        if getattr(est, "memory", None) is not None:  # joblib would create and fill it on every fit
            raise ValueError(f"memory={est.memory!r}: a file may not name a cache directory for the pipeline to "
                             "write into when it is refitted; set memory yourself after loading")
        if not all(isinstance(s, (list, tuple)) and len(s) == 2 and isinstance(s[0], str) for s in est.steps):
            raise ValueError("Pipeline steps must be (name, estimator) pairs")
        est.steps = [tuple(s) for s in est.steps]
        return
    n = getattr(est, "n_features_in_", None)
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2 ** 31:
            raise TypeError(f"n_features_in_={n!r} must be a positive int")
        if max_bytes is not None and 8 * n > max_bytes:
            raise ValueError(f"n_features_in_={n}: checking it takes a row of {n} float64 zeros ({8 * n} bytes), "
                             f"more than max_bytes={max_bytes}; pass a larger max_bytes if you trust the file")
        if hasattr(est, "transform"):
            est.transform(numpy.zeros((1, n)))
        elif hasattr(est, "predict"):
            est.predict(numpy.zeros((1, n)))


def assign(model, archive, prefix, buffer_prefix, path):
    """Overwrite every parameter (and buffer) of ``model`` from ``archive``, after checking them all."""
    targets = {prefix + name: ("parameter", name, p) for name, p in model.named_parameters()}
    if buffer_prefix is not None:
        targets.update({buffer_prefix + name: ("buffer", name, b) for name, b in model.named_buffers()})
    elif any(True for _ in model.named_buffers()):
        raise FileError(f"{path} holds no buffers for {type(model).__name__}, which has "
                        f"{[n for n, _ in model.named_buffers()]}: re-save the model with this version")
    stored = {k for k in archive.headers if k != "__meta__" and k.startswith(prefix)}
    if buffer_prefix is None or not buffer_prefix.startswith(prefix):
        stored -= {k for k in stored if k.startswith(prefix + BUFFER_TAG)}
    missing = sorted(targets[k][1] for k in set(targets) - stored)
    extra = sorted(k[len(prefix):] for k in stored - set(targets))
    if missing or extra:
        raise FileError(f"{path} does not match the architecture of {type(model).__name__}: parameters "
                        f"missing from the file {missing}, parameters the model does not have {extra}")
    for key, (kind, name, p) in targets.items():
        shape, dtype = archive.headers[key]
        if shape != tuple(p.shape) or dtype != p.dtype:
            raise FileError(f"{path}: {kind} {name!r} is {dtype}{list(shape)} in the file; the model "
                            f"expects {p.dtype}{list(p.shape)}")
    values = {}
    for key, (kind, name, _) in targets.items():
        a = archive.read(key)
        if a.dtype.kind in "fc" and not numpy.isfinite(a).all():
            raise FileError(f"{path}: {kind} {name!r} contains NaN or inf ({int((~numpy.isfinite(a)).sum())} "
                            "of its values); refusing to load a diverged model")
        values[key] = a
    before = {key: p.copy() for key, (_, _, p) in targets.items()}
    for key, (_, _, p) in targets.items():
        p[...] = asarray(values[key])
    try:  # a module whose buffers must satisfy more than finiteness (a hash table of expert ids) checks them
        for m in model.modules():
            if callable(getattr(m, "check_buffers", None)):
                m.check_buffers()
    except ValueError as err:
        for key, (_, _, p) in targets.items():
            p[...] = before[key]
        raise FileError(f"{path}: {err}") from err


def non_finite_weights(arrays):
    """Names of the float arrays in ``arrays`` holding NaN or inf."""
    return [k for k, a in arrays.items() if a.dtype.kind in "fc" and a.size and not numpy.isfinite(a).all()]
