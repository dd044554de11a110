"""io round trips of today's MoE blocks: every new configuration (ScoreGate, gated-linear experts, shared
experts, balance-loss objects) saves and loads bit-exactly, the selection bias (a buffer) included."""
import numpy as np
import pytest

from numpy_moe import balance as B
from numpy_moe import io
from numpy_moe.experts import ExpertBank, SharedExpert
from numpy_moe.gates import ScoreGate, TopKGate
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam
from numpy_moe.train import fit

D, O = 5, 3

CONFIGS = {
    "mixtral": lambda: MoE(gate=ScoreGate(D, 8, top_k=2, score="softmax", normalize=True, jitter=0.01, seed=0),
                           experts=ExpertBank(8, D, O, 4, seed=1, activation="swiglu"),
                           balance=[B.SequenceBalance(0.02, per_sequence=False)]),
    "deepseek_v3": lambda: MoE(gate=ScoreGate(D, 8, top_k=4, scale=2.5, n_groups=4, topk_groups=2,
                                              bias_update=0.01, bias_centered=True, seed=0),
                               experts=ExpertBank(8, D, O, 4, seed=1, activation="swiglu"),
                               shared=SharedExpert(D, O, 8, seed=2), balance=[B.SequenceBalance(1e-3)]),
    "qwen2 float32": lambda: MoE(gate=ScoreGate(D, 8, top_k=2, score="softmax", normalize=False, seed=0,
                                                dtype="float32"),
                                 experts=ExpertBank(8, D, O, 4, seed=1, activation="geglu", bias=True,
                                                    dtype="float32"),
                                 shared=SharedExpert(D, O, 8, gated=True, seed=2, dtype="float32"),
                                 balance=[B.SwitchLoss(0.01), B.ZLoss(1e-3)], dtype="float32"),
    "top-k gate object + capacity": lambda: MoE(gate=TopKGate(D, 4, top_k=2, noise="vmoe", seed=0),
                                                experts=ExpertBank(4, D, O, 6, seed=1), capacity_factor=1.25,
                                                balance=[B.Importance(0.01, source="softmax")]),
    "keywords + swiglu experts": lambda: MoE(D, O, 4, top_k=2, seed=0, balance={"switch": 0.01},
                                             experts=ExpertBank(4, D, O, 4, seed=1, activation="swiglu")),
}


def trained(make, rng):
    """A model after a few training steps: parameters off their init, the selection bias moved."""
    model = make()
    X = rng.standard_normal((48, D)).astype(model.dtype)
    fit(model, X, rng.integers(0, O, 48), optimizer=Adam(0.01), epochs=2, batch_size=16, seed=0)
    return model.eval()


@pytest.mark.parametrize("name", CONFIGS)
def test_parameters_and_configuration_round_trip_bit_exactly(name, tmp_path, rng):
    model = trained(CONFIGS[name], rng)
    loaded = io.load(io.save(model, tmp_path / "model.npz"))
    assert type(loaded) is MoE and loaded.get_config().keys() == model.get_config().keys()
    assert [type(loss) for loss in loaded.losses] == [type(loss) for loss in model.losses]
    assert [loss.get_config() for loss in loaded.losses] == [loss.get_config() for loss in model.losses]
    saved, again = dict(model.named_parameters()), dict(loaded.named_parameters())
    assert saved.keys() == again.keys()
    for key, p in saved.items():
        assert again[key].dtype == p.dtype and np.array_equal(again[key], p), key


@pytest.mark.parametrize("name", CONFIGS)
def test_buffers_and_outputs_round_trip_bit_exactly(name, tmp_path, rng):
    model = trained(CONFIGS[name], rng)
    buffers = dict(model.named_buffers())
    if name == "deepseek_v3":
        assert np.abs(buffers["gate.bias"]).max() > 0, "training must have moved the selection bias"
    loaded = io.load(io.save(model, tmp_path / "model.npz")).eval()
    again = dict(loaded.named_buffers())
    assert again.keys() == buffers.keys()
    for key, b in buffers.items():
        assert again[key].dtype == b.dtype and np.array_equal(again[key], b), key
    x = rng.standard_normal((7, D)).astype(model.dtype)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
