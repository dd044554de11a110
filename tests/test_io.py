"""Saving and loading: bit-exact round trips for every kind of model, and clear errors for files of another
architecture, truncated or corrupt files and files with NaN weights. No file is ever unpickled."""
import json

import numpy as np
import pytest

from numpy_moe import io
from numpy_moe.balance import Importance, ZLoss
from numpy_moe.classic import LocalExperts
from numpy_moe.estimators import LocalExpertsClassifier, LocalExpertsRegressor, MoEClassifier, MoERegressor
from numpy_moe.layers import MLP, Linear, Module, ReLU, Sequential
from numpy_moe.moe import MoE


def perturbed(model, rng):
    """Move every parameter off its initial value, so a reload cannot pass by re-drawing the same init."""
    for _, p in model.named_parameters():
        p += rng.standard_normal(p.shape).astype(p.dtype)
    return model


class Residual(Module):
    """A model class defined outside the package: y = x + mlp(x). io must save it with no extra code."""

    def __init__(self, width, hidden, seed=None):
        super().__init__()
        self.mlp = MLP(width, hidden, width, seed=seed)

    def forward(self, x):
        return x + self.mlp.forward(x)


class Activation(Module):
    """A module whose constructor takes a function: its configuration has no JSON form."""

    def __init__(self, activation):
        super().__init__()
        self.activation = activation


MODELS = {
    "Linear": lambda: Linear(5, 3, seed=0),
    "MLP tanh float32": lambda: MLP(5, (4, 6), 3, activation="tanh", seed=0, dtype="float32"),
    "Sequential": lambda: Sequential(Linear(5, 8, seed=0), ReLU(), MLP(8, 4, 3, seed=1)),
    "MoE dense linear": lambda: MoE(5, 3, n_experts=4, seed=0),
    "MoE dense MLP float32": lambda: MoE(5, 3, n_experts=4, hidden=7, seed=0, dtype="float32"),
    "MoE top-2 Shazeer noise + balance": lambda: MoE(5, 3, 4, hidden=7, seed=0, top_k=2, gate="topk_then_softmax",
                                                     noise="shazeer", balance={"importance": 0.1, "load": 0.1}),
    "MoE top-1 V-MoE capacity": lambda: MoE(5, 3, 4, seed=0, top_k=1, noise="vmoe", capacity_factor=1.25,
                                            batch_priority=True, balance={"switch": 0.01, "z_loss": 0.001}),
    "MoE expert choice": lambda: MoE(5, 3, 4, hidden=7, seed=0, router="expert_choice", capacity_factor=2),
    "MoE balance loss objects": lambda: MoE(5, 3, 4, seed=0, top_k=2, balance=[Importance(0.01), ZLoss(1e-3)]),
    "LocalExperts competitive classification": lambda: LocalExperts(5, 3, 4, mode="competitive", seed=0),
    "LocalExperts cooperative regression": lambda: LocalExperts(5, 2, 3, mode="cooperative", task="regression",
                                                                seed=0),
    "user-defined Module": lambda: Residual(5, 6, seed=0),
}


@pytest.mark.parametrize("name", MODELS)
def test_module_round_trip_is_bit_exact(name, tmp_path, rng):
    model = perturbed(MODELS[name](), rng)
    path = io.save(model, tmp_path / "model.npz")
    loaded = io.load(path)
    assert type(loaded) is type(model) and loaded.get_config().keys() == model.get_config().keys()
    saved, again = dict(model.named_parameters()), dict(loaded.named_parameters())
    assert saved.keys() == again.keys()
    for key, p in saved.items():
        assert again[key].dtype == p.dtype and np.array_equal(again[key], p), key
    x = rng.standard_normal((6, 5))
    np.testing.assert_array_equal(loaded.eval().forward(x), model.eval().forward(x))  # eval: no gate noise
    with np.load(path, allow_pickle=False) as npz:  # plain numpy reads it without pickle
        meta = json.loads(str(npz["__meta__"]))
    assert meta["format"] == "numpy-moe" and meta["object"]["class"].endswith(type(model).__qualname__)


def test_load_into_copies_parameters_into_a_model_of_the_same_architecture(tmp_path, rng):
    model = perturbed(MoE(5, 3, n_experts=4, hidden=7, seed=0), rng)
    io.save(model, tmp_path / "m.npz")
    target = MoE(5, 3, n_experts=4, hidden=7, seed=99)  # another seed is the same architecture
    assert io.load_into(target, tmp_path / "m.npz") is target
    x = rng.standard_normal((4, 5))
    np.testing.assert_array_equal(target.forward(x), model.forward(x))


@pytest.mark.parametrize("other, message", [
    (lambda: MoE(5, 3, n_experts=6, hidden=7), "another architecture: n_experts=4 in the file, 6 in the model"),
    (lambda: MoE(5, 3, n_experts=4, hidden=None), "hidden=7 in the file, None in the model"),
    (lambda: MoE(5, 3, n_experts=4, hidden=7, dtype="float32"), "dtype='float64' in the file, 'float32'"),
    (lambda: MoE(5, 3, n_experts=4, hidden=7, top_k=4), "top_k=None in the file, 4 in the model"),
    (lambda: MLP(5, 7, 3), "holds a numpy_moe.moe:MoE; the model is a numpy_moe.layers:MLP"),
])
def test_loading_into_another_architecture_raises_and_leaves_the_model_untouched(other, message, tmp_path):
    io.save(MoE(5, 3, n_experts=4, hidden=7, seed=0), tmp_path / "m.npz")
    model = other()
    before = {k: p.copy() for k, p in model.named_parameters()}
    with pytest.raises(ValueError, match=message):
        io.load_into(model, tmp_path / "m.npz")
    assert all(np.array_equal(p, before[k]) for k, p in model.named_parameters())


def test_parameters_that_do_not_match_the_stored_configuration_are_rejected(tmp_path):
    io.save(MoE(5, 3, n_experts=4, seed=0), tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as npz:
        entries = dict(npz)
    entries["gate.W"] = entries["gate.W"][:, :3]  # a gate for 3 experts in a 4-expert file
    del entries["experts.b"]
    np.savez(tmp_path / "bad.npz", **entries)
    with pytest.raises(ValueError, match=r"missing from the file \['experts.b'\]"):
        io.load(tmp_path / "bad.npz")
    entries["experts.b"] = np.zeros((4, 3))
    np.savez(tmp_path / "bad.npz", **entries)
    with pytest.raises(ValueError, match=r"'gate.W' is float64\[5, 3\] in the file; the model expects float64\[5, 4\]"):
        io.load(tmp_path / "bad.npz")


def test_truncated_and_corrupt_files_raise_a_clear_error(tmp_path):
    data = (io.save(MoE(5, 3, n_experts=4, hidden=7, seed=0), tmp_path / "m.npz")).read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a complete numpy-moe .npz file"):
        io.load(tmp_path / "cut.npz")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF  # one byte inside an array: the zip checksum no longer matches
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="not a complete numpy-moe .npz file"):
        io.load(tmp_path / "flip.npz")
    np.savez(tmp_path / "plain.npz", W=np.zeros(3))
    with pytest.raises(ValueError, match="not a numpy-moe model: it has no __meta__ entry"):
        io.load(tmp_path / "plain.npz")


def test_a_file_with_nan_weights_is_refused(tmp_path):
    model = MoE(5, 3, n_experts=4, hidden=7, seed=0)
    model.experts.params["W2"][1, 2, 0] = np.nan
    io.save(model, tmp_path / "nan.npz")
    with pytest.raises(ValueError, match=r"parameter 'experts.W2' contains NaN or inf \(1 of its values\)"):
        io.load(tmp_path / "nan.npz")
    with pytest.raises(ValueError, match="experts.W2' contains NaN"):
        io.load_into(MoE(5, 3, n_experts=4, hidden=7), tmp_path / "nan.npz")


def test_same_parameters_but_another_gate_convention_is_another_architecture(tmp_path):
    io.save(MoE(5, 3, 4, seed=0, top_k=2), tmp_path / "m.npz")
    with pytest.raises(ValueError, match="gate='softmax_then_topk' in the file, 'topk_then_softmax' in the model"):
        io.load_into(MoE(5, 3, 4, top_k=2, gate="topk_then_softmax"), tmp_path / "m.npz")


def test_unknown_classes_and_unsavable_objects(tmp_path):
    with pytest.raises(TypeError, match="cannot save a dict: expected a numpy_moe Module or estimator"):
        io.save({"W": np.zeros(2)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match=r"cannot save config\['activation'\]=<built-in function abs>"):
        io.save(Activation(abs), tmp_path / "x.npz")
    io.save(Linear(2, 2, seed=0), tmp_path / "lin.npz")
    with np.load(tmp_path / "lin.npz") as npz:
        entries = dict(npz)
    meta = json.loads(str(entries["__meta__"]))
    meta["object"]["class"] = "numpy_moe.layers:NoSuchLayer"
    entries["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "unknown.npz", **entries)
    with pytest.raises(ValueError, match="holds a numpy_moe.layers:NoSuchLayer, which is not defined here"):
        io.load(tmp_path / "unknown.npz")


@pytest.mark.parametrize("make, y", [
    (lambda: MoEClassifier(n_experts=3, hidden=5, random_state=0), np.array(["b", "a", "c"] * 20)),
    (lambda: MoERegressor(hidden=None, random_state=0), np.arange(60.0).reshape(30, 2) / 60),
    (lambda: MoEClassifier(top_k=2, noise="vmoe", balance=["importance", "load"], random_state=0),
     np.arange(60) % 3),
    (lambda: LocalExpertsClassifier(optimizer="ftrl", random_state=0), np.arange(60) % 3),
    (lambda: LocalExpertsRegressor(mode="cooperative", random_state=0), np.linspace(-1, 1, 60)),
])
def test_fitted_estimator_round_trip(make, y, tmp_path, rng):
    X = rng.standard_normal((60, 4))[: len(y)]
    est = make().fit(X, y)
    loaded = io.load(io.save(est, tmp_path / "est.npz"))
    assert type(loaded) is type(est) and loaded.get_params() == est.get_params()
    for name in ("n_features_in_", "n_iter_", "loss_curve_", "validation_loss_curve_"):
        assert getattr(loaded, name) == getattr(est, name), name
    np.testing.assert_array_equal(loaded.expert_usage_, est.expert_usage_)
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    if hasattr(est, "classes_"):
        np.testing.assert_array_equal(loaded.classes_, est.classes_)
        np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    loaded.partial_fit(X, y)  # training continues (with a fresh optimiser)
    assert loaded.n_iter_ == est.n_iter_ + 1


def test_a_fitted_pipeline_with_its_scaler_round_trips(tmp_path, rng):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = 5 + 3 * rng.standard_normal((60, 4))
    y = (X[:, 0] > 5).astype(int)
    pipe = make_pipeline(StandardScaler(), MoEClassifier(random_state=0)).fit(X, y)
    loaded = io.load(io.save(pipe, tmp_path / "pipe.npz"))
    assert [name for name, _ in loaded.steps] == ["standardscaler", "moeclassifier"]
    np.testing.assert_array_equal(loaded[0].scale_, pipe[0].scale_)
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))
    clf = pipe[-1]
    clf.feature_names_in_ = np.array(["a", "b", "c", "d"], dtype=object)  # what fitting on a DataFrame leaves
    names = io.load(io.save(clf, tmp_path / "clf.npz")).feature_names_in_
    assert names.dtype == object and names.tolist() == ["a", "b", "c", "d"]
