"""Shared fixtures: a seeded Generator per test, so no test depends on global random state, and the gradient
check of a layer whose discrete routing must stay fixed."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def check_fixed_choice():
    """check_fixed_choice(layer, x, **forward_kwargs): the float64 gradient check of an MoE layer (§8 protocol,
    h = 1e-6, pass mark 1e-6 for a layer with its experts) with its discrete routing asserted unchanged at
    every perturbed input, so the check never straddles a change of expert; returns the errors."""
    from numpy_moe.gradcheck import check_module

    def check(layer, x, **forward_kwargs):
        layer.forward(x, **forward_kwargs)
        expert = layer.routing.expert.copy()

        def forward(z):
            y = layer.forward(z, **forward_kwargs)
            assert np.array_equal(layer.routing.expert, expert), "a finite-difference step changed the routing"
            return y

        return check_module(layer, x, forward=forward, tol=1e-6)
    return check


@pytest.fixture(autouse=True)
def sparse_dispatch_by_default(request, monkeypatch):
    """MoE's default dispatch="auto" runs tiny batches by dense dispatch, where it is faster; the tests use
    tiny batches to check sparse dispatch, so here "auto" always picks sparse dispatch (a fixed cost of 0).
    Tests of the choice itself (marked ``auto_dispatch``) see the real rule; dense dispatch has its own
    tests with ``dispatch="dense"``."""
    if request.node.get_closest_marker("auto_dispatch") is None:
        import numpy_moe.dispatch
        monkeypatch.setattr(numpy_moe.dispatch, "SPARSE_FIXED_US", 0.0)
        monkeypatch.setattr(numpy_moe.dispatch, "SPARSE_PER_EXPERT_US", 0.0)
