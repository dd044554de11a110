"""Known-bug gallery (issue 13, docs/FRAMEWORKS.md): each bug introduced into a copy of the reference
computation, and the conformance fixture catching it.

Each test transcribes the framework's computation in plain NumPy from the fixture's own arrays (weights
in the framework's names, router logits, mask), checks that the faithful copy passes
``numpy_moe.conformance.compare`` and that the copy with the bug fails it. The CV² case has no fixture
array to fail (the bug only shows at perfect balance): it is checked against the hand-derived gradient
there, zero. Measured time: under 2 s.
"""
import math

import numpy as np
import pytest

from numpy_moe import conformance
from numpy_moe import functional as F


@pytest.fixture(scope="module")
def fixtures():
    return {p: conformance.make_fixture(p)[0] for p in ("mixtral", "megablocks", "switch")}


def passes(fixture, **results):
    rows = conformance.compare(fixture, results)
    assert rows, "nothing compared"
    return all(ok for _, _, _, ok in rows)


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fp_loss(logits, mask, K, weight, scale, bug=None):
    """w scale sum_e (count_e / n) P_e over the counted tokens (transformers load_balancing_loss_func with
    scale = E; MegaBlocks / Megatron with scale = E / K)."""
    p = softmax(logits)
    if bug == "double softmax":  # the router returned probabilities and the loss applied softmax again
        p = softmax(p)
    idx = np.argsort(-p, axis=1, kind="stable")[:, :K]
    keep = np.ones(len(logits), bool) if bug == "padding counted" else mask
    if bug == "top-k before softmax":  # P from the renormalised top-k weights, not the full softmax
        top = np.take_along_axis(logits, idx, 1)
        p = np.zeros_like(p)
        np.put_along_axis(p, idx, softmax(top), 1)
    n, E = keep.sum(), logits.shape[1]
    counts = np.bincount(idx[keep].reshape(-1), minlength=E)
    return weight * scale * float((counts / n * p[keep].mean(axis=0)).sum())


@pytest.mark.parametrize("bug", ["double softmax", "padding counted", "top-k before softmax"])
def test_balance_loss_bugs_are_caught(fixtures, bug):
    """transformers #45120 (double softmax), #28505 (padding), maxtext #1432 (top-k before softmax)."""
    fx = fixtures["mixtral"]
    logits, mask = fx["router_logits"], fx["mask"].reshape(-1)
    right = fp_loss(logits, mask, 2, 0.02, 4)
    assert passes(fx, **{"aux/framework_balance": right})
    assert not passes(fx, **{"aux/framework_balance": fp_loss(logits, mask, 2, 0.02, 4, bug)})


def test_double_softmax_passes_the_random_init_check_transformers_uses(rng):
    """Why the bug survived: at near-uniform logits (a random init) both versions give about K = 2, the
    value transformers' test asserts (atol 1e-2); the fixture's sharp routing separates them."""
    logits = 0.01 * rng.standard_normal((400, 8))
    mask = np.ones(400, bool)
    for bug in (None, "double softmax"):
        assert fp_loss(logits, mask, 2, 1.0, 8, bug) == pytest.approx(2, abs=1e-1)


def test_layers_concatenated_where_averaged_was_meant_is_caught(fixtures):
    """MegaBlocks averages the per-layer losses; concatenating the layers (transformers' convention,
    transformers #28255) is a different loss."""
    fx = fixtures["megablocks"]
    mask = fx["mask"].reshape(-1)
    layers = [fx["router_logits"], fx["layer2/router_logits"]]
    mean = sum(fp_loss(z, mask, 2, 0.1, 2) for z in layers) / 2
    concat = fp_loss(np.concatenate(layers), np.concatenate([mask, mask]), 2, 0.1, 2)
    assert passes(fx, **{"aux/two_layers": mean})
    assert not passes(fx, **{"aux/two_layers": concat})


def switch_forward(fx, bug=None):
    """transformers SwitchTransformersSparseMLP: softmax, argmax, capacity by token order, output
    p_max * expert(x), zero for a dropped token; x (N, D) -> (N, D)."""
    x = fx["input"].reshape(-1, fx["input"].shape[-1])
    W = fx["weights/router.classifier.weight"]  # (E, D)
    E, N = W.shape[0], x.shape[0]
    p = softmax(x @ W.T)
    e = p.argmax(axis=1)
    one_hot = np.eye(E)[e]  # (N, E)
    if bug == "cumsum over a singleton axis":  # (N, 1, E) summed over the 1 (transformers #48293)
        priority = np.cumsum(one_hot[:, None, :], axis=1)[:, 0, :]
    else:
        priority = np.cumsum(one_hot, axis=0)
    kept = (priority * one_hot).sum(axis=1) <= math.ceil(N * 0.75 / E)  # capacity_factor 0.75
    weight = p.max(axis=1)
    if bug == "top-1 renormalised":  # w / sum of the kept weights = 1 (minimind #858)
        weight = weight / weight
    y = np.zeros_like(x)
    for n in np.flatnonzero(kept):
        h = np.maximum(fx[f"weights/experts.expert_{e[n]}.wi.weight"] @ x[n], 0)
        y[n] = weight[n] * (fx[f"weights/experts.expert_{e[n]}.wo.weight"] @ h)
    return y


def test_capacity_cumsum_over_the_wrong_axis_is_caught(fixtures):
    fx = fixtures["switch"]
    assert fx["routing/dropped"].any()  # the fixture has tokens over capacity
    assert passes(fx, output=switch_forward(fx).reshape(fx["output"].shape))
    assert not passes(fx, output=switch_forward(fx, "cumsum over a singleton axis").reshape(fx["output"].shape))


def test_top1_renormalised_starves_the_router_and_is_caught(fixtures):
    """The router gradient of sum(output * R), by central differences of the copy (h = 1e-6)."""
    fx = dict(fixtures["switch"])
    W = fx["weights/router.classifier.weight"] = fx["weights/router.classifier.weight"].copy()
    R = fx["projection"].reshape(-1, W.shape[1])

    def router_grad(bug):
        g = np.zeros_like(W)
        for i in np.ndindex(W.shape):
            old = W[i]
            W[i] = old + 1e-6
            up = (switch_forward(fx, bug) * R).sum()
            W[i] = old - 1e-6
            g[i] = (up - (switch_forward(fx, bug) * R).sum()) / 2e-6
            W[i] = old
        return g

    assert passes(fx, **{"grad/router.classifier.weight": router_grad(None)})
    starved = router_grad("top-1 renormalised")
    assert np.abs(starved).max() < 1e-8  # no gradient reaches the router
    assert not passes(fx, **{"grad/router.classifier.weight": starved})


def test_z_loss_on_probabilities_is_caught(fixtures):
    """transformers #48293: the router's logits were overwritten by probabilities before the z-loss."""
    fx = fixtures["switch"]
    keep = fx["mask"].reshape(-1)
    logits = fx["router_logits"][keep]
    lse = np.log(np.exp(logits).sum(axis=1))
    lse_p = np.log(np.exp(softmax(logits)).sum(axis=1))
    assert passes(fx, **{"aux/z_loss": 0.001 * np.mean(lse ** 2)})
    assert not passes(fx, **{"aux/z_loss": 0.001 * np.mean(lse_p ** 2)})


def test_cv_squared_through_std_has_a_nan_gradient_at_perfect_balance():
    """vmoe #218: CV² = (std / mean)² differentiated through std gives 0 / 0 at a perfectly balanced
    importance; the hand-derived gradient there is 0 (the minimum), which numpy_moe returns."""
    imp = np.full(4, 2.5)
    assert np.array_equal(F.cv_squared_backward(1.0, imp), np.zeros(4))
    mean = imp.mean()
    std = imp.std()
    with np.errstate(invalid="ignore", divide="ignore"):
        dstd = (imp - mean) / (imp.size * std)  # d std / d imp, as autograd of sqrt(var) computes it
        through_std = 2 * std / mean ** 2 * dstd - 2 * std ** 2 / mean ** 3 / imp.size
    assert np.isnan(through_std).all()
