"""Save and load models as ``.npz``: configuration as JSON, parameters as arrays, never pickle.

``save(obj, path)`` writes any Module (an MoE in any configuration, Linear, MLP, Sequential, the classic
local-experts model, an image model) or a fitted numpy_moe estimator, alone or as a step of a
scikit-learn Pipeline (``make_pipeline(StandardScaler(), MoEClassifier())``); ``load(path)`` rebuilds it;
``load_into(model, path)`` copies a file's parameters into an existing model of the same architecture.

A file is an ordinary ``.npz`` archive, readable with ``numpy.load(path, allow_pickle=False)``:

- ``__meta__``: a JSON string ``{"format": "numpy-moe", "version": 2, "object": ...}``. A module is
  ``{"class": "numpy_moe.moe:MoE", "config": {...}, "params": "<prefix>"}``: its class, the arguments of
  its constructor (``Module.get_config()``; a nested module, such as the layers of a Sequential, appears as
  ``{"__module__": {"class": ..., "config": ...}}``), and where its parameters are (and, for a model with
  buffers, ``"buffers": "<prefix>buffer:"``). An estimator is ``{"class": ..., "estimator":
  {get_params(deep=False)}, "attributes": {fitted attributes ending in "_"}}``; an estimator among the
  parameters (a Pipeline's steps) is ``{"__estimator__": {...}}``, and a fitted array attribute is
  ``{"__array__": "<its entry>"}``.
- one array per parameter, named ``<prefix><dotted name>`` (``gate.W``, ``experts.W1``; inside an
  estimator ``model_/gate.W``), in the parameter's own dtype, so a round trip is bit-exact; one per buffer,
  named ``<prefix>buffer:<dotted name>``.

Loading rebuilds a module with ``Cls.from_config(config)`` and overwrites every parameter, so no new
Module subclass needs saving code. The ``seed`` argument is not stored: it drew the initial weights,
which the stored ones replace, and it seeded the generator a noisy gate draws its noise from
(``TopKGate(noise=...)``, ``ScoreGate(jitter=...)``), whose state a file does not hold either: a loaded
gate draws from a fresh, unseeded generator (assign a seeded one to its ``rng`` to replay a run). Nor is
the mode: a loaded module is in training mode, as a newly built one is; call ``eval()`` before
predicting with a noisy gate. A Module's training state that is not a parameter or a buffer (an
optimiser's moments) is not in its file: to resume the training of a Module bit for bit,
``save_checkpoint(path, model, optimizer, {"shuffle": rng})`` also stores the training flags, the gates'
generators, the optimiser's state and your generators, and ``load_checkpoint(path)`` gives them back
(:mod:`numpy_moe.io.checkpoint`). A fitted numpy_moe estimator's record holds its training state itself:
``"training": {"prefix": "<prefix>training/", "optimizer": {...}, "rng": {...}}`` (the records of
:mod:`numpy_moe.io.state`, arrays under ``<prefix>training/optimizer/``), so ``partial_fit`` after loading
goes on bit for bit; a file without it (an earlier version's, or an estimator whose ``random_state`` is a
Generator of another bit generator than PCG64) loads too, and ``partial_fit`` then starts a fresh optimiser
and a fresh generator from ``random_state``. Version 1 files (no buffers) still load.

Loading a file from someone else
--------------------------------
A file can only name classes of the registry (:mod:`numpy_moe.io.registry`): numpy_moe's own Modules
and estimators, a fixed list of scikit-learn classes (Pipeline, StandardScaler, MinMaxScaler, MaxAbsScaler,
RobustScaler, Normalizer, PCA), and the classes your program registered with :func:`register`.
``load`` never unpickles, never imports a module the file names and never looks up an attribute path;
the whole record is checked against the registry before anything is constructed. The arrays' sizes are
read from their headers and checked against ``max_bytes`` (default 2 GiB) before any data is
decompressed, and a model is built under a parameter budget equal to the bytes the file actually holds,
so a small file cannot claim gigabytes. Every malformed file gives a ``ValueError`` that names the file.

What a file can still do: make you load a model whose weights compute whatever its author wanted, up to
``max_bytes`` of memory, with the constructors of the registered classes. It cannot name a directory to
write into: a Pipeline's ``memory`` (joblib's cache, written on every fit) must be None. A class you register yourself
is trusted with the arguments a file gives it: register only classes whose constructors build a model
and do nothing else.

Saving is atomic: the file is written to a temporary file in the same directory, synced and renamed
over the target, so a failed or interrupted save leaves the previous file as it was. A model with NaN or
inf weights is refused.
"""
import json
import os

import numpy

from ..layers import Module
from .archive import Archive, FileError, write_atomic
from .records import Builder, assign, check_object, encode_estimator, encode_module, non_finite_weights
from .registry import MOVED, register, registered

__all__ = ["save", "load", "load_into", "save_checkpoint", "load_checkpoint", "Checkpoint", "register", "registered",
           "FileError", "DEFAULT_MAX_BYTES"]

FORMAT, VERSION, READABLE_VERSIONS = "numpy-moe", 2, (1, 2)
DEFAULT_MAX_BYTES = 2 * 2 ** 30


def save(obj, path):
    """Write a Module or an estimator to ``path`` (the name is used as given), atomically; returns ``path``.

    Raises TypeError for an object or an argument with no JSON form, ValueError for NaN or inf weights,
    a Pipeline with a ``memory`` cache directory (which loading refuses), an empty ``path`` or one that
    exists and is not a regular file (a pipe, a device); ``path`` is untouched then, and whenever writing
    fails.
    """
    _check_path(path)
    arrays = {}
    if isinstance(obj, type):
        raise TypeError(f"cannot save the class {obj.__name__}: pass an instance (a model, or a fitted estimator)")
    if isinstance(obj, Module):
        record = encode_module(obj, arrays, "")
    elif hasattr(obj, "get_params"):
        record = encode_estimator(obj, arrays, "")
    else:
        raise TypeError(f"cannot save a {type(obj).__name__}: expected a numpy_moe Module or estimator")
    bad = non_finite_weights(arrays)
    if bad:
        raise ValueError(f"refusing to save {type(obj).__name__}: {bad[:5]} contain NaN or inf (a diverged "
                         "model); nothing was written")
    meta = json.dumps({"format": FORMAT, "version": VERSION, "object": record}, allow_nan=True)
    write_atomic(path, {"__meta__": numpy.array(meta), **arrays})
    return path


def load(path, *, max_bytes=DEFAULT_MAX_BYTES):
    """The Module or estimator saved in ``path``, rebuilt with its stored parameters.

    max_bytes : the most memory the file's arrays may take (default 2 GiB), checked before reading them.
    Raises ValueError (:class:`FileError`) naming the file for anything wrong with it, FileNotFoundError
    when it does not exist.
    """
    with _open(path, max_bytes) as (archive, record):
        return Builder(path, archive).object(record)


def load_into(model, path, *, max_bytes=DEFAULT_MAX_BYTES):
    """Copy the parameters saved in ``path`` into ``model``, which must have the file's architecture.

    Raises ValueError when the file holds another class, another configuration (for example another
    ``n_experts`` or ``top_k``), or parameters of other names, shapes or dtypes, or non-finite values;
    ``model`` is left untouched then. Returns ``model``.
    """
    if not isinstance(model, Module):
        raise TypeError(f"model is a {type(model).__name__}; load_into takes a numpy_moe Module")
    with _open(path, max_bytes) as (archive, record):
        if "config" not in record:
            raise FileError(f"{path} holds an estimator ({record['class']}), not a module: use load(path)")
        mine = encode_module(model, None, "")
        if _untuple(record)["class"] != mine["class"]:  # a moved class's old name is the same class
            raise FileError(f"{path} holds a {record['class']}; the model is a {mine['class']}")
        stored, ours = _untuple(record["config"]), _untuple(mine["config"])  # version 1 wrote tuples as lists
        keys = sorted(set(stored) | set(ours))
        diff = [f"{k}={stored.get(k)!r} in the file, {ours.get(k)!r} in the model"
                for k in keys if stored.get(k) != ours.get(k)]
        if diff:
            raise FileError(f"{path} holds a {record['class']} of another architecture: " + "; ".join(diff))
        assign(model, archive, record["params"], record.get("buffers"), path)
    return model


class _open:
    """``with _open(path, max_bytes) as (archive, record)``: the archive and its checked object record."""

    def __init__(self, path, max_bytes):
        _check_path(path)
        if isinstance(max_bytes, bool) or not hasattr(max_bytes, "__index__") or max_bytes < 1:  # np.int64 too
            raise TypeError(f"max_bytes={max_bytes!r} must be a positive int")
        self.path, self.max_bytes = path, int(max_bytes)

    def __enter__(self):
        self.archive = Archive(self.path, self.max_bytes)
        try:
            return self.archive, _read_record(self.path, self.archive)
        except BaseException:
            self.archive.close()
            raise

    def __exit__(self, *exc):
        self.archive.close()


def _read_record(path, archive):
    """The checked object record of ``archive``'s ``__meta__``."""
    text = archive.read_meta()
    try:
        meta = json.loads(text)
    except RecursionError as err:
        raise FileError(f"{path}: its metadata is nested too deeply to be a numpy-moe file") from err
    except ValueError as err:
        raise FileError(f"{path}: its metadata is not JSON ({err})") from err
    if not isinstance(meta, dict):
        raise FileError(f"{path}: its metadata is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise FileError(f"{path} has format {meta.get('format')!r} version {meta.get('version')!r}; expected "
                        f"{FORMAT!r} version {' or '.join(map(str, READABLE_VERSIONS))}")
    if "object" not in meta:
        raise FileError(f"{path}: its metadata has no \"object\" record")
    check_object(meta["object"], path, archive)
    return meta["object"]


def _untuple(value):
    """A record or configuration as it compares: tuples as lists (version 1 wrote them as lists) and every
    record's class under its current name (registry.MOVED: files name a moved class by its old module)."""
    if isinstance(value, list):
        return [_untuple(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return _untuple(value["__tuple__"])
        return {k: MOVED.get(v, v) if k == "class" and isinstance(v, str) else _untuple(v) for k, v in value.items()}
    return value


def _check_path(path):
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path={path!r} must be a file name (str or os.PathLike)")


from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402  (it uses _open above)
