"""gpt-oss's expert (clamped SwiGLU with biases, ExpertBank(activation="gptoss_swiglu")): the published
formula, float64 gradient checks of the dense and grouped passes away from the clamps' kinks, the clamps'
zero derivative outside their range (MATH.md §10.1), and bad arguments."""
import numpy as np
import pytest
from scipy.special import expit

from numpy_moe.experts import ExpertBank
from numpy_moe.gradcheck import check_module

TOL = 1e-7  # one layer (MATH.md §8), evaluated away from the clamps' kinks (see away_from_kinks)
LIMIT = 1.0  # a small limit so that both clamps are active on a good share of the rows (gpt-oss: 7.0)


def reference(x, p, e, alpha, limit):
    """transformers GptOssExperts._apply_gate / openai gpt_oss/torch/model.py swiglu, written with SciPy."""
    g = np.minimum(x @ p["W_gate"][e] + p["b_gate"][e], limit)
    u = np.clip(x @ p["W_up"][e] + p["b_up"][e], -limit, limit)
    return ((u + 1) * g * expit(alpha * g)) @ p["W_down"][e] + p["b_down"][e]


def bank_and_input(rng, n=8, seed=0):
    bank = ExpertBank(3, 4, 2, hidden=5, seed=seed, activation="gptoss_swiglu", limit=LIMIT)
    for _, p in bank.named_parameters():
        p += 0.5 * rng.standard_normal(p.shape)
    x = 1.5 * rng.standard_normal((n, 4))
    return bank, x


def pre_activations(bank, x):
    p = bank.params
    return x @ p["W_gate"] + p["b_gate"][:, None], x @ p["W_up"] + p["b_up"][:, None]  # (E, N, H) each


def away_from_kinks(bank, x, margin=1e-3):
    """True when no pre-activation is within margin of a clamp's kink (G = limit, U = ±limit), so the
    finite differences (h = 1e-6) never straddle one."""
    G, U = pre_activations(bank, x)
    return (np.abs(G - bank.limit).min() > margin) and (np.abs(np.abs(U) - bank.limit).min() > margin)


def test_defaults_are_gpt_oss():
    bank = ExpertBank(2, 3, 3, hidden=4, seed=0, activation="gptoss_swiglu")
    assert (bank.alpha, bank.limit) == (1.702, 7.0)
    assert set(bank.params) == {"W_gate", "W_up", "W_down", "b_gate", "b_up", "b_down"}, "gpt-oss has biases"


def test_forward_is_the_published_formula_with_both_clamps_active(rng):
    bank, x = bank_and_input(rng)
    G, U = pre_activations(bank, x)
    assert (G > LIMIT).any() and (U > LIMIT).any() and (U < -LIMIT).any(), "the clamps must be exercised"
    out = bank.forward(x)
    for e in range(3):
        np.testing.assert_allclose(out[e], reference(x, bank.params, e, 1.702, LIMIT), rtol=1e-13, atol=1e-14)


def test_dense_gradients(rng):
    bank, x = bank_and_input(rng)
    assert away_from_kinks(bank, x)
    errors = check_module(bank, x, tol=TOL)
    assert set(errors) == {"input"} | set(bank.params) and max(errors.values()) < TOL


class Grouped:
    """ExpertBank's grouped pass as a module for check_module: rows offsets[e]:offsets[e+1] go to expert e."""

    def __init__(self, bank, offsets):
        self.bank, self.offsets, self.aux_loss = bank, offsets, 0.0

    def forward(self, x):
        return self.bank.forward_grouped(x, self.offsets)

    def backward(self, dy):
        return self.bank.backward_grouped(dy)

    def named_parameters(self):
        return self.bank.named_parameters()

    def named_grads(self):
        return self.bank.named_grads()


def test_grouped_gradients_and_agreement_with_dense(rng):
    bank, x = bank_and_input(rng, n=9)
    assert away_from_kinks(bank, x)
    offsets = [0, 4, 4, 9]  # expert 1 has no rows: exactly zero gradient
    errors = check_module(Grouped(bank, offsets), x, tol=TOL)
    assert max(errors.values()) < TOL
    assert all(not np.any(g[1]) for _, g in bank.named_grads())
    dense = bank.forward(x)
    np.testing.assert_allclose(bank.forward_grouped(x, offsets)[4:], dense[2, 4:], rtol=1e-13, atol=1e-14)


def test_clamps_pass_no_gradient_outside_their_range():
    """One expert, D = H = O = 1, identity weights, no bias: G = U = x. dA/dx = glu'(x) (u + 1) + glu(x) du:
    x = 2 > limit 1: both clamps saturate, so dA/dx = 0 exactly; x = -2: the gate is below its limit, the up
    clamp saturates, dA/dx = glu'(-2) (-1 + 1) + 0 = 0 as well; x = 0.5: both linear,
    dA/dx = σ(α/2)(1 + α/2 (1 - σ(α/2))) 1.5 + 0.5 σ(α/2)."""
    bank = ExpertBank(1, 1, 1, hidden=1, seed=0, activation="gptoss_swiglu", limit=1.0, bias=False)
    for k in bank.params:
        bank.params[k][...] = 1.0
    a = 1.702
    s = expit(a * 0.5)
    for x, slope in ((2.0, 0.0), (-2.0, 0.0), (0.5, s * (1 + a * 0.5 * (1 - s)) * 1.5 + 0.5 * s)):
        bank.forward(np.array([[x]]))
        assert bank.backward(np.ones((1, 1, 1)))[0, 0] == pytest.approx(slope, rel=1e-14, abs=0)
    # above the gate's limit the output is constant in G but still linear in U inside its range
    bank.forward(np.array([[1.5]]))
    bank.params["W_up"][...] = 0.5  # U = 0.75 < limit, G = 1.5 > limit
    bank.forward(np.array([[1.5]]))
    bank.backward(np.ones((1, 1, 1)))
    assert bank.grads["W_gate"][0, 0, 0] == 0.0
    assert bank.grads["W_up"][0, 0, 0] == pytest.approx(1.0 * expit(a) * 1.5, rel=1e-14)


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(activation="gptoss_swiglu", alpha=0), ValueError, "alpha=0"),
    (dict(activation="gptoss_swiglu", limit=-1.0), ValueError, "limit=-1.0"),
    (dict(activation="swiglu", limit=7.0), ValueError, "belong to activation='gptoss_swiglu'"),
])
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        ExpertBank(2, 3, 3, hidden=4, seed=0, **kwargs)
