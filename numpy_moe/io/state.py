"""Training state in a numpy-moe file: an optimiser's state and NumPy generators, encoded as JSON records
and arrays, and checked against the model they belong to when read from an untrusted file.

Used by :mod:`numpy_moe.io.checkpoint` (a Module with its optimiser and generators). Only numpy_moe's SGD,
Adam and FTRL are encoded (their state can be checked: names, shapes and dtypes of the model's parameters,
finite, Adam's v and FTRL's n not negative; a parameter has all of its optimiser's slots or none), and only
PCG64 and PCG64DXSM generators, whose state is two integers and two flags checked against their ranges
before NumPy reads them (NumPy's state setters trust their input: an MT19937 state with an out-of-range
position crashed the interpreter).
"""
import numpy

from ..backend import asarray, to_numpy
from ..optim import FTRL, SGD, Adam
from .archive import FileError

OPTIMIZERS = {"SGD": SGD, "Adam": Adam, "FTRL": FTRL}
SQUARES = {"Adam": "v", "FTRL": "n"}  # state that sums squares: never negative
BIT_GENERATORS = {"PCG64": numpy.random.PCG64, "PCG64DXSM": numpy.random.PCG64DXSM}


# ----- optimiser ----------------------------------------------------------------------------------
def encode_optimizer(optimizer, model, arrays, prefix):
    """The JSON record of ``optimizer`` (SGD, Adam or FTRL) training ``model``; its per-parameter state goes into
    ``arrays`` as ``<prefix><slot>/<parameter name>``. TypeError for another optimiser class, ValueError for
    state of another model."""
    name = type(optimizer).__name__
    if OPTIMIZERS.get(name) is not type(optimizer):
        raise TypeError(f"cannot checkpoint a {name} optimiser: only {sorted(OPTIMIZERS)} (not subclasses), whose "
                        "state a file can be checked against")
    params = list(model.named_parameters())
    optimizer._check_shapes(params)  # ValueError for state kept from another model with the same names
    names = {n for n, _ in params}
    state = {}
    for slot in optimizer._state:
        entries = {}
        for pname, a in getattr(optimizer, slot).items():
            if pname not in names:
                raise ValueError(f"this {name} holds state {slot!r} for {pname!r}, which {type(model).__name__} "
                                 "has no parameter of: it trained another model")
            entry = f"{prefix}{slot}/{pname}"
            arrays[entry] = to_numpy(a)
            entries[pname] = entry
        state[slot] = entries
    return {"class": name, "config": optimizer.get_config(), "t": int(optimizer.t), "state": state}


def decode_optimizer(record, model, archive, path, where, prefix):
    """The optimiser of a checked ``record`` (see :func:`encode_optimizer`) for ``model``, its state read from
    ``archive``; FileError naming ``path`` and ``where`` for anything that does not match the model."""
    def fail(what):
        return FileError(f"{path}: {where}: {what}")

    if not isinstance(record, dict):
        raise fail(f"expected an object, found {type(record).__name__}")
    check_keys(record, {"class", "config", "t", "state"}, where, path)
    cls = OPTIMIZERS.get(record["class"]) if isinstance(record["class"], str) else None
    if cls is None:
        raise fail(f"class {record['class']!r} is not one of {sorted(OPTIMIZERS)}")
    config, t, state = record["config"], record["t"], record["state"]
    expected = set(cls().get_config())
    if not isinstance(config, dict) or set(config) != expected:
        raise fail(f"config must hold exactly {sorted(expected)}, found "
                   f"{sorted(config) if isinstance(config, dict) else type(config).__name__}")
    try:
        optimizer = cls(**config)
    except (TypeError, ValueError) as err:
        raise fail(f"config {config}: {err}") from err
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise fail(f"t={t!r} must be an int >= 0 (the number of steps taken)")
    optimizer.t = t
    params = dict(model.named_parameters())
    if not isinstance(state, dict) or set(state) != set(cls._state):
        raise fail(f"state must hold exactly the slots {list(cls._state)}, found "
                   f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
    holders = []
    for slot in cls._state:
        entries = state[slot]
        if not isinstance(entries, dict):
            raise fail(f"state[{slot!r}] must be an object parameter name -> array entry")
        unknown = sorted(set(entries) - set(params))
        if unknown:
            raise fail(f"state[{slot!r}] names {unknown[:5]}, which are not parameters of the "
                       f"{type(model).__name__}")
        holders.append(set(entries))
    if any(h != holders[0] for h in holders):
        raise fail(f"every parameter needs all of {list(cls._state)} or none; they hold state for different "
                   "parameters")
    values = {}
    for slot in cls._state:
        for pname, entry in state[slot].items():
            p = params[pname]
            if entry != f"{prefix}{slot}/{pname}" or entry not in archive.headers:
                raise fail(f"state[{slot!r}][{pname!r}] refers to {entry!r}, not the file's array "
                           f"{prefix}{slot}/{pname}")
            shape, dtype = archive.headers[entry]
            if shape != tuple(p.shape) or dtype != p.dtype:
                raise fail(f"state[{slot!r}][{pname!r}] is {dtype}{list(shape)}; the parameter is "
                           f"{p.dtype}{list(p.shape)}")
            a = archive.read(entry)
            if not numpy.isfinite(a).all():
                raise fail(f"state[{slot!r}][{pname!r}] holds NaN or inf")
            if slot == SQUARES.get(record["class"]) and a.size and a.min() < 0:
                raise fail(f"state[{slot!r}][{pname!r}] holds negative values ({a.min():.3g}), but it is a sum "
                           "of squared gradients")
            values[slot, pname] = asarray(a)  # on the backend the model's parameters live on, as io.load puts them
    for (slot, pname), a in values.items():
        getattr(optimizer, slot)[pname] = a
    return optimizer


# ----- generators ---------------------------------------------------------------------------------
def generator_state(g, what):
    """The JSON form of ``g``'s bit generator state; TypeError for a bit generator that cannot be saved."""
    name = type(g.bit_generator).__name__
    if BIT_GENERATORS.get(name) is not type(g.bit_generator):
        raise TypeError(f"{what} uses the bit generator {name}; a checkpoint holds {sorted(BIT_GENERATORS)} "
                        "(numpy.random.default_rng's PCG64), whose states it can check when loading")
    s = g.bit_generator.state
    return {"bit_generator": name, "state": {"state": int(s["state"]["state"]), "inc": int(s["state"]["inc"])},
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def bit_generator(state, where, path):
    """A bit generator set to ``state``, every field checked against its range before NumPy reads it."""
    def fail(what):
        return FileError(f"{path}: {where}: {what}")

    def integer(value, bits, field):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2 ** bits:
            raise fail(f"{field}={value!r:.60} must be an int in [0, 2**{bits})")
        return value

    if not isinstance(state, dict):
        raise fail(f"expected a generator state object, found {type(state).__name__}")
    check_keys(state, {"bit_generator", "state", "has_uint32", "uinteger"}, where, path)
    name = state["bit_generator"]
    cls = BIT_GENERATORS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise fail(f"bit generator {name!r} is not one of {sorted(BIT_GENERATORS)}")
    inner = state["state"]
    if not isinstance(inner, dict):
        raise fail("state.state must be an object {state, inc}")
    check_keys(inner, {"state", "inc"}, where + ".state", path)
    value = {"bit_generator": name, "state": {"state": integer(inner["state"], 128, "state"),
                                              "inc": integer(inner["inc"], 128, "inc")},
             "has_uint32": integer(state["has_uint32"], 1, "has_uint32"),
             "uinteger": integer(state["uinteger"], 32, "uinteger")}
    bit_generator = cls()
    bit_generator.state = value
    return bit_generator


def check_keys(record, keys, where, path):
    if set(record) != keys:
        raise FileError(f"{path}: {where} must hold exactly {sorted(keys)}, found {sorted(record)[:10]}")

