"""SinkhornGate and sinkhorn (S-BASE, Clark et al. 2022; Megatron-core; MATH.md §10.11): marginals within the
stated bound, Megatron's loop written out, independence of token order, balancing a skewed router, gradients
with the choice held fixed, the iteration cap's warning fallback, bad arguments."""
import importlib
import types
import warnings

import numpy as np
import pytest
from scipy.special import expit

from numpy_moe.experts import ExpertBank
from numpy_moe.gates import SinkhornGate, sinkhorn
from numpy_moe.moe import MoE


def test_sinkhorn_reaches_its_marginals_within_the_stated_tolerance(rng):
    for N, E, tol in [(64, 4, 1e-4), (50, 8, 1e-4), (30, 3, 1e-6)]:
        logits = 2 * rng.standard_normal((N, E)) + rng.standard_normal(E)
        res = sinkhorn(logits, tol=tol, max_iter=20000)
        assert res.converged and res.iterations >= 1
        np.testing.assert_allclose(res.plan.sum(axis=0) * E, 1, rtol=1e-6)
        bound = E * tol / (res.col_scale.min() - E * tol)
        assert np.abs(res.plan.sum(axis=1) * N - 1).max() <= bound


def test_sinkhorn_plan_is_megatrons_and_independent_of_token_order_and_of_a_shift(rng):
    logits = rng.standard_normal((40, 5))
    plan = sinkhorn(logits).plan
    # Megatron-core's loop on exp(logits) itself (no shift), written out here
    c = np.exp(logits)
    d0, d1, err = np.ones(40), np.ones(5), 1e9
    while err > 1e-4:
        d0 = (1 / 40) / (c @ d1 + 1e-8)
        d1_new = (1 / 5) / (d0 @ c + 1e-8)
        err, d1 = np.abs(d1_new - d1).mean(), d1_new
    np.testing.assert_allclose(plan, d0[:, None] * c * d1, rtol=1e-6)
    np.testing.assert_array_equal(sinkhorn(logits).plan, plan)  # deterministic
    big = sinkhorn(logits + 1000)  # exp(1000) overflows: the shift keeps it finite and balanced
    assert np.isfinite(big.plan).all() and big.converged
    np.testing.assert_allclose(big.plan, plan, rtol=1e-3)
    perm = rng.permutation(40)
    np.testing.assert_allclose(sinkhorn(logits[perm]).plan, plan[perm], rtol=1e-10)
    gate = SinkhornGate(5, 5, top_k=2, seed=0)
    x = rng.standard_normal((40, 5))
    e = gate.forward(x).expert.reshape(40, 2)
    assert np.array_equal(gate.forward(x[perm]).expert.reshape(40, 2), e[perm])


def test_sinkhorn_balances_a_skewed_router_and_weights_with_the_unbalanced_scores(rng):
    gate = SinkhornGate(5, 4, top_k=1, seed=0)
    gate.params["W"][0] = [4.0, 0.0, 0.0, 0.0]  # feature 0 pushes every sample towards expert 0
    x = rng.standard_normal((200, 5)) + np.array([1.0, 0, 0, 0, 0])
    r = gate.forward(x)
    balanced = np.bincount(r.expert, minlength=4)
    greedy = np.bincount(np.argmax(r.logits, axis=1), minlength=4)
    assert balanced.max() / 50 < 0.8 * greedy.max() / 50
    np.testing.assert_allclose(r.weight, expit(r.logits[np.arange(200), r.expert]), rtol=1e-15)
    gate.eval()
    assert np.array_equal(gate.forward(x).expert, np.argmax(r.logits, axis=1))


@pytest.mark.parametrize("top_k", [1, 2])
def test_sinkhorn_layer_gradients(top_k, rng, check_fixed_choice):
    layer = MoE(gate=SinkhornGate(5, 4, top_k=top_k, seed=0), experts=ExpertBank(4, 5, 3, 7, seed=1))
    check_fixed_choice(layer, rng.standard_normal((12, 5)))


def test_sinkhorn_non_convergence_warns_and_routes_on_the_last_iterate(rng):
    logits = 3 * rng.standard_normal((20, 4))
    with pytest.warns(RuntimeWarning, match="did not converge in max_iter=2"):
        res = sinkhorn(logits, tol=1e-12, max_iter=2)
    assert not res.converged and res.iterations == 2
    gate = SinkhornGate(4, 4, tol=1e-12, max_iter=2, seed=0)
    with pytest.warns(RuntimeWarning):
        r = gate.forward(rng.standard_normal((20, 4)))
    assert gate.sinkhorn_converged is False and r.expert.shape == (20,)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gate.eval()
        gate.forward(rng.standard_normal((20, 4)))  # evaluation runs no Sinkhorn: nothing to warn about


def test_sinkhorn_bad_arguments():
    for kwargs, match in [({"tol": 0}, "tol=0"), ({"max_iter": 0}, "max_iter"), ({"top_k": 5}, "top_k=5")]:
        with pytest.raises(ValueError, match=match):
            SinkhornGate(4, 4, **kwargs)


def test_the_module_has_a_name_of_its_own_and_numpy_moe_gates_sinkhorn_stays_the_function():
    # The module was numpy_moe/gates/sinkhorn.py and gates/__init__ re-exported the function sinkhorn from it,
    # so the attribute numpy_moe.gates.sinkhorn (and import numpy_moe.gates.sinkhorn as m) was the function
    # and the module had no name that reached it.
    import numpy_moe.gates
    from numpy_moe import io
    module = importlib.import_module("numpy_moe.gates.sinkhorn_gate")
    assert isinstance(module, types.ModuleType)
    assert module.SinkhornGate is SinkhornGate and module.sinkhorn is sinkhorn
    assert numpy_moe.gates.sinkhorn is sinkhorn and isinstance(sinkhorn, types.FunctionType)
    assert SinkhornGate.__module__ == "numpy_moe.gates.sinkhorn_gate"
    from numpy_moe.gates.sinkhorn import SinkhornGate as old_path  # code written against the old module name
    assert old_path is SinkhornGate
    # files name the class by its module: the old name loads as this class (tests/test_io.py loads such a file)
    assert io.registry.lookup("numpy_moe.gates.sinkhorn:SinkhornGate") is SinkhornGate
    assert io.registry.lookup("numpy_moe.gates.sinkhorn_gate:SinkhornGate") is SinkhornGate
