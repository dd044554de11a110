"""Saving and loading: bit-exact round trips for every kind of model, and clear errors for files of another
architecture, truncated or corrupt files and files with NaN weights. No file is ever unpickled."""
import json
from pathlib import Path

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


@io.register
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


def rewrite(path, out, change):
    """Copy the .npz ``path`` to ``out`` with ``change(entries, meta)`` applied to its entries and metadata."""
    with np.load(path) as npz:
        entries = dict(npz)
    meta = json.loads(str(entries["__meta__"]))
    change(entries, meta)
    entries["__meta__"] = np.array(json.dumps(meta))
    np.savez(out, **entries)
    return out


def test_parameters_that_do_not_match_the_stored_configuration_are_rejected(tmp_path):
    path = io.save(MoE(5, 3, n_experts=4, seed=0), tmp_path / "m.npz")
    renamed = rewrite(path, tmp_path / "renamed.npz", lambda e, m: e.update({"experts.bias": e.pop("experts.b")}))
    with pytest.raises(ValueError, match=r"missing from the file \['experts.b'\], parameters the model does not "
                                         r"have \['experts.bias'\]"):
        io.load(renamed)
    transposed = rewrite(path, tmp_path / "t.npz", lambda e, m: e.update({"gate.W": e["gate.W"].T.copy()}))
    with pytest.raises(ValueError, match=r"'gate.W' is float64\[4, 5\] in the file; the model expects float64\[5, 4\]"):
        io.load(transposed)
    smaller = rewrite(path, tmp_path / "s.npz", lambda e, m: e.update({"gate.W": e["gate.W"][:, :3].copy()}))
    with pytest.raises(ValueError, match=r"configuration of numpy_moe.moe:MoE needs more parameters than the file "
                                         r"holds"):
        io.load(smaller)


def test_truncated_and_corrupt_files_raise_a_clear_error(tmp_path):
    data = (io.save(MoE(5, 3, n_experts=4, hidden=7, seed=0), tmp_path / "m.npz")).read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz is not a valid numpy-moe .npz file: not a zip archive"):
        io.load(tmp_path / "cut.npz")
    flipped = bytearray(data)
    # one byte inside an array's data (past its zip and .npy headers): the zip checksum no longer matches
    flipped[data.index(b"experts.W1.npy") + 14 + 128 + 400] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match=r"flip.npz is not a valid numpy-moe .npz file: entry '.*' (cannot be read|has no readable "
                                         r"array header).*Bad CRC-32"):
        io.load(tmp_path / "flip.npz")
    np.savez(tmp_path / "plain.npz", W=np.zeros(3))
    with pytest.raises(ValueError, match="not a numpy-moe model: it has no __meta__ entry"):
        io.load(tmp_path / "plain.npz")


def test_a_file_with_nan_weights_is_refused(tmp_path):
    model = MoE(5, 3, n_experts=4, hidden=7, seed=0)
    path = io.save(model, tmp_path / "m.npz")

    def poison(entries, meta):
        entries["experts.W2"][1, 2, 0] = np.nan
    rewrite(path, tmp_path / "nan.npz", poison)
    with pytest.raises(ValueError, match=r"parameter 'experts.W2' contains NaN or inf \(1 of its values\)"):
        io.load(tmp_path / "nan.npz")
    target = MoE(5, 3, n_experts=4, hidden=7, seed=1)
    before = {k: p.copy() for k, p in target.named_parameters()}
    with pytest.raises(ValueError, match="experts.W2' contains NaN"):
        io.load_into(target, tmp_path / "nan.npz")
    assert all(np.array_equal(p, before[k]) for k, p in target.named_parameters())


def test_same_parameters_but_another_gate_convention_is_another_architecture(tmp_path):
    io.save(MoE(5, 3, 4, seed=0, top_k=2), tmp_path / "m.npz")
    with pytest.raises(ValueError, match="gate='softmax_then_topk' in the file, 'topk_then_softmax' in the model"):
        io.load_into(MoE(5, 3, 4, top_k=2, gate="topk_then_softmax"), tmp_path / "m.npz")


def test_unknown_classes_and_unsavable_objects(tmp_path):
    with pytest.raises(TypeError, match="cannot save a dict: expected a numpy_moe Module or estimator"):
        io.save({"W": np.zeros(2)}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match=r"cannot save config\['activation'\]=<built-in function abs>"):
        io.save(Activation(abs), tmp_path / "x.npz")
    path = io.save(Linear(2, 2, seed=0), tmp_path / "lin.npz")
    rewrite(path, tmp_path / "unknown.npz", lambda e, m: m["object"].update({"class": "numpy_moe.layers:NoSuch"}))
    with pytest.raises(ValueError, match=r"unknown.npz: object: class 'numpy_moe.layers:NoSuch' is not registered"):
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
    loaded.partial_fit(X, y)  # training continues (with the saved optimiser: tests/test_checkpoint.py)
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


# ----- the registry: every class of the package loads, and allocates through the parameter budget -----
def _transformer_examples():
    from numpy_moe import balance as B
    from numpy_moe.gates import ScoreGate
    from numpy_moe.models import transformer as tr
    return [
        lambda: tr.Embedding(7, 4, seed=0), lambda: tr.PositionEmbedding(5, 4, seed=0),
        lambda: tr.CausalSelfAttention(4, 2, seed=0), lambda: tr.DenseFeedForward(4, 6, activation="relu", seed=0),
        lambda: tr.MoEFeedForward(MoE(4, 4, 3, hidden=5, top_k=2, seed=0)),
        lambda: tr.TransformerBlock(4, 2, tr.DenseFeedForward(4, 6, seed=1), seed=0),
        lambda: tr.TransformerLM(7, d_model=4, n_heads=2, n_layers=2, max_len=5, hidden=6, seed=0, tied=False,
                                 moe=[MoE(gate=ScoreGate(4, 3, top_k=2, seed=1), experts=None, out_features=4,
                                          hidden=5, balance=[B.SequenceBalance(0.01)], seed=2), None]),
    ]


def _examples():
    from numpy_moe import balance as B
    from numpy_moe.experts import ExpertBank, SharedExpert
    from numpy_moe.gates import BaseGate, ExpertChoiceGate, HashGate, ScoreGate, SinkhornGate, SoftmaxGate, TopKGate
    from numpy_moe.image_layers import GELU, Conv2d, Flatten, LayerNorm, MaxPool2d, Unflatten
    from numpy_moe.layers import Tanh
    from numpy_moe.models import ImageMoEClassifier, SparseMLP
    from numpy_moe.models.sparse_mlp import ChannelMixing, MixerBlock, ReRepresentedTokenMixing, TokenMixing
    from numpy_moe.soft_moe import SoftMoE
    tiny_mlp = dict(image_size=4, in_channels=1, n_classes=3, patch_size=2, channels=4, depth=2, token_hidden=3,
                    channel_hidden=5, n_experts=3, top_k=2, seed=0)
    examples = [
        MODELS["Linear"], MODELS["MLP tanh float32"], MODELS["Sequential"], MODELS["MoE top-1 V-MoE capacity"],
        MODELS["LocalExperts competitive classification"], ReLU, Tanh, Flatten, GELU,
        lambda: SoftmaxGate(4, 3, seed=0), lambda: TopKGate(4, 3, 2, noise="shazeer", seed=0),
        lambda: ExpertChoiceGate(4, 3, 1.5, seed=0), lambda: ExpertBank(3, 4, 2, hidden=5, seed=0),
        lambda: Conv2d(2, 3, 3, padding=1, seed=0), lambda: MaxPool2d(2), lambda: LayerNorm(4),
        lambda: Unflatten((2, 3)), lambda: ImageMoEClassifier(in_channels=1, image_size=4, channels=(2, 3), hidden=4,
                                                            n_classes=3, seed=0),
        lambda: SparseMLP(**tiny_mlp), lambda: TokenMixing(Linear(4, 4, seed=0)),
        lambda: ChannelMixing(Linear(4, 4, seed=0)),
        lambda: ReRepresentedTokenMixing(MLP(2, 3, 2, seed=0), n_tokens=4, channels=4, tokens1=2, channels1=3, seed=0),
        lambda: MixerBlock(TokenMixing(Linear(4, 4, seed=0)), ChannelMixing(Linear(4, 4, seed=1)), channels=4),
        lambda: ScoreGate(8, 8, top_k=2, score="sigmoid", n_groups=4, topk_groups=2, seed=0),
        lambda: SharedExpert(4, 3, 5, gated=True, seed=0), lambda: ExpertBank(4, 5, 3, 6, seed=0, activation="swiglu"),
        lambda: B.BalanceLoss(0.1), lambda: B.Seed000Loss(0.1), lambda: B.Importance(0.1), lambda: B.ShazeerLoad(0.1),
        lambda: B.VMoELoad(0.1), lambda: B.SwitchLoss(0.1), lambda: B.ZLoss(0.1), lambda: B.SequenceBalance(0.1),
        lambda: B.FrameworkBalance(0.1, "gshard"), lambda: B.ProbsZLoss(0.1),
        lambda: __import__("numpy_moe.hme", fromlist=["x"]).HierarchicalMoE(3, 1, tree=[2, 2], seed=0),
        lambda: __import__("numpy_moe.models.mmoe", fromlist=["x"]).MMoE(4, n_experts=3, expert_hidden=5, seed=0),
        lambda: __import__("numpy_moe.models.mmoe", fromlist=["x"]).SharedBottom(4, bottom=6, seed=0),
        lambda: __import__("numpy_moe.conv_moe", fromlist=["x"]).ConvMoE2d(2, 3, 3, n_experts=2, padding=1, seed=0),
        lambda: __import__("numpy_moe.conv_moe", fromlist=["x"]).ConvMoE1d(2, 3, 3, n_experts=2, top_k=1, seed=0),
        lambda: BaseGate(4, 3, seed=0), lambda: SinkhornGate(4, 3, top_k=2, tol=1e-5, max_iter=50, seed=0),
        lambda: HashGate(4, 3, 7, kind="balanced", seed=0).balance([0, 0, 0, 1, 2, 3, 4, 5, 6, 6]),
        lambda: SoftMoE(4, 3, 2, slots=3, group_size=5, hidden=6, seed=0),
        *_transformer_examples(),
    ]
    made = [make() for make in examples]
    return {f"{type(m).__module__}:{type(m).__qualname__}": m for m in made}


def test_every_registered_module_class_round_trips_and_allocates_through_the_budget(tmp_path, rng):
    """A new Module class must be registered (its module listed in io.registry.BUILTIN_MODULES) and create
    its parameters through the budget-checked constructors of numpy_moe.layers."""
    examples = _examples()
    builtin = {name for name, cls in io.registered().items()
               if name.startswith("numpy_moe.") and issubclass(cls, Module)}
    assert builtin == set(examples), f"registered without an example here: {builtin - set(examples)}; " \
                                     f"examples of unregistered classes: {set(examples) - builtin}"
    for name, model in examples.items():
        perturbed(model, rng)
        loaded = io.load(io.save(model, tmp_path / "m.npz"))
        assert type(loaded) is type(model), name
        assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(model.named_parameters(),
                                                                   loaded.named_parameters())), name
        buffers, again = dict(model.named_buffers()), dict(loaded.named_buffers())  # a hash table, a selection bias
        assert buffers.keys() == again.keys() and all(np.array_equal(b, again[k]) for k, b in buffers.items()), name
        if model.n_parameters():  # the same file without its arrays: rebuilding must stop at the first one
            rewrite(tmp_path / "m.npz", tmp_path / "empty.npz",
                    lambda e, m: [e.pop(k) for k in list(e) if k != "__meta__"])
            with pytest.raises(ValueError, match="needs more parameters than the file holds"):
                io.load(tmp_path / "empty.npz")


def test_version_1_files_still_load(tmp_path, rng):
    model = perturbed(MoE(5, 3, 4, hidden=7, seed=0, top_k=2), rng)
    path = io.save(model, tmp_path / "v2.npz")
    with np.load(path) as npz:
        entries = dict(npz)
    meta = json.loads(str(entries["__meta__"]))
    meta["version"] = 1  # what the first format wrote: the same records, without buffers
    entries["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "v1.npz", **entries)
    loaded = io.load(tmp_path / "v1.npz")
    assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()))


class Stateful(Linear):
    """A module with a buffer that end_step counts up: buffers must round-trip and load_into must copy them."""

    def __init__(self, in_features, out_features, seed=None):
        super().__init__(in_features, out_features, seed=seed)
        from numpy_moe.layers import zeros_param
        self.buffers["steps"] = zeros_param((1,), self.dtype)

    def end_step(self):
        self.buffers["steps"] += 1
        super().end_step()


def test_buffers_round_trip_and_a_file_without_them_says_how_to_resave(tmp_path, rng):
    io.register(Stateful)
    model = Stateful(3, 2, seed=0)
    model.end_step()
    model.end_step()
    loaded = io.load(io.save(model, tmp_path / "s.npz"))
    assert loaded.buffers["steps"].tolist() == [2.0]
    target = Stateful(3, 2, seed=1)
    io.load_into(target, tmp_path / "s.npz")
    assert target.buffers["steps"].tolist() == [2.0]
    with np.load(tmp_path / "s.npz") as npz:
        entries = {k: v for k, v in npz.items() if not k.startswith("buffer:")}
    meta = json.loads(str(entries["__meta__"]))
    del meta["object"]["buffers"]
    entries["__meta__"] = np.array(json.dumps(meta))
    np.savez(tmp_path / "old.npz", **entries)
    with pytest.raises(ValueError, match=r"needs more parameters than the file holds.*no buffers.*re-save it"):
        io.load(tmp_path / "old.npz")


@pytest.mark.parametrize("make", [
    lambda: __import__("sklearn.preprocessing", fromlist=["x"]).MinMaxScaler(),
    lambda: __import__("sklearn.preprocessing", fromlist=["x"]).RobustScaler(),
    lambda: __import__("sklearn.preprocessing", fromlist=["x"]).MaxAbsScaler(),
    lambda: __import__("sklearn.preprocessing", fromlist=["x"]).Normalizer(),
    lambda: __import__("sklearn.decomposition", fromlist=["x"]).PCA(3),
])
def test_each_allowed_scikit_learn_transformer_round_trips_in_a_pipeline(make, tmp_path, rng):
    from sklearn.pipeline import make_pipeline
    X = 3 + 2 * rng.standard_normal((60, 4))
    y = (X[:, 0] > 3).astype(int)
    pipe = make_pipeline(make(), MoEClassifier(epochs=3, random_state=0)).fit(X, y)
    loaded = io.load(io.save(pipe, tmp_path / "p.npz"))
    np.testing.assert_array_equal(loaded[0].transform(X), pipe[0].transform(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), pipe.predict_proba(X))


def test_tuples_come_back_as_tuples_and_version_1_lists_still_match(tmp_path):
    model = MLP(3, (4, 5), 2, seed=0)
    path = io.save(model, tmp_path / "mlp.npz")
    assert io.load(path).get_config()["hidden"] == (4, 5)
    v1 = rewrite(path, tmp_path / "v1.npz",
                 lambda e, m: m.update(version=1) or m["object"]["config"].update(hidden=[4, 5]))
    assert io.load(v1).get_config()["hidden"] == [4, 5]
    io.load_into(MLP(3, (4, 5), 2, seed=1), v1)  # the same architecture, whichever way the widths are written


def test_files_naming_the_gates_module_of_version_1_still_load(tmp_path):
    from numpy_moe.gates import TopKGate
    path = io.save(TopKGate(4, 3, 2, seed=0), tmp_path / "g.npz")
    old = rewrite(path, tmp_path / "old.npz",
                  lambda e, m: m.update(version=1) or m["object"].update({"class": "numpy_moe.gating:TopKGate"}))
    assert type(io.load(old)) is TopKGate


@pytest.mark.parametrize("name", ["HMERegressor", "HMEClassifier"])
def test_fitted_hme_estimators_round_trip(name, tmp_path, rng):
    from numpy_moe import estimators
    X = rng.standard_normal((60, 3))
    y = X[:, 0] > 0 if name == "HMEClassifier" else X[:, 0] - X[:, 1]
    est = getattr(estimators, name)(tree=[2, 2], max_iter=10, random_state=0).fit(X, y)
    loaded = io.load(io.save(est, tmp_path / "hme.npz"))
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))


def test_a_fitted_estimator_saved_under_its_version_1_name_still_loads(tmp_path, rng):
    X = rng.standard_normal((40, 3))
    est = MoEClassifier(epochs=2, random_state=0).fit(X, np.arange(40) % 2)
    path = io.save(est, tmp_path / "est.npz")
    old = rewrite(path, tmp_path / "old.npz", lambda e, m: m.update(version=1)
                  or m["object"].update({"class": "numpy_moe.estimators:MoEClassifier"}))
    np.testing.assert_array_equal(io.load(old).predict_proba(X), est.predict_proba(X))


def test_load_into_takes_a_file_that_names_a_moved_class_by_its_old_module(tmp_path, rng):
    # A version-1 file names the top-k gate numpy_moe.gating:TopKGate, at the top and inside the MoE's
    # configuration. load() maps the old name through registry.MOVED; load_into compared the raw names and
    # refused the file as "another class" / "another architecture".
    from numpy_moe.experts import ExpertBank
    from numpy_moe.gates import TopKGate
    gate = perturbed(TopKGate(5, 4, 2, seed=0), rng)
    layer = perturbed(MoE(gate=TopKGate(5, 4, 2, seed=0), experts=ExpertBank(4, 5, 3, 7, seed=1)), rng)
    for model, name in [(gate, "g"), (layer, "m")]:
        old = rewrite(io.save(model, tmp_path / f"{name}.npz"), tmp_path / f"{name}_old.npz",
                      lambda e, meta: meta.update(json.loads(json.dumps(meta).replace(
                          "numpy_moe.gates.softmax:TopKGate", "numpy_moe.gating:TopKGate"))))
        assert "numpy_moe.gating:TopKGate" in str(np.load(old)["__meta__"])
        target = type(model).from_config(model.get_config())
        assert io.load_into(target, old) is target
        assert all(np.array_equal(p, q) for (_, p), (_, q) in zip(model.named_parameters(), target.named_parameters()))


def test_a_file_written_before_the_experts_and_image_layers_became_packages_loads_with_the_same_outputs(tmp_path):
    # Written by the code of commit 31ae36d (tests/fixtures/old_module_paths.py): its records name
    # numpy_moe.experts:ExpertBank, numpy_moe.image_layers:Conv2d, ..., numpy_moe.gates.sinkhorn:SinkhornGate.
    # The classes moved into modules of their packages; load and load_into must still read the file, and
    # the loaded model must give that code's output (rtol 1e-12: the same operations, up to the BLAS's rounding).
    from numpy_moe.experts import ExpertBank, SharedExpert
    from numpy_moe.gates import SinkhornGate
    from numpy_moe.image_layers import GELU, Conv2d, Flatten, LayerNorm, MaxPool2d, Unflatten
    path = Path(__file__).parent / "fixtures" / "old_module_paths.npz"
    with np.load(path) as npz:
        meta = str(npz["__meta__"])
    for old in ("numpy_moe.experts:ExpertBank", "numpy_moe.experts:SharedExpert", "numpy_moe.image_layers:Conv2d",
                "numpy_moe.image_layers:LayerNorm", "numpy_moe.gates.sinkhorn:SinkhornGate"):
        assert f'"{old}"' in meta, old
    with np.load(Path(__file__).parent / "fixtures" / "old_module_paths_io.npz") as npz:
        x, y = npz["x"], npz["y"]
    model = io.load(path)
    layers = [type(m) for m in model.layers]
    assert layers == [Unflatten, Conv2d, MaxPool2d, Flatten, LayerNorm, GELU, MoE]
    moe = model.layers[-1]
    assert (type(moe.gate), type(moe.experts), type(moe.shared)) == (SinkhornGate, ExpertBank, SharedExpert)
    np.testing.assert_allclose(model.eval().forward(x), y, rtol=1e-12, atol=0)
    fresh = type(model).from_config(model.get_config())
    io.load_into(fresh, path)
    np.testing.assert_allclose(fresh.eval().forward(x), y, rtol=1e-12, atol=0)


# ----- sizes no machine can hold: refused before anything is built (layers.params.check_budget) -------------

def _positive_int_paths(config, path=()):
    """The paths to every integer >= 1 in a config (seeds aside), where a size or a count may sit."""
    if isinstance(config, bool):
        return
    if isinstance(config, int) and config >= 1 and path[-1:] != ("seed",):
        yield path
    elif isinstance(config, dict):
        for key, value in config.items():
            yield from _positive_int_paths(value, path + (key,))
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from _positive_int_paths(value, path + (i,))


def test_every_registered_class_refuses_a_huge_size_at_once_by_name():
    """Each integer argument of each registered class set to 10**12, outside any parameter_budget: the
    constructor builds (the argument is no size: a stride, max_iter), refuses it by name (top_k > n_experts),
    or raises ParameterBudgetError before allocating or looping. Before, 83 of the 116 cases raised NumPy's
    MemoryError or 'array is too big', and HierarchicalMoE(tree=[10**12, 2]) and SharedBottom(n_tasks=10**12)
    built for minutes until memory ran out (here a 5 s alarm)."""
    import signal
    import time

    from numpy_moe.layers import ParameterBudgetError

    def alarm(signum, frame):
        raise TimeoutError("still building after 5 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    failures, refused = [], 0
    try:
        for name, model in _examples().items():
            for path in _positive_int_paths(model.get_config()):
                config = model.get_config()
                node = config
                for key in path[:-1]:
                    node = node[key]
                node[path[-1]] = 10 ** 12
                start = time.perf_counter()
                signal.alarm(5)
                try:
                    type(model).from_config(config)
                except ParameterBudgetError as err:
                    refused += 1
                    if "cannot be allocated" not in str(err):
                        failures.append(f"{name} {path}: {err}")
                except (ValueError, TypeError) as err:  # refused by its own check: the message names the value
                    if "1000000000000" not in str(err):
                        failures.append(f"{name} {path}: {type(err).__name__}: {err}")
                except (MemoryError, TimeoutError) as err:
                    failures.append(f"{name} {path}: {type(err).__name__}: {err}")
                finally:
                    signal.alarm(0)
                if time.perf_counter() - start > 1:
                    failures.append(f"{name} {path}: took {time.perf_counter() - start:.1f} s")
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not failures, "\n".join(failures)
    assert refused >= 80  # the sizes; the rest are no sizes or are refused by another rule


def test_a_budget_of_exactly_the_model_builds_it_and_one_byte_less_refuses_before_the_first_tower():
    """MMoE and SharedBottom count every parameter up front (experts, gates, towers): the count is exact."""
    from numpy_moe.layers import ParameterBudgetError, parameter_budget
    from numpy_moe.models.mmoe import MMoE, SharedBottom
    for make in (lambda: MMoE(4, n_tasks=3, n_experts=2, expert_hidden=5, tower_hidden=3, n_outputs=2, seed=0),
                 lambda: MMoE(4, n_tasks=3, n_experts=2, gates="one", seed=0),
                 lambda: SharedBottom(4, n_tasks=3, bottom=6, tower_hidden=2, n_outputs=3, seed=0)):
        n_bytes = make().n_parameters() * 8
        with parameter_budget(n_bytes):
            make()
        with parameter_budget(n_bytes - 1), pytest.raises(ParameterBudgetError, match=r"\(n_tasks=3\)'s"):
            make()
