"""Multi-task mixtures (numpy_moe/models/mmoe.py): MMoE, OMoE and shared-bottom, gradient-checked.

Composed models (gates, experts, towers): central differences at h = 1e-6 in float64 below 1e-6
(MATH.md §8). Inputs are standard normal and the weights random, so no ReLU pre-activation is within
1e-5 of its kink for these seeds (the check would fail loudly otherwise).
"""
import numpy as np
import pytest

from numpy_moe import functional as F
from numpy_moe.gradcheck import check_module
from numpy_moe.models.mmoe import MMoE, SharedBottom
from numpy_moe.optim import Adam
from numpy_moe.train import fit

TOL = 1e-6


@pytest.mark.parametrize("model", [
    lambda: MMoE(5, n_tasks=3, n_experts=4, expert_hidden=6, tower_hidden=4, n_outputs=2, seed=0),
    lambda: MMoE(5, n_tasks=2, n_experts=3, expert_hidden=6, tower_hidden=4, gates="one", seed=1),
    lambda: SharedBottom(5, n_tasks=2, bottom=7, tower_hidden=4, n_outputs=2, seed=2),
], ids=["MMoE", "OMoE", "shared-bottom"])
def test_gradcheck(model, rng):
    model = model()
    if "Wg" in model.params:  # gates start uniform; random weights make every softmax term matter
        model.params["Wg"][...] = rng.standard_normal(model.params["Wg"].shape)
    errors = check_module(model, rng.standard_normal((6, 5)), tol=TOL)
    assert max(errors.values()) < TOL


def test_forward_is_the_formula_of_the_paper(rng):
    m = MMoE(4, n_tasks=2, n_experts=3, expert_hidden=5, tower_hidden=3, seed=0)
    x = rng.standard_normal((7, 4))
    y = m.forward(x)
    for t in range(2):
        g = F.softmax(x @ m.params["Wg"][t])  # (N, E)
        experts = [np.maximum(x @ m.params["W"][k] + m.params["b"][k], 0) for k in range(3)]
        f = sum(g[:, [k]] * experts[k] for k in range(3))
        np.testing.assert_allclose(y[:, [t]], m.towers[t].forward(f), rtol=1e-12)


def test_one_gate_gives_every_task_the_same_mixture(rng):
    m = MMoE(4, n_tasks=3, n_experts=3, gates="one", seed=0)
    assert m.params["Wg"].shape == (1, 4, 3)
    m.params["Wg"][...] = rng.standard_normal((1, 4, 3))  # not the uniform gate it starts as
    x = rng.standard_normal((5, 4))
    y = m.forward(x)
    assert m.gate(x).shape == (1, 5, 3)
    g = F.softmax(x @ m.params["Wg"][0])  # (N, E), the one gate
    f = sum(g[:, [k]] * np.maximum(x @ m.params["W"][k] + m.params["b"][k], 0) for k in range(3))
    for t in range(3):  # every tower reads the same mixture f
        np.testing.assert_allclose(y[:, [t]], m.towers[t].forward(f), rtol=1e-12)


def test_mmoe_learns_two_unrelated_tasks(rng):
    x = rng.standard_normal((400, 4))
    y = np.column_stack([np.sin(2 * x[:, 0]), x[:, 1] * x[:, 2]])
    m = MMoE(4, n_tasks=2, n_experts=4, expert_hidden=16, tower_hidden=8, seed=0)
    history = fit(m, x, y, loss="mse", optimizer=Adam(0.01), epochs=60, batch_size=32, seed=0)
    assert history.loss[-1] < 0.1 * history.loss[0]


@pytest.mark.parametrize("kwargs,match", [({"gates": "two"}, "gates='two'"), ({"n_tasks": 0}, "n_tasks=0"),
                                          ({"n_experts": 0}, "n_experts=0")])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MMoE(4, **kwargs)
