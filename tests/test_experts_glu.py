"""Gated-linear experts (SwiGLU, GeGLU) and the shared expert: closed forms, float64 gradient checks of the
dense and grouped passes (MATH.md §8, §10.1), their agreement, and bad arguments."""
import numpy as np
import pytest
from scipy.special import expit, ndtr

from numpy_moe.experts import ExpertBank, SharedExpert
from numpy_moe.gradcheck import check_module

TOL = 1e-7  # one layer (MATH.md §8); the gated-linear expert is smooth, no kink to avoid


def perturbed(module, rng):
    for _, p in module.named_parameters():
        p += 0.3 * rng.standard_normal(p.shape)
    return module


@pytest.mark.parametrize("activation", ["swiglu", "geglu"])
def test_forward_is_the_published_formula(activation, rng):
    # E(x) = (act(x W_gate) ⊙ (x W_up)) W_down with act = x sigmoid(x) (SiLU) or x Φ(x) (exact GELU),
    # written here with SciPy's expit / ndtr, independently of numpy_moe.functional
    bank = ExpertBank(3, 4, 2, hidden=5, seed=0, activation=activation)
    assert set(bank.params) == {"W_gate", "W_up", "W_down"}, "biases are off by default (Mixtral, Qwen, DeepSeek)"
    x = rng.standard_normal((6, 4))
    out = bank.forward(x)
    p = bank.params
    for e in range(3):
        g = x @ p["W_gate"][e]
        act = g * expit(g) if activation == "swiglu" else g * ndtr(g)
        np.testing.assert_allclose(out[e], (act * (x @ p["W_up"][e])) @ p["W_down"][e], rtol=1e-13)


@pytest.mark.parametrize("activation,bias", [("swiglu", False), ("geglu", False), ("swiglu", True)])
def test_dense_gradients(activation, bias, rng):
    bank = perturbed(ExpertBank(3, 4, 2, hidden=5, seed=0, activation=activation, bias=bias), rng)
    errors = check_module(bank, rng.standard_normal((6, 4)), tol=TOL)
    assert set(errors) == {"input"} | set(bank.params) and max(errors.values()) < TOL


@pytest.mark.parametrize("gated", [False, True])
def test_shared_expert_formula_and_gradients(gated, rng):
    shared = perturbed(SharedExpert(4, 3, 6, gated=gated, seed=0), rng)
    x = rng.standard_normal((5, 4))
    y = shared.forward(x)
    inner = shared.mlp.forward(x)[0]
    # Qwen2-MoE: sigmoid(x w) * E_s(x); DeepSeek-MoE: E_s(x)
    expected = expit(x @ shared.params["w"]) * inner if gated else inner
    np.testing.assert_allclose(y, expected, rtol=1e-13)
    errors = check_module(shared, x, tol=TOL)
    assert max(errors.values()) < TOL and ("w" in errors) == gated


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(activation="swiglu"), ValueError, "activation='swiglu' needs hidden=H"),
    (dict(hidden=4, activation="tanh"), ValueError, "activation='tanh' must be one of"),
    (dict(hidden=4, bias="yes"), ValueError, "bias='yes' must be None, True or False"),
])
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ExpertBank(3, 4, 2, **kwargs)


def test_shared_expert_checks_its_input_and_takes_its_own_dtype():
    # before, float64 input to a float32 SharedExpert came out float64 and NaN or integers went through
    shared = SharedExpert(3, 2, 4, gated=True, seed=0, dtype="float32")
    x = np.linspace(-1, 1, 6).reshape(2, 3)
    assert shared.forward(x).dtype == np.float32
    with pytest.raises(TypeError, match="dtype int64"):
        shared.forward(np.ones((2, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="NaN or inf"):
        shared.forward(np.full((2, 3), np.nan))
    with pytest.raises(ValueError, match="4 features"):
        shared.forward(np.ones((2, 4)))
