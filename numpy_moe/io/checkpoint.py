"""Training checkpoints: a model with everything its training needs to continue bit for bit, never pickle.

``save_checkpoint(path, model, optimizer=None, generators=None)`` writes one ``.npz`` file (atomically, as
:func:`numpy_moe.io.save` does) holding

- the model, as :func:`numpy_moe.io.save` stores it, its parameters under the prefix ``model/`` (so
  ``io.load(path)`` reads a checkpoint's model too);
- the training flag of every module (``model.modules()`` order) and the state of every generator a module
  holds (the noise of ``TopKGate(noise=...)`` and ``ScoreGate(jitter=...)``), by module index and attribute;
- the optimiser (SGD, Adam or FTRL): its class, its hyperparameters as they stand (a decayed ``lr``), its
  step count ``t`` and its per-parameter state (SGD's velocity, Adam's m and v, FTRL's z and n), each array
  under ``optimizer/<slot>/<parameter name>``;
- generators of your own by name (``{"shuffle": rng}``: the Generator ``train.fit(seed=rng)`` shuffles with).

Generators are stored once per Generator object and referred to by index, so what shared one before
saving shares one after loading (layers built from one ``seed=rng`` draw their noise from it in turn, and
``fit(seed=rng)`` may shuffle with it too); copies would replay each other's draws instead.

``load_checkpoint(path)`` returns ``Checkpoint(model, optimizer, generators)``; training continued from it
gives the same numbers, bit for bit, as training that was never stopped (tested for the three optimisers,
noisy gates, float32 and float64). Generators are stored as their bit generator's state; only PCG64 and
PCG64DXSM (``numpy.random.default_rng``'s) can be saved, because NumPy's state setters trust what they are
given (an MT19937 state with an out-of-range position crashes the interpreter) and these two states are
integers whose ranges are checked before NumPy sees them.

A checkpoint from someone else is checked as a model file is (:mod:`numpy_moe.io`): the model record
first; then the optimiser's class against SGD, Adam and FTRL (subclasses and your own optimisers are
refused at saving), its hyperparameters by its constructor, every state array's parameter name, shape,
dtype and finiteness against the rebuilt model (Adam's v and FTRL's n, sums of squares, must not be
negative; a parameter has all of its optimiser's slots or none), every generator state against its
ranges, and every module index and attribute against the rebuilt model (a file can only set the state of
a generator the module already has). Any failure is a ``ValueError`` (:class:`FileError`) naming the file,
raised before anything is returned.
"""
import json
from collections import namedtuple

import numpy

from ..layers import Module
from . import DEFAULT_MAX_BYTES, FORMAT, VERSION, _check_path, _open
from .archive import FileError, write_atomic
from .records import Builder, encode_module, non_finite_weights
from .state import bit_generator, check_keys, decode_optimizer, encode_optimizer, generator_state

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint"]

Checkpoint = namedtuple("Checkpoint", ["model", "optimizer", "generators"])
Checkpoint.__doc__ = """What :func:`load_checkpoint` returns: the model (its training flags and its modules'
generators as saved), the optimiser (None when none was saved) and ``{name: numpy Generator}``."""

MODEL_PREFIX, OPTIMIZER_PREFIX = "model/", "optimizer/"
MAX_GENERATORS = 1000


def save_checkpoint(path, model, optimizer=None, generators=None):
    """Write ``model``, its training flags and its modules' generators, ``optimizer``'s state and
    ``generators`` to ``path``, atomically; returns ``path``.

    Parameters
    ----------
    path : the file name (used as given). model : a numpy_moe Module (as :func:`numpy_moe.io.save` takes).
    optimizer : None or the SGD, Adam or FTRL instance training ``model``.
    generators : None or ``{name: numpy.random.Generator}`` (PCG64 or PCG64DXSM), names non-empty strings.

    Raises TypeError for anything of another kind, ValueError for NaN or inf in a weight or the optimiser's
    state, or state of another model (other parameter names or shapes); ``path`` is untouched then, and
    whenever writing fails.
    """
    _check_path(path)
    if not isinstance(model, Module):
        raise TypeError(f"model is a {type(model).__name__}; save_checkpoint takes a numpy_moe Module (save a "
                        "fitted estimator with io.save)")
    generators = {} if generators is None else generators
    if not isinstance(generators, dict):
        raise TypeError(f"generators is a {type(generators).__name__}; expected None or a dict name -> Generator")
    arrays = {}
    modules = list(model.modules())
    states, index = [], {}  # one state per distinct Generator object: the places that share one keep sharing it

    def generator(g, what):
        if id(g) not in index:
            index[id(g)] = len(states)
            states.append(generator_state(g, what))
        return index[id(g)]

    model_generators = [{"module": i, "attribute": attribute,
                         "generator": generator(value, f"{type(m).__name__}.{attribute}")}
                        for i, m in enumerate(modules) for attribute, value in vars(m).items()
                        if isinstance(value, numpy.random.Generator)]
    named = {}
    for name, g in generators.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"generator name {name!r} must be a non-empty str")
        if not isinstance(g, numpy.random.Generator):
            raise TypeError(f"generators[{name!r}] is a {type(g).__name__}, not a numpy.random.Generator")
        named[name] = generator(g, f"generators[{name!r}]")
    record = {"object": encode_module(model, arrays, MODEL_PREFIX),
              "training": [bool(m.training) for m in modules], "generator_states": states,
              "model_generators": model_generators, "named_generators": named,
              "optimizer": None if optimizer is None else encode_optimizer(optimizer, model, arrays, OPTIMIZER_PREFIX)}
    bad = non_finite_weights(arrays)
    if bad:
        raise ValueError(f"refusing to save a checkpoint of {type(model).__name__}: {bad[:5]} contain NaN or inf "
                         "(a diverged model); nothing was written")
    meta = json.dumps({"format": FORMAT, "version": VERSION, "object": record.pop("object"), "checkpoint": record})
    write_atomic(path, {"__meta__": numpy.array(meta), **arrays})
    return path


def load_checkpoint(path, *, max_bytes=DEFAULT_MAX_BYTES):
    """The :class:`Checkpoint` (model, optimizer, generators) saved in ``path`` by :func:`save_checkpoint`.

    max_bytes : the most memory the file's arrays may take (default 2 GiB), checked before reading them.
    Raises ValueError (:class:`FileError`) naming the file for anything wrong with it (a model file without
    a checkpoint too: read it with ``io.load``), FileNotFoundError when it does not exist.
    """
    with _open(path, max_bytes) as (archive, record):
        meta = json.loads(archive.read_meta())  # _open has parsed and checked it; only "checkpoint" is new here
        state = meta.get("checkpoint")
        if not isinstance(state, dict):
            raise FileError(f"{path} holds a model but no checkpoint (no optimiser or generator state): read it "
                            "with numpy_moe.io.load")
        check_keys(state, {"training", "generator_states", "model_generators", "named_generators", "optimizer"},
                    "checkpoint", path)
        if "config" not in record:
            raise FileError(f"{path}: a checkpoint's object must be a module, not an estimator ({record['class']})")
        model = Builder(path, archive).object(record)
        modules = list(model.modules())
        training = state["training"]
        if not (isinstance(training, list) and len(training) == len(modules)
                and all(isinstance(t, bool) for t in training)):
            raise FileError(f"{path}: checkpoint.training must be a list of {len(modules)} booleans, one per module "
                            f"of the {type(model).__name__}")
        shared = _generators(state["generator_states"], path)
        settings = _module_generators(state["model_generators"], modules, shared, path)
        named = _named_generators(state["named_generators"], shared, path)
        optimizer = None if state["optimizer"] is None else decode_optimizer(state["optimizer"], model, archive, path,
                                                                    "checkpoint.optimizer", OPTIMIZER_PREFIX)
        for m, flag in zip(modules, training):  # everything is checked: now set the model's state
            m.training = flag
        for m, attribute, g in settings:
            setattr(m, attribute, g)
        return Checkpoint(model, optimizer, named)


# ----- generators ---------------------------------------------------------------------------------
def _generators(states, path):
    """One Generator per stored state (shared by every place that names its index)."""
    if not isinstance(states, list) or len(states) > MAX_GENERATORS:
        raise FileError(f"{path}: checkpoint.generator_states must be a list of at most {MAX_GENERATORS} states")
    return [numpy.random.Generator(bit_generator(s, f"checkpoint.generator_states[{k}]", path))
            for k, s in enumerate(states)]


def _generator_index(k, shared, where, path):
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(shared):
        raise FileError(f"{path}: {where}: generator={k!r:.60} must be an index below {len(shared)} (the number of "
                        "generator states)")
    return shared[k]


def _module_generators(entries, modules, shared, path):
    """[(module, attribute, Generator)] for the checked references of the model's modules to generators."""
    if not isinstance(entries, list) or len(entries) > MAX_GENERATORS:
        raise FileError(f"{path}: checkpoint.model_generators must be a list of at most {MAX_GENERATORS}")
    settings, seen = [], set()
    for k, entry in enumerate(entries):
        where = f"checkpoint.model_generators[{k}]"
        if not isinstance(entry, dict):
            raise FileError(f"{path}: {where}: expected an object, found {type(entry).__name__}")
        check_keys(entry, {"module", "attribute", "generator"}, where, path)
        i, attribute = entry["module"], entry["attribute"]
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(modules):
            raise FileError(f"{path}: {where}: module={i!r:.60} must be an index below {len(modules)}")
        if not isinstance(attribute, str) or not isinstance(vars(modules[i]).get(attribute), numpy.random.Generator):
            raise FileError(f"{path}: {where}: the {type(modules[i]).__name__} (module {i}) has no generator "
                            f"{attribute!r:.60}; a checkpoint only sets the state of generators a module has")
        if (i, attribute) in seen:
            raise FileError(f"{path}: {where}: generator {attribute!r} of module {i} appears twice")
        seen.add((i, attribute))
        settings.append((modules[i], attribute, _generator_index(entry["generator"], shared, where, path)))
    return settings


def _named_generators(entries, shared, path):
    if not isinstance(entries, dict):
        raise FileError(f"{path}: checkpoint.named_generators must be an object name -> generator index")
    return {name: _generator_index(k, shared, f"checkpoint.named_generators[{name!r:.60}]", path)
            for name, k in entries.items()}
