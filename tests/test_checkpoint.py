"""io.save_checkpoint / io.load_checkpoint: training continues bit for bit; crafted files are refused."""
import json
import os
import zipfile

import numpy as np
import pytest

from numpy_moe import io
from numpy_moe.layers import MLP, Sequential
from numpy_moe.moe import MoE
from numpy_moe.optim import FTRL, SGD, Adam
from numpy_moe.train import fit

OPTIMIZERS = {"SGD": lambda: SGD(0.05, momentum=0.9, decay=0.9), "Adam": lambda: Adam(0.01),
              "FTRL": lambda: FTRL(0.5, 0.2, l1=1e-4, l2=1e-3)}


def data(dtype="float64"):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((96, 5)).astype(dtype)
    return X, (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)


def noisy_moe(dtype="float64"):
    """Shazeer noise: the gate draws from its own generator at every training forward."""
    return MoE(5, 3, n_experts=4, hidden=8, top_k=2, noise="shazeer", balance={"importance": 0.01, "load": 0.01},
               seed=1, dtype=dtype)


def state(model, optimizer, rng):
    return ([p.copy() for _, p in model.named_parameters()], optimizer.t,
            {k: {n: a.copy() for n, a in getattr(optimizer, k).items()} for k in optimizer._state},
            rng.bit_generator.state)


def assert_same(a, b):
    (pa, ta, sa, ra), (pb, tb, sb, rb) = a, b
    assert all(np.array_equal(x, y) for x, y in zip(pa, pb)) and len(pa) == len(pb)
    assert ta == tb and ra == rb and sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys() and all(np.array_equal(sa[k][n], sb[k][n]) for n in sa[k])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_training_continues_bit_for_bit(tmp_path, opt, dtype):
    X, y = data(dtype)
    model, optimizer, rng = noisy_moe(dtype), OPTIMIZERS[opt](), np.random.default_rng(7)
    fit(model, X, y, optimizer=optimizer, epochs=2, batch_size=16, seed=rng)
    optimizer.end_epoch()  # a schedule's lr moved (SGD's decay): the checkpoint holds the current one
    path = io.save_checkpoint(str(tmp_path / "run.npz"), model, optimizer, {"shuffle": rng})
    config = optimizer.get_config()
    fit(model, X, y, optimizer=optimizer, epochs=2, batch_size=16, seed=rng)
    uninterrupted = state(model, optimizer, rng)

    loaded = io.load_checkpoint(path)
    assert type(loaded.optimizer) is type(optimizer) and loaded.optimizer.get_config() == config
    fit(loaded.model, X, y, optimizer=loaded.optimizer, epochs=2, batch_size=16, seed=loaded.generators["shuffle"])
    assert_same(state(loaded.model, loaded.optimizer, loaded.generators["shuffle"]), uninterrupted)


def test_the_resume_test_can_fail(tmp_path):
    """What a model file alone gives (fresh optimiser, fresh gate noise) does not continue the run: the
    comparison above sees the difference."""
    X, y = data()
    model, optimizer, rng = noisy_moe(), Adam(0.01), np.random.default_rng(7)
    fit(model, X, y, optimizer=optimizer, epochs=2, batch_size=16, seed=rng)
    io.save(model, str(tmp_path / "m.npz"))
    path = io.save_checkpoint(str(tmp_path / "run.npz"), model, optimizer, {"shuffle": rng})
    fit(model, X, y, optimizer=optimizer, epochs=1, batch_size=16, seed=rng)
    reference = [p.copy() for _, p in model.named_parameters()]

    for restore_gate_noise, restore_optimizer in [(False, True), (True, False)]:
        ck = io.load_checkpoint(path)
        model2, opt2 = ck.model, ck.optimizer
        if not restore_gate_noise:
            model2.gate.rng = np.random.default_rng()
        if not restore_optimizer:
            opt2 = Adam(0.01)
        fit(model2, X, y, optimizer=opt2, epochs=1, batch_size=16, seed=ck.generators["shuffle"])
        assert not all(np.array_equal(a, b) for a, b in zip(reference, (p for _, p in model2.named_parameters())))


def test_shared_generators_stay_shared(tmp_path):
    """Two layers built from one Generator draw their noise from it in turn, and fit may shuffle with it
    too: after loading they still share one generator, and training continues bit for bit."""
    X, y = data()
    rng = np.random.default_rng(11)
    model = Sequential(MoE(5, 6, n_experts=3, hidden=4, top_k=2, noise="shazeer", seed=rng),
                       MoE(6, 3, n_experts=3, hidden=4, top_k=2, noise="vmoe", seed=rng))
    optimizer = Adam(0.01)
    fit(model, X, y, optimizer=optimizer, epochs=1, batch_size=16, seed=rng)
    path = io.save_checkpoint(str(tmp_path / "c.npz"), model, optimizer, {"shuffle": rng})
    fit(model, X, y, optimizer=optimizer, epochs=2, batch_size=16, seed=rng)
    uninterrupted = state(model, optimizer, rng)

    ck = io.load_checkpoint(path)
    first, second = (m for m in ck.model.modules() if isinstance(m, MoE))
    assert first.gate.rng is second.gate.rng is ck.generators["shuffle"]
    with open(path, "rb") as f, zipfile.ZipFile(f) as z:
        meta = json.loads(str(np.load(z.open("__meta__.npy"), allow_pickle=False)))
    assert len(meta["checkpoint"]["generator_states"]) == 1  # one state, three references
    fit(ck.model, X, y, optimizer=ck.optimizer, epochs=2, batch_size=16, seed=ck.generators["shuffle"])
    assert_same(state(ck.model, ck.optimizer, ck.generators["shuffle"]), uninterrupted)


def test_training_flags_generators_and_plain_load(tmp_path):
    model = noisy_moe()
    model.gate.eval()  # one module in evaluation mode, the rest training
    model.gate.rng.standard_normal(5)
    path = io.save_checkpoint(str(tmp_path / "c.npz"), model)
    ck = io.load_checkpoint(path)
    assert [m.training for m in ck.model.modules()] == [m.training for m in model.modules()]
    assert ck.model.gate.rng.bit_generator.state == model.gate.rng.bit_generator.state
    assert ck.optimizer is None and ck.generators == {}
    plain = io.load(path)  # a checkpoint's model reads as a model file
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(plain.named_parameters(), model.named_parameters()))
    io.save(model, str(tmp_path / "m.npz"))
    with pytest.raises(ValueError, match="no checkpoint"):
        io.load_checkpoint(str(tmp_path / "m.npz"))


def test_saving_refuses_what_it_cannot_check(tmp_path):
    path = tmp_path / "c.npz"
    model = MLP(3, 4, 2, seed=0)

    class MyAdam(Adam):
        pass

    with pytest.raises(TypeError, match="only"):
        io.save_checkpoint(path, model, MyAdam())
    with pytest.raises(TypeError, match="PCG64"):
        io.save_checkpoint(path, model, generators={"g": np.random.Generator(np.random.MT19937(0))})
    with pytest.raises(TypeError, match="not a numpy.random.Generator"):
        io.save_checkpoint(path, model, generators={"g": 3})
    with pytest.raises(TypeError, match="non-empty str"):
        io.save_checkpoint(path, model, generators={"": np.random.default_rng()})
    with pytest.raises(TypeError, match="Module"):
        io.save_checkpoint(path, object())
    other = Adam()
    other.m["W9"], other.v["W9"] = np.zeros(2), np.zeros(2)
    with pytest.raises(ValueError, match="another model"):
        io.save_checkpoint(path, model, other)
    assert not path.exists()
    path.write_bytes(b"before")
    next(p for _, p in model.named_parameters())[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        io.save_checkpoint(path, model, Adam())
    assert path.read_bytes() == b"before"  # a refused save leaves the file as it was


# ----- crafted files --------------------------------------------------------------------------------
def trained(tmp_path, opt="Adam"):
    X, y = data()
    model, optimizer, rng = noisy_moe(), OPTIMIZERS[opt](), np.random.default_rng(7)
    fit(model, X, y, optimizer=optimizer, epochs=1, batch_size=32, seed=rng)
    return io.save_checkpoint(str(tmp_path / "ok.npz"), model, optimizer, {"shuffle": rng})


def rewrite(src, dst, edit_meta=None, edit_arrays=None):
    """Copy checkpoint ``src`` to ``dst`` with its metadata and arrays edited."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("__meta__")))
    if edit_meta:
        edit_meta(meta)
    if edit_arrays:
        edit_arrays(arrays)
    np.savez(dst, __meta__=np.array(json.dumps(meta)), **arrays)
    return str(dst)


def first_state(meta, slot):
    return next(iter(meta["checkpoint"]["optimizer"]["state"][slot]))


def set_in(path, value):
    def edit(meta):
        d = meta
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


OPT = ("checkpoint", "optimizer")
GEN = ("checkpoint", "generator_states", 0)
CRAFTED = {
    "unknown optimiser": (set_in(OPT + ("class",), "os.system"), None, "not one of"),
    "optimiser config key": (set_in(OPT + ("config", "momentum"), 0.9), None, "exactly"),
    "negative lr": (set_in(OPT + ("config", "lr"), -1.0), None, "lr"),
    "string lr": (set_in(OPT + ("config", "lr"), "0.1"), None, "lr"),
    "negative t": (set_in(OPT + ("t",), -1), None, "t=-1"),
    "float t": (set_in(OPT + ("t",), 2.5), None, "t=2.5"),
    "bool t": (set_in(OPT + ("t",), True), None, "t=True"),
    "missing slot": (lambda m: m["checkpoint"]["optimizer"]["state"].pop("v"), None, "slots"),
    "m without v": (lambda m: m["checkpoint"]["optimizer"]["state"]["v"].pop(first_state(m, "v")), None,
                    "all of"),
    "unknown parameter": (lambda m: m["checkpoint"]["optimizer"]["state"]["m"].update({"nope": "x"}), None,
                          "not parameters"),
    "other array": (lambda m: m["checkpoint"]["optimizer"]["state"]["m"].update(
        {first_state(m, "m"): "model/" + first_state(m, "m")}), None, "refers to"),
    "wrong shape": (None, lambda a: a.update({k: a[k][:1] for k in a if k.startswith("optimizer/m/")}), "is float64"),
    "wrong dtype": (None, lambda a: a.update({k: a[k].astype(np.float32) for k in a if k.startswith("optimizer/m/")}),
                    "is float32"),
    "NaN state": (None, lambda a: a.update({k: a[k] * np.nan for k in a if k.startswith("optimizer/m/")}), "NaN"),
    "negative v": (None, lambda a: a.update({k: -1 - a[k] for k in a if k.startswith("optimizer/v/")}), "negative"),
    "bit generator": (set_in(GEN + ("bit_generator",), "MT19937"), None, "not one of"),
    "state too large": (set_in(GEN + ("state", "state"), 2 ** 128), None, "2\\*\\*128"),
    "negative inc": (set_in(GEN + ("state", "inc"), -3), None, "inc"),
    "has_uint32 2": (set_in(GEN + ("has_uint32",), 2), None, "has_uint32"),
    "extra state key": (set_in(GEN + ("extra",), 1), None, "exactly"),
    "states not a list": (set_in(("checkpoint", "generator_states"), {}), None, "generator_states"),
    "named index": (set_in(("checkpoint", "named_generators", "shuffle"), 5), None, "index below"),
    "named bool": (set_in(("checkpoint", "named_generators", "shuffle"), True), None, "index below"),
    "module generator index": (lambda m: m["checkpoint"]["model_generators"][0].update({"generator": -1}), None,
                               "index below"),
    "module index": (lambda m: m["checkpoint"]["model_generators"][0].update({"module": 99}), None, "index"),
    "not a generator": (lambda m: m["checkpoint"]["model_generators"][0].update({"attribute": "training"}), None,
                        "no generator"),
    "twice": (lambda m: m["checkpoint"]["model_generators"].append(m["checkpoint"]["model_generators"][0]), None,
              "twice"),
    "training flags": (lambda m: m["checkpoint"]["training"].pop(), None, "booleans"),
    "training not bool": (lambda m: m["checkpoint"]["training"].__setitem__(0, 1), None, "booleans"),
    "extra section": (set_in(("checkpoint", "pickle"), "x"), None, "exactly"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_checkpoint_is_refused(tmp_path, case):
    edit_meta, edit_arrays, message = CRAFTED[case]
    bad = rewrite(trained(tmp_path), tmp_path / "bad.npz", edit_meta, edit_arrays)
    with pytest.raises(ValueError, match=message) as err:
        io.load_checkpoint(bad)
    assert "bad.npz" in str(err.value)


def test_an_unedited_rewrite_loads(tmp_path):
    """The crafted cases fail for their edit, not for the rewriting."""
    ok = rewrite(trained(tmp_path), tmp_path / "same.npz")
    assert io.load_checkpoint(ok).optimizer.t == 3


@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_every_optimiser_state_is_checked_against_the_model(tmp_path, opt):
    path = trained(tmp_path, opt)
    slot = OPTIMIZERS[opt]()._state[0]
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.startswith(f"optimizer/{slot}/")]
    assert names  # the optimiser's state is in the file
    bad = rewrite(path, tmp_path / "bad.npz", None, lambda a: a.update({n[:-4]: a[n[:-4]][..., :1] for n in names}))
    with pytest.raises(ValueError, match="the parameter is"):
        io.load_checkpoint(bad)
    assert os.path.getsize(path) > 0


# ----- estimators: io.save keeps the optimiser and the generator that partial_fit goes on with ---------------
def _estimators():
    from numpy_moe.estimators import LocalExpertsClassifier, LocalExpertsRegressor, MoEClassifier, MoERegressor
    return {
        "MoEClassifier adam, noise": (lambda: MoEClassifier(top_k=2, noise="vmoe", epochs=2, random_state=0), True),
        "MoERegressor sgd, shazeer": (lambda: MoERegressor(top_k=2, noise="shazeer", optimizer="sgd", epochs=2,
                                                           random_state=0), False),
        "MoEClassifier ftrl": (lambda: MoEClassifier(optimizer="ftrl", epochs=2, random_state=0), True),
        "LocalExpertsClassifier": (lambda: LocalExpertsClassifier(epochs=2, random_state=0), True),
        "LocalExpertsRegressor": (lambda: LocalExpertsRegressor(mode="cooperative", epochs=2, random_state=0), False),
    }


def _fitted(name, tmp_path):
    make, classes = _estimators()[name]
    rng = np.random.default_rng(5)
    X = rng.standard_normal((48, 4))
    y = np.arange(48) % 3 if classes else X[:, 0] - 0.5 * X[:, 1]
    est = make().fit(X, y)
    return est, X, y, io.save(est, str(tmp_path / "est.npz"))


def _model_state(est):
    return [p.copy() for _, p in est.model_.named_parameters()]


@pytest.mark.parametrize("name", sorted(_estimators()))
def test_a_loaded_estimator_goes_on_as_the_saved_one_would(tmp_path, name):
    est, X, y, path = _fitted(name, tmp_path)
    loaded = io.load(path)
    assert loaded._optimizer.t == est._optimizer.t and loaded._optimizer.get_config() == est._optimizer.get_config()
    for est_ in (est, loaded):
        est_.partial_fit(X, y)
        est_.partial_fit(X, y)
    assert all(np.array_equal(a, b) for a, b in zip(_model_state(loaded), _model_state(est)))
    assert loaded._rng.bit_generator.state == est._rng.bit_generator.state
    for m in loaded.model_.modules():  # the noisy gates draw from the estimator's generator, as after fit
        if isinstance(getattr(m, "rng", None), np.random.Generator):
            assert m.rng is loaded._rng


@pytest.mark.parametrize("name", ["MoEClassifier adam, noise", "LocalExpertsRegressor"])
def test_a_file_without_training_state_starts_afresh_and_differs(tmp_path, name):
    """Files written before estimators kept their training state still load; their partial_fit starts a fresh
    optimiser, so it does not continue the run: the test above can tell."""
    est, X, y, path = _fitted(name, tmp_path)
    old = rewrite(path, tmp_path / "old.npz", lambda m: m["object"].pop("training"),
                  lambda a: [a.pop(k) for k in list(a) if k.startswith("training/")])
    loaded = io.load(old)
    assert not hasattr(loaded, "_optimizer")
    loaded.partial_fit(X, y)
    est.partial_fit(X, y)
    assert not all(np.array_equal(a, b) for a, b in zip(_model_state(loaded), _model_state(est)))


def _set_training(key, value):
    def edit(meta):
        meta["object"]["training"][key] = value
    return edit


ESTIMATOR_CRAFTED = {
    "another optimiser": (lambda m: m["object"]["training"]["optimizer"].update(
        {"class": "SGD", "config": {"lr": 0.1, "momentum": 0.0, "decay": 1.0},
         "state": {"velocity": {}}}), None, "trains with Adam"),
    "prefix over the model": (_set_training("prefix", "model_/"), None, "refers to"),
    "missing array": (lambda m: m["object"]["training"]["optimizer"]["state"]["m"].update({"gate.W": "nope"}),
                      None, "does not hold"),
    "a model array": (lambda m: m["object"]["training"]["optimizer"]["state"]["m"].update(
        {"gate.W": "model_/gate.W"}), None, "belongs to one record"),
    "wrong shape": (None, lambda a: a.update({k: a[k][..., :1] for k in a if k.startswith("training/optimizer/v/")}),
                    "the parameter is"),
    "negative v": (None, lambda a: a.update({k: -1 - a[k] for k in a if k.startswith("training/optimizer/v/")}),
                   "negative"),
    "generator": (_set_training("rng", {"bit_generator": "MT19937", "state": {}, "has_uint32": 0,
                                        "uinteger": 0}), None, "not one of"),
    "extra key": (_set_training("pickle", 1), None, "unexpected"),
}


@pytest.mark.parametrize("case", sorted(ESTIMATOR_CRAFTED))
def test_an_estimator_file_with_crafted_training_state_is_refused(tmp_path, case):
    edit_meta, edit_arrays, message = ESTIMATOR_CRAFTED[case]
    _, _, _, path = _fitted("MoEClassifier adam, noise", tmp_path)
    bad = rewrite(path, tmp_path / "bad.npz", edit_meta, edit_arrays)
    with pytest.raises(ValueError, match=message) as err:
        io.load(bad)
    assert "bad.npz" in str(err.value)


def test_an_estimator_without_training_state_refuses_one(tmp_path):
    from numpy_moe.estimators import HMERegressor
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    path = io.save(HMERegressor(tree=[2], max_iter=2, random_state=0).fit(X, X[:, 0]), str(tmp_path / "h.npz"))
    bad = rewrite(path, tmp_path / "bad.npz", lambda m: m["object"].update(
        {"training": {"prefix": "training/", "optimizer": {"state": {}}, "rng": {}}}))
    with pytest.raises(ValueError, match="keeps no training state"):
        io.load(bad)
