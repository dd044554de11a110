"""State and persistence: nothing is lost and resuming is exact.

Every registered Module class, in float32 and float64, trained a few steps, then saved with numpy_moe.io,
deep-copied and pickled, must compute bit for bit what the original computes (forward, backward, every
gradient, and further training steps). Training resumed from a copy of the model, its optimiser and its
generator must end where uninterrupted training ends, bit for bit. A save, a load or an optimiser step
that fails must leave what was there before as it was.
"""
import copy
import errno
import functools
import os
import pickle
import stat

import numpy as np
import pytest
from sklearn.base import clone

from numpy_moe import functional as F
from numpy_moe import io
from numpy_moe.balance import BalanceLoss
from numpy_moe.classic import LocalExperts, fit_local_experts
from numpy_moe.estimators import (HMEClassifier, HMERegressor, LocalExpertsClassifier, LocalExpertsRegressor,
                                  MoEClassifier, MoERegressor)
from numpy_moe.gates import Routing, TopKGate
from numpy_moe.io import archive
from numpy_moe.io.records import encode_module
from numpy_moe.layers import MLP, Module
from numpy_moe.moe import MoE
from numpy_moe.optim import FTRL, SGD, Adam
from numpy_moe.train import fit


# ----- every module class: io, deepcopy and pickle keep everything a forward and a backward read -----
def _with_dtype(value, dtype):
    """A configuration value with every ``dtype`` set to ``dtype``, and every module in it rebuilt so."""
    if isinstance(value, Module):
        return type(value).from_config(_with_dtype(value.get_config(), dtype))
    if isinstance(value, (list, tuple)):
        return type(value)(_with_dtype(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: dtype if k == "dtype" else _with_dtype(v, dtype) for k, v in value.items()}
    return value


def _in_dtype(model, dtype):
    """A new model of ``model``'s architecture in ``dtype`` (every nested module too), from the same seeds (a
    copy: a Generator given as a seed is not advanced, so every call gives the same weights)."""
    return _with_dtype(copy.deepcopy(model), dtype)


def _stateful_examples():
    """Modules whose end_step and noise change state that is not a parameter (the examples of test_io keep
    ScoreGate's selection bias at zero), one with tied embedding and output weights: they must round-trip too."""
    from numpy_moe.gates import ScoreGate
    from numpy_moe.models.transformer import TransformerLM
    return {
        "ScoreGate bias_update jitter": lambda: ScoreGate(8, 8, top_k=2, n_groups=4, topk_groups=2, bias_update=0.05,
                                                          bias_centered=True, jitter=0.1, seed=0),
        "MoE ScoreGate bias_update": lambda: MoE(gate=ScoreGate(5, 4, top_k=2, bias_update=0.05, jitter=0.1, seed=1),
                                                 experts=None, out_features=3, hidden=6, seed=2),
        "MoE top-2 Shazeer noise": lambda: MoE(5, 3, 4, hidden=6, top_k=2, noise="shazeer", seed=0,
                                               balance={"importance": 0.1, "load": 0.1}),
        "TransformerLM tied, ScoreGate bias_update": lambda: TransformerLM(
            7, d_model=4, n_heads=2, n_layers=1, max_len=5, hidden=6, seed=0, tied=True,
            moe=[MoE(gate=ScoreGate(4, 3, top_k=2, bias_update=0.05, jitter=0.1, seed=1), experts=None,
                     out_features=4, hidden=5, seed=2)]),
    }


@functools.lru_cache(maxsize=None)
def _all_examples():
    from test_io import _examples
    return {**_examples(), **{name: make() for name, make in _stateful_examples().items()}}


def _inputs(name, model, rng):
    """(args, kwargs) of a forward pass of ``model`` (the example called ``name``)."""
    cls, dtype = type(model).__name__, model.dtype

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)
    if cls in ("Embedding", "TransformerLM"):
        return (rng.integers(0, 7, (2, 5)),), {}
    if cls in ("PositionEmbedding", "CausalSelfAttention", "DenseFeedForward", "MoEFeedForward", "TransformerBlock"):
        return (normal(2, 5, 4),), {}
    if cls in ("Conv2d", "ConvMoE2d"):
        return (normal(3, 2, 5, 5),), {}
    shapes = {"ConvMoE1d": (3, 2, 6), "MaxPool2d": (3, 2, 4, 4), "ImageMoEClassifier": (3, 1, 4, 4),
              "SparseMLP": (3, 1, 4, 4), "TokenMixing": (3, 4, 4), "ChannelMixing": (3, 4, 4), "MixerBlock": (3, 4, 4),
              "ReRepresentedTokenMixing": (3, 4, 4), "Unflatten": (10, 6), "Flatten": (10, 2, 3)}
    if cls in shapes:
        return (normal(*shapes[cls]),), {}
    if cls == "HashGate":
        return (normal(10, 4),), {"keys": rng.integers(0, 7, 10)}
    if isinstance(model, BalanceLoss):
        gate = TopKGate(4, 3, 2, noise="shazeer", seed=5, dtype=dtype)
        gate.params["W_noise"] += 0.1
        return (gate.forward(normal(10, 4)),), {}
    config = model.get_config()
    width = config.get("in_features", config.get("n_features"))  # None: MoE(gate=...) takes the gate's width
    width = 5 if cls == "Sequential" else width if isinstance(width, int) else getattr(model, "in_features", 4)
    return (normal(10, width),), {}


def _arrays(value):
    if isinstance(value, Routing):
        return [np.asarray(v) for v in value if v is not None and not isinstance(v, (int, str))]
    if isinstance(value, dict):
        return [np.asarray(v) for v in value.values()]
    return [np.asarray(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]


def _pass(name, model, rng):
    """A forward and a backward pass of ``model`` on random inputs and output gradients; returns every array
    they produce: the output (a Routing's fields), the input gradient and every parameter gradient."""
    if type(model) is BalanceLoss:  # the base class computes nothing
        return []
    args, kwargs = _inputs(name, model, rng)
    out = model(*args) if isinstance(model, BalanceLoss) else model.forward(*args, **kwargs)
    if type(model).backward is Module.backward:  # LocalExperts: trained by its own rules, no backward
        return _arrays(out)
    if isinstance(model, BalanceLoss):
        dx = model.backward()
    elif isinstance(out, Routing):
        dx = model.backward({"weight": rng.standard_normal(out.expert.shape).astype(model.dtype)})
    else:
        dx = model.backward(rng.standard_normal(np.shape(out)).astype(out.dtype))
    return _arrays(out) + _arrays(dx) + [g for _, g in model.named_grads()]


def _train(name, model, rng, steps=3):
    """``steps`` steps of plain gradient descent, each followed by end_step (buffer updates)."""
    for _ in range(steps):
        _pass(name, model, rng)
        for (_, p), (_, g) in zip(model.named_parameters(), model.named_grads()):
            p -= (0.05 * g).astype(p.dtype)
        model.end_step()


def _state_arrays(model):
    return [a for _, a in model.named_parameters()] + [b for _, b in model.named_buffers()]


def _bitwise(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and
                                    np.array_equal(x, y, equal_nan=x.dtype.kind in "fc") for x, y in zip(a, b))


def _copy_generators(source, target):
    """What io does not store (see its docstring): the noise generators, copied with their sharing kept
    (SparseMLP's gates draw from one generator)."""
    pairs = [(a, b) for a, b in zip(source.modules(), target.modules()) if hasattr(a, "rng")]
    for (_, b), rng in zip(pairs, copy.deepcopy([a.rng for a, _ in pairs])):
        b.rng = rng


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_module_class_after_training_round_trips_bit_for_bit(dtype, tmp_path):
    """Every registered class (test_io's examples) and three whose end_step and noise change state, trained
    three steps, in both modes: io.load, copy.deepcopy and pickle give a model whose forward, backward and
    two more training steps are those of the original, bit for bit, with the same configuration and
    dtypes. io stores no noise generator and no mode: the loaded model is in training mode, and the test
    copies the generators itself."""
    failures = []
    for name, example in _all_examples().items():
        model = _in_dtype(example, dtype)
        for _, p in model.named_parameters():  # off the initial draw, so a reload cannot pass by re-drawing it
            p += 0.1 * np.random.default_rng(0).standard_normal(p.shape).astype(p.dtype)
        _train(name, model, np.random.default_rng(1))
        assert all(a.dtype == np.dtype(dtype) for a in _state_arrays(model)), name
        for training in (True, False):
            model.train(training)
            loaded = io.load(io.save(model, tmp_path / "m.npz"))
            assert loaded.training and all(m.training for m in loaded.modules()), name
            assert encode_module(loaded, None, "") == encode_module(model, None, ""), name  # the configuration
            loaded.train(training)
            _copy_generators(model, loaded)
            copies = {"io": loaded, "deepcopy": copy.deepcopy(model), "pickle": pickle.loads(pickle.dumps(model))}
            original = copy.deepcopy(model)  # the model itself stays as trained, for the other mode
            state = [a.copy() for a in _state_arrays(original)]
            arrays = _pass(name, original, np.random.default_rng(7))
            _train(name, original, np.random.default_rng(8), steps=2)
            for kind, other in copies.items():
                if not _bitwise(_state_arrays(other), state):
                    failures.append(f"{name} {dtype} training={training} {kind}: parameters or buffers")
                if not _bitwise(_pass(name, other, np.random.default_rng(7)), arrays):
                    failures.append(f"{name} {dtype} training={training} {kind}: forward / backward")
                _train(name, other, np.random.default_rng(8), steps=2)
                if not _bitwise(_state_arrays(other), _state_arrays(original)):
                    failures.append(f"{name} {dtype} training={training} {kind}: further training")
    assert not failures, failures


def test_the_stateful_examples_do_change_their_buffers_and_draw_noise():
    # The round trip above can only fail on a lost buffer or generator if training moves them.
    examples = _all_examples()
    for name in _stateful_examples():
        model = _in_dtype(examples[name], "float64")
        gates = [m for m in model.modules() if hasattr(m, "rng")]
        draws = [g.rng.bit_generator.state["state"]["state"] for g in gates]
        _train(name, model, np.random.default_rng(1))
        assert [g.rng.bit_generator.state["state"]["state"] for g in gates] != draws, name
        buffers = [b for _, b in model.named_buffers()]
        assert all(np.any(b != 0) for b in buffers), name


@pytest.mark.parametrize("make", [lambda: TopKGate(5, 4, 2, noise="shazeer", seed=0),
                                  lambda: __import__("numpy_moe.gates", fromlist=["x"]).ExpertChoiceGate(5, 4, 1.5,
                                                                                                         seed=0)])
def test_a_routing_survives_deepcopy_and_pickle_and_its_backward_is_the_same(make, rng):
    gate = make()
    routing = gate.forward(rng.standard_normal((12, 5)))
    grad = {"weight": rng.standard_normal(routing.expert.shape)}
    dx = gate.backward(grad)
    for other in (copy.deepcopy(routing), pickle.loads(pickle.dumps(routing))):
        assert type(other) is type(routing) and other._fields == routing._fields
        assert _bitwise(_arrays(other), _arrays(routing)) and (other.top_k, other.convention) == (routing.top_k,
                                                                                                   routing.convention)
        gate.routing = other  # the backward reads the routing of its forward
        assert _bitwise([gate.backward(grad)], [dx])


def _preset_blocks():
    from numpy_moe import presets
    from numpy_moe.conformance import CONFIGS
    return [pytest.param(preset, bugs, id=f"{preset}-{'+'.join(bugs) or 'intended'}")
            for preset in CONFIGS for bugs in [()] + [(b,) for b in presets.BUGS.get(preset, ())]]


@pytest.mark.parametrize("preset, bugs", _preset_blocks())
def test_every_framework_block_round_trips_bit_for_bit(preset, bugs, tmp_path):
    """A preset's block is an MoE whose framework conventions (and reproduced bugs) are constructor arguments:
    a saved and loaded block, trained on, computes what the original computes, bit for bit."""
    from numpy_moe import presets
    from numpy_moe.conformance import CONFIGS
    model = presets.build(preset, CONFIGS[preset], seed=0, bugs=bugs)
    _train("block", model, np.random.default_rng(1), steps=2)
    loaded = io.load(io.save(model, tmp_path / "m.npz"))
    _copy_generators(model, loaded)
    assert encode_module(loaded, None, "") == encode_module(model, None, "")
    assert _bitwise(_pass("block", loaded, np.random.default_rng(7)), _pass("block", model, np.random.default_rng(7)))
    assert loaded.aux_loss == model.aux_loss
    _train("block", loaded, np.random.default_rng(8), steps=2)
    _train("block", model, np.random.default_rng(8), steps=2)
    assert _bitwise(_state_arrays(loaded), _state_arrays(model))


# ----- resuming training --------------------------------------------------------------------------
RESUMABLE = {
    "MoE top-2 V-MoE noise": lambda: MoE(5, 3, 4, hidden=6, top_k=2, noise="vmoe", seed=0, balance={"switch": 0.01}),
    "MoE ScoreGate bias_update jitter": lambda: MoE(gate=__import__("numpy_moe.gates", fromlist=["x"]).ScoreGate(
        5, 4, top_k=2, bias_update=0.05, jitter=0.1, seed=1), experts=None, out_features=3, hidden=6, seed=2),
}
OPTIMIZERS = {"Adam": lambda: Adam(0.01), "SGD momentum decay": lambda: SGD(0.05, momentum=0.9, decay=0.9),
              "FTRL l1 l2": lambda: FTRL(0.1, l1=1e-3, l2=1e-3)}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("model", RESUMABLE)
@pytest.mark.parametrize("how", ["pickle", "io"])
def test_training_resumed_from_a_copy_ends_where_uninterrupted_training_ends(how, model, optimizer, tmp_path, rng):
    """Four epochs of train.fit equal two, a save, a load into fresh objects and two more, bit for bit:
    weights, buffers (ScoreGate's selection bias) and optimiser state (moments, step count, FTRL's z and n,
    SGD's decayed rate). The state that io does not hold (the optimiser, the shuffling and noise generators)
    travels by pickle; ``how`` says how the model does."""
    X, y = rng.standard_normal((48, 5)), np.arange(48) % 3
    whole, whole_opt, whole_rng = RESUMABLE[model](), OPTIMIZERS[optimizer](), np.random.default_rng(3)
    fit(whole, X, y, optimizer=whole_opt, epochs=4, batch_size=16, seed=whole_rng)
    first, first_opt, first_rng = RESUMABLE[model](), OPTIMIZERS[optimizer](), np.random.default_rng(3)
    fit(first, X, y, optimizer=first_opt, epochs=2, batch_size=16, seed=first_rng)
    generators = [m.rng for m in first.modules() if hasattr(m, "rng")]
    moved = any(np.any(b != 0) for _, b in first.named_buffers())
    blob = pickle.dumps((first, first_opt, first_rng) if how == "pickle" else (first_opt, first_rng, generators))
    if how == "pickle":
        again, again_opt, again_rng = pickle.loads(blob)
    else:
        again = io.load(io.save(first, tmp_path / "m.npz"))
        again_opt, again_rng, generators = pickle.loads(blob)
        for m, generator in zip([m for m in again.modules() if hasattr(m, "rng")], generators):
            m.rng = generator
    del first, first_opt, first_rng
    fit(again, X, y, optimizer=again_opt, epochs=2, batch_size=16, seed=again_rng)
    assert _bitwise(_state_arrays(again), _state_arrays(whole))
    assert pickle.dumps(vars(again_opt)) == pickle.dumps(vars(whole_opt)) and again_opt.t == 12  # 4 epochs of 3 batches
    assert moved or "ScoreGate" not in model  # the bias the copy carried was not its initial zero


# ----- estimators ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make, y", [
    (lambda: MoEClassifier(top_k=2, noise="vmoe", epochs=2, random_state=0), np.arange(40) % 3),
    (lambda: MoERegressor(top_k=2, noise="shazeer", epochs=2, random_state=0), np.linspace(-1, 1, 40)),
])
def test_a_loaded_noisy_estimator_continues_training_reproducibly_from_its_random_state(make, y, tmp_path, rng):
    # Once, the file held no generator and partial_fit after loading started a fresh one from random_state for
    # the shuffling, but the gate's noise came from the generator the loaded model was rebuilt with, an
    # unseeded one: two loads of one file then trained to different models despite random_state=0. Now the
    # file holds the estimator's generator, which the noisy gates share again after loading.
    X = rng.standard_normal((40, 4))
    path = io.save(make().fit(X, y), tmp_path / "est.npz")
    first, second = io.load(path).partial_fit(X, y), io.load(path).partial_fit(X, y)
    for (name, p), (_, q) in zip(first.model_.named_parameters(), second.model_.named_parameters()):
        assert np.array_equal(p, q), name
    assert first.model_.gate.rng is first._rng  # the noise follows random_state, as in a fitted estimator


ESTIMATORS = {
    "MoEClassifier noise": (lambda: MoEClassifier(top_k=2, noise="vmoe", epochs=2, random_state=0), "classes"),
    "MoERegressor sgd": (lambda: MoERegressor(optimizer="sgd", epochs=2, random_state=0), "values"),
    "MoEClassifier ftrl": (lambda: MoEClassifier(optimizer="ftrl", epochs=2, random_state=0), "classes"),
    "LocalExpertsClassifier": (lambda: LocalExpertsClassifier(epochs=2, random_state=0), "classes"),
    "LocalExpertsRegressor": (lambda: LocalExpertsRegressor(epochs=2, random_state=0), "values"),
    "HMEClassifier": (lambda: HMEClassifier(tree=[2, 2], max_iter=3, random_state=0), "classes"),
    "HMERegressor": (lambda: HMERegressor(tree=[2, 2], max_iter=3, random_state=0), "values"),
}


@pytest.mark.parametrize("name", ESTIMATORS)
def test_fitted_estimators_copy_pickle_and_clone(name, rng):
    """pickle and deepcopy keep everything, the private optimiser and generator included: predictions are the
    same and partial_fit continues bit for bit. clone gives an unfitted estimator of the same parameters, and
    get_params / set_params round-trip."""
    make, task = ESTIMATORS[name]
    X = rng.standard_normal((40, 4))
    y = np.arange(40) % 3 if task == "classes" else X[:, 0] - 0.5 * X[:, 1]
    est = make().fit(X, y)
    clone_ = clone(est)
    assert clone_.get_params() == est.get_params() and not [k for k in vars(clone_) if k.endswith("_")]
    assert make().set_params(**est.get_params()).get_params() == est.get_params()
    for other in (pickle.loads(pickle.dumps(est)), copy.deepcopy(est)):
        assert type(other) is type(est) and other.get_params() == est.get_params()
        np.testing.assert_array_equal(other.predict(X), est.predict(X))
        if hasattr(est, "predict_proba"):
            np.testing.assert_array_equal(other.predict_proba(X), est.predict_proba(X))
        if hasattr(est, "partial_fit"):
            ahead = copy.deepcopy(est).partial_fit(X, y)
            other.partial_fit(X, y)
            assert _bitwise(_state_arrays(other.model_), _state_arrays(ahead.model_)) and other.n_iter_ == ahead.n_iter_


@pytest.mark.parametrize("name", ESTIMATORS)
def test_a_fitted_estimator_keeps_no_arrays_of_its_last_batch(name, rng):
    """After fit, partial_fit and predict, each module of model_ holds only what it was built with (parameters,
    gradients, buffers, settings): the last forward's inputs, activations and routings are dropped
    (Module.drop_caches), so a pickled estimator does not carry them and its size does not grow with the
    batch it last predicted. Before, a fitted MoEClassifier pickled to 414 kB (3.1 MB with top_k=2, whose
    grouped experts kept their row buffers) for 41 kB of parameters, and a predict on 5000 rows added their
    activations (HME's forward kept a cache too)."""
    make, task = ESTIMATORS[name]
    X, X_big = rng.standard_normal((40, 4)), rng.standard_normal((5000, 4))
    y = np.arange(40) % 3 if task == "classes" else X[:, 0] - 0.5 * X[:, 1]
    est = make().fit(X, y)
    size = len(pickle.dumps(est))
    fresh = type(est.model_).from_config(est.model_.get_config())
    bookkeeping = {"_constructed", "_child_names"}

    def extra():
        return {f"{type(m).__name__}.{k}" for m, f in zip(est.model_.modules(), fresh.modules())
                for k in vars(m) if k not in vars(f) and k not in bookkeeping}

    assert not extra(), "after fit"
    est.predict(X_big)
    if hasattr(est, "predict_proba"):
        est.predict_proba(X_big)
    assert not extra(), "after predict"
    assert len(pickle.dumps(est)) < size + 1000  # bookkeeping only (the record of the first pass); X_big is 160 kB
    if hasattr(est, "partial_fit"):
        est.partial_fit(X, y)
        assert not extra(), "after partial_fit"


def test_a_module_deep_copied_between_its_forward_and_backward_still_runs_that_backward(rng):
    """Module.drop_caches is the estimators' call: a Module copied or pickled mid-pass keeps its caches."""
    model = MoE(4, 3, 4, hidden=5, top_k=2, seed=0)
    x, dy = rng.standard_normal((30, 4)), rng.standard_normal((30, 3))
    model.forward(x)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(other.backward(dy), model.backward(dy))
    model.drop_caches()
    with pytest.raises(ValueError, match="needs a forward pass first"):
        model.backward(dy)


# ----- a save that fails leaves the target as it was and no temporary file -------------------------
def _listing(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("target, error, message", [
    ("", ValueError, "path='' is empty; pass a file name"),
    ("m.npz/", IsADirectoryError, "ends with a path separator"),
    ("gone/m.npz", FileNotFoundError, "cannot write .*m.npz: its directory .*gone does not exist"),
])
def test_a_save_to_a_path_that_cannot_be_a_file_writes_nothing_anywhere(target, error, message, tmp_path,
                                                                           monkeypatch):
    # An empty name or one ending in "/" has no file name: the temporary file was written, whole, into the
    # working directory's parent ("" -> abspath's dirname) or beside the directory, and only the rename
    # failed, with a message naming the temporary file ("No such file or directory: '/x/..a1b2.tmp' -> ''").
    # A missing directory gave that temporary file's name too, not the target's.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    io.save(MoE(5, 3, 4, seed=0), work / "m.npz")
    before, files = (work / "m.npz").read_bytes(), _listing(tmp_path)
    with pytest.raises(error, match=message):
        io.save(MoE(5, 3, 4, seed=1), target)
    assert _listing(tmp_path) == files and (work / "m.npz").read_bytes() == before


@pytest.mark.parametrize("failure", ["disk full", "interrupt", "not serialisable", "NaN weights"])
def test_a_save_that_fails_midway_leaves_the_previous_file_and_no_temporary_file(failure, tmp_path, monkeypatch):
    model = MoE(5, 3, 4, hidden=6, seed=0)
    path = io.save(model, tmp_path / "m.npz")
    before = path.read_bytes()
    new = MoE(5, 3, 4, hidden=6, seed=1)
    error = {"disk full": OSError, "interrupt": KeyboardInterrupt, "not serialisable": TypeError,
             "NaN weights": ValueError}[failure]
    if failure in ("disk full", "interrupt"):
        def savez(f, **arrays):  # half the bytes reach the temporary file, then the write fails
            f.write(before[: len(before) // 2])
            raise KeyboardInterrupt if failure == "interrupt" else OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(archive.numpy, "savez", savez)
    elif failure == "not serialisable":
        new._init_args = ((), {"in_features": 5, "out_features": 3, "n_experts": 4, "hidden": 6, "seed": 1,
                               "balance": {"importance": object()}})
    else:
        new.experts.params["W2"][0, 0, 0] = np.nan
    with pytest.raises(error):
        io.save(new, path)
    assert path.read_bytes() == before and _listing(tmp_path) == ["m.npz"]


def test_a_load_into_that_fails_on_its_last_array_leaves_every_parameter_and_buffer_as_it_was(tmp_path, rng):
    from numpy_moe.gates import ScoreGate
    source = MoE(gate=ScoreGate(5, 4, top_k=2, bias_update=0.05, seed=1), experts=None, out_features=3, hidden=6,
                 seed=2)
    fit(source, rng.standard_normal((32, 5)), np.arange(32) % 3, epochs=1, batch_size=8, seed=0)
    data = bytearray(io.save(source, tmp_path / "m.npz").read_bytes())
    bias = source.gate.buffers["bias"].tobytes()  # the buffer is the last entry: the others are read first
    data[data.rindex(bias) + 3] ^= 0xFF
    (tmp_path / "bad.npz").write_bytes(bytes(data))
    target = MoE(gate=ScoreGate(5, 4, top_k=2, bias_update=0.05, seed=3), experts=None, out_features=3, hidden=6,
                 seed=4)
    target.gate.buffers["bias"][...] = [0.5, -0.5, 0.25, 0.0]
    before = [a.copy() for a in _state_arrays(target)]
    with pytest.raises(ValueError, match=r"bad.npz is not a valid numpy-moe .npz file: entry 'buffer:gate.bias'.*CRC"):
        io.load_into(target, tmp_path / "bad.npz")
    assert _bitwise(_state_arrays(target), before)


def test_a_failing_framework_import_leaves_the_callers_state_dict_as_it_was():
    # from_state_dict builds a new block, so a failure leaves no half-imported model behind; the state
    # dict it was given must not be changed either.
    from numpy_moe import presets
    cfg = {"hidden_size": 8, "intermediate_size": 6, "num_local_experts": 4, "num_experts_per_tok": 2}
    state = presets.to_state_dict("mixtral", presets.build("mixtral", cfg, seed=0), layout="fused")
    state["experts.down_proj"] = state["experts.down_proj"].copy()
    state["experts.down_proj"][1, 2, 3] = np.inf  # read after the router's and gate_up_proj's weights
    before = {k: v.copy() for k, v in state.items()}
    with pytest.raises(ValueError, match=r"state_dict\['experts.down_proj'\] has 1 NaN or inf values"):
        presets.from_state_dict("mixtral", state, cfg)
    assert state.keys() == before.keys() and all(np.array_equal(state[k], before[k]) for k in state)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX (os.mkfifo)")
def test_a_save_over_a_special_file_refuses_instead_of_replacing_it(tmp_path):
    # A save writes a temporary file and renames it over the target: over a named pipe (or, for root,
    # os.devnull) that replaced the special file itself with a regular file.
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    with pytest.raises(ValueError, match="pipe exists and is not a regular file"):
        io.save(MoE(5, 3, 4, seed=0), pipe)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode) and _listing(tmp_path) == ["pipe"]


def test_a_new_file_gets_the_umask_mode_without_the_save_changing_the_umask(tmp_path, monkeypatch):
    # The mode for a new file was read by setting the umask to 0 and back: os.umask is process-wide, so a
    # file another thread created in between was created world-writable.
    umask = os.umask(0o022)
    os.umask(umask)
    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or umask)
    path = io.save(MoE(5, 3, 4, seed=0), tmp_path / "new.npz")
    assert calls == [] and os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o640)  # and a file replaced keeps its mode
    io.save(MoE(5, 3, 4, seed=1), path)
    assert os.stat(path).st_mode & 0o777 == 0o640 and _listing(tmp_path) == ["new.npz"]


# ----- an optimiser step that fails changes nothing ------------------------------------------------
def _state(optimizer):
    return pickle.dumps(vars(optimizer))  # every moment, accumulator and counter, bit for bit


@pytest.mark.parametrize("make", [lambda: Adam(0.01), lambda: SGD(0.01, momentum=0.9), lambda: FTRL(0.1, l1=0.01)])
def test_an_optimiser_step_that_fails_changes_neither_the_model_nor_the_optimiser(make, rng):
    # An optimiser keeps state per parameter name. Reused on a model whose experts have another width (the
    # same names, other shapes), its step updated the gate, then failed on the experts with numpy's
    # "operands could not be broadcast together": half the model stepped, t and the gate's moments advanced.
    X, y = rng.standard_normal((20, 5)), np.arange(20) % 3
    optimizer = make()
    fit(MoE(5, 3, 4, hidden=7, seed=0), X, y, optimizer=optimizer, epochs=1, seed=0)
    other = MoE(5, 3, 4, hidden=9, seed=1)
    other.backward(F.cross_entropy_backward(other.forward(X), y))
    params, state = {k: p.copy() for k, p in other.named_parameters()}, _state(optimizer)
    with pytest.raises(ValueError, match=r"holds state for 'experts.W1' of shape \(4, 5, 7\); the parameter "
                                         r"has shape \(4, 5, 9\)"):
        optimizer.step(other)
    assert all(np.array_equal(p, params[k]) for k, p in other.named_parameters()) and _state(optimizer) == state


@pytest.mark.parametrize("make", [lambda: Adam(0.01), lambda: SGD(0.05, momentum=0.9), lambda: FTRL(0.1)])
def test_the_online_pass_of_the_classic_trainer_checks_the_optimiser_state_first_too(make, rng):
    # Batch size 1 runs a fused pass that calls update() without step(): an optimiser kept from a model with
    # another number of outputs failed there with the broadcast error, its step count advanced.
    X, y = rng.standard_normal((20, 5)), np.arange(20) % 3
    optimizer = make()
    fit_local_experts(LocalExperts(5, 3, 4, seed=0), X, y, optimizer=optimizer, epochs=1, seed=0)
    other = LocalExperts(5, 2, 4, seed=1)
    params, state = {k: p.copy() for k, p in other.named_parameters()}, _state(optimizer)
    with pytest.raises(ValueError, match=r"holds state for 'V' of shape \(4, 6, 3\); the parameter has shape "
                                         r"\(4, 6, 2\)"):
        fit_local_experts(other, X, y % 2, optimizer=optimizer, epochs=1, seed=0)
    assert all(np.array_equal(p, params[k]) for k, p in other.named_parameters()) and _state(optimizer) == state


# ----- the configuration is the model's, not the caller's lists and dicts -------------------------
def test_changing_the_lists_and_dicts_a_model_was_built_from_changes_neither_its_configuration_nor_its_file(
        tmp_path, rng):
    # get_config() returned the very dict and list objects passed to the constructor: a caller who reused
    # them (balance weights for the next model, a list of widths) changed the configuration of a model
    # already built, so its file rebuilt another model (another balance loss: a different aux loss and
    # gradient, silently) or could not be loaded at all (an MLP with a layer its file has no weights for).
    balance, hidden = {"importance": 0.1}, [4, 6]
    moe, mlp = MoE(5, 3, 4, top_k=2, balance=balance, seed=0), MLP(5, hidden, 3, seed=0)
    balance["importance"], balance["switch"] = 5.0, 1.0
    hidden.append(7)
    assert moe.get_config()["balance"] == {"importance": 0.1} and mlp.get_config()["hidden"] == [4, 6]
    moe.get_config()["balance"]["z_loss"] = 1.0  # nor does changing what get_config returned
    assert moe.get_config()["balance"] == {"importance": 0.1}
    x = rng.standard_normal((8, 5))
    for model in (moe, mlp):
        loaded = io.load(io.save(model, tmp_path / "m.npz")).eval()
        np.testing.assert_array_equal(loaded.forward(x), model.eval().forward(x))
        assert loaded.aux_loss == model.aux_loss


def test_a_layer_that_holds_part_of_a_model_is_refused_before_anything_is_written(tmp_path):
    # ExpertParallelMoE is deliberately not loadable (each rank holds only its own experts), but io.save
    # wrote it, over any file already there, and only loading said "not registered ... register it".
    from numpy_moe.parallel import ExpertParallelMoE
    path = io.save(MoE(5, 3, 4, seed=0), tmp_path / "m.npz")
    before = path.read_bytes()
    layer = ExpertParallelMoE.__new__(ExpertParallelMoE)  # without MPI: save refuses the class, not the object
    with pytest.raises(TypeError, match="cannot save ExpertParallelMoE: each rank holds only its own experts"):
        io.save(layer, path)
    assert path.read_bytes() == before and _listing(tmp_path) == ["m.npz"]
