"""The dense softmax-gated MoE of posts 001/002 and its gate: forward formula, gradients, bad input."""
import numpy as np
import pytest

from numpy_moe.gating import SoftmaxGate
from numpy_moe.gradcheck import check_module
from numpy_moe.moe import MoE

TOL_LAYER = 1e-7  # the issue asks the whole dense MoE below 1e-7, as tight as a single layer


def test_gate_gradients_and_rows_sum_to_one(rng):
    gate = SoftmaxGate(4, 3, seed=0)
    x = rng.standard_normal((6, 4))
    np.testing.assert_allclose(gate.forward(x).sum(axis=1), 1.0, rtol=1e-14)
    assert max(check_module(gate, x, tol=TOL_LAYER).values()) < TOL_LAYER


def randomize(model, rng):
    """Nonzero biases, as after training, keep ReLU pre-activations away from the kink at 0."""
    for _, p in model.named_parameters():
        p += 0.3 * rng.standard_normal(p.shape)
    return model


@pytest.mark.parametrize("hidden", [None, 7])
def test_dense_moe_gradients_wrt_input_gate_and_every_expert_parameter(hidden, rng):
    moe = randomize(MoE(5, 3, n_experts=4, hidden=hidden, seed=0), rng)
    x = rng.standard_normal((8, 5))
    errors = check_module(moe, x, tol=TOL_LAYER)
    expected = {"input", "gate.W", "gate.b"} | {f"experts.{k}" for k in moe.experts.params}
    assert set(errors) == expected and max(errors.values()) < TOL_LAYER


def test_forward_is_the_gate_weighted_sum_of_experts(rng):
    moe = randomize(MoE(5, 3, n_experts=4, hidden=6, seed=0), rng)
    x = rng.standard_normal((8, 5))
    y = moe.forward(x)
    g = moe.gate.forward(x)
    p = moe.experts.params
    blend = sum(g[:, [e]] * (np.maximum(x @ p["W1"][e] + p["b1"][e], 0) @ p["W2"][e] + p["b2"][e])
                for e in range(4))
    np.testing.assert_allclose(y, blend, rtol=1e-12, atol=1e-14)


def test_same_seed_gives_bit_identical_models_and_outputs(rng):
    x = rng.standard_normal((4, 5))
    a, b = MoE(5, 3, 4, hidden=6, seed=11), MoE(5, 3, 4, hidden=6, seed=11)
    assert np.array_equal(a.forward(x), b.forward(x))
    assert not np.array_equal(a.forward(x), MoE(5, 3, 4, hidden=6, seed=12).forward(x))


@pytest.mark.parametrize("bad,error,pattern", [
    (np.zeros((3, 5, 1)), ValueError, "x has ndim=3"),
    (np.zeros((3, 4)), ValueError, "x has 4 features .* expected 5"),
    (np.full((3, 5), np.nan), ValueError, "x contains NaN or inf"),
    (np.zeros((3, 5), dtype=np.int32), TypeError, "x has dtype int32; expected a floating dtype"),
])
def test_bad_input(bad, error, pattern):
    with pytest.raises(error, match=pattern):
        MoE(5, 3, 4).forward(bad)


def test_bad_n_experts():
    with pytest.raises(ValueError, match="n_experts=0 must be an integer >= 1"):
        MoE(5, 3, 0)
    with pytest.raises(TypeError, match="n_experts=2.5 must be an integer"):
        MoE(5, 3, 2.5)


def _empty_batch_layers():
    from numpy_moe import BaseGate, ExpertBank, SinkhornGate, SoftMoE
    D, O, E = 8, 4, 4
    return {
        "dense": lambda: MoE(D, O, E, hidden=6, seed=0),
        "top-2 sparse": lambda: MoE(D, O, E, hidden=6, seed=0, top_k=2, dispatch="sparse"),
        "top-2 padded": lambda: MoE(D, O, E, hidden=6, seed=0, top_k=2, dispatch="padded"),
        "top-2 by dense dispatch": lambda: MoE(D, O, E, hidden=6, seed=0, top_k=2, dispatch="dense"),
        "importance + load": lambda: MoE(D, O, E, hidden=6, seed=0, top_k=2, noise="vmoe",
                                         balance={"importance": 0.01, "load": 0.01}),
        "switch loss": lambda: MoE(D, O, E, hidden=6, seed=0, top_k=1, balance={"switch": 0.01}),
        "expert choice": lambda: MoE(D, O, E, hidden=6, seed=0, router="expert_choice", capacity_factor=1.0),
        "BASE": lambda: MoE(D, O, gate=BaseGate(D, E, seed=0), hidden=6, seed=0),
        "Sinkhorn": lambda: MoE(D, O, gate=SinkhornGate(D, E, seed=0), hidden=6, seed=0),
        "SwiGLU experts": lambda: MoE(D, O, E, seed=0, top_k=2, experts=ExpertBank(E, D, O, 6, seed=1,
                                                                                   activation="swiglu")),
        "Soft MoE": lambda: SoftMoE(D, O, E, hidden=6, seed=0),
    }


@pytest.mark.parametrize("name", list(_empty_batch_layers()))
def test_a_routing_layer_refuses_an_empty_batch_by_name(name):
    # before: an obscure reshape or reduction error, a ZeroDivisionError, or (importance + load) a NaN
    # auxiliary loss returned without a word
    layer = _empty_batch_layers()[name]()
    with pytest.raises(ValueError, match=r"x has 0 rows \(shape \(0, 8\)\); expected at least 1"):
        layer.forward(np.zeros((0, 8)))
    y = layer.forward(np.ones((1, 8)))  # one sample is enough
    assert y.shape == (1, 4) and np.isfinite(y).all()
