"""experiments/_bench_classic.py: post 003's loop as the benchmark redoes it, and the rows it reports.

The benchmark times numpy_moe against a re-implementation of post 003's own training loops, so that
re-implementation must compute what the post computes: its SGD pass is the competitive rule of
numpy_moe.classic (Δv = η f_e (r - y_e) x̃, Δm = η (f - g) x̃, one sample per step), and its FTRL pass is
FTRL-Proximal, so from the same weights, visiting the same rows in the same order, both must end at the
same weights. They agree to 1e-12 (relative), not bit for bit: the post sums in another order and
holds the bias first where numpy_moe holds it last.
"""
import numpy as np
import pytest

from experiments import _bench_classic as bench
from numpy_moe.classic import LocalExperts, train_epoch
from numpy_moe.datasets import make_circles, standardizer
from numpy_moe.optim import FTRL, SGD


def to_post(a, axis):
    """numpy_moe's layout (bias row last) to the post's (bias first), along ``axis``."""
    return np.roll(a, 1, axis=axis)


@pytest.mark.parametrize("opt", ["SGD", "FTRL"])
def test_post_003_loop_is_the_competitive_rule(opt):
    X, _, y, _ = make_circles(80, seed=0)
    X = standardizer(X)(X)
    k, seed = 3, 4
    model = LocalExperts(2, 2, k, mode="competitive", seed=0)
    post = bench.Post003(X, y, X[:5], y[:5], k)
    post.M, post.V = to_post(model.params["M"].T, 1), to_post(model.params["V"], 1)
    order = np.random.default_rng(seed).permutation(len(X))  # train_epoch's shuffle for this seed
    post.x, post.r = post.x[order], post.r[order]
    if opt == "SGD":
        optimizer = SGD(lr=post.lamda)
        post.sgd_epoch()
    else:
        optimizer = FTRL(alpha=post.alfa, beta=post.beta)
        # numpy_moe centres FTRL's first proximal term at the starting weights (optim.FTRL, Notes); the
        # post starts from z = 0, i.e. at w = 0: give it the same start
        post.z_v, post.z_m = -(post.beta / post.alfa) * post.V, -(post.beta / post.alfa) * post.M
        post.ftrl_epoch()
    train_epoch(model, X, y, optimizer, batch_size=1, seed=seed)
    assert not np.allclose(post.V, to_post(LocalExperts(2, 2, k, seed=0).params["V"], 1))  # it trained
    np.testing.assert_allclose(post.V, to_post(model.params["V"], 1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(post.M, to_post(model.params["M"].T, 1), rtol=1e-12, atol=1e-14)


def test_post_003_log_loss_is_in_bits_of_the_blended_prediction():
    X, X_test, y, y_test = make_circles(60, seed=1)
    post = bench.Post003(X, y, X_test, y_test, 2)
    x1, r = post.x_test, post.r_test
    g = np.exp(x1 @ post.M.T)
    g /= g.sum(axis=1, keepdims=True)
    blend = np.einsum("ne,edc,nd->nc", g, post.V, x1)  # the post's deci: softmax of the blended logits
    p = np.exp(blend) / np.exp(blend).sum(axis=1, keepdims=True)
    assert post.logloss() == pytest.approx(-np.log2((p * r).sum(axis=1)).mean(), rel=1e-12)


def test_measure_reports_every_row_with_its_verdict():
    class Counter:
        count = 0

        def step(self, detail):
            assert detail.startswith("classic local experts, batch 1")
            Counter.count += 1

    rows = bench.measure(rounds=2, quick=True, progress=Counter())
    assert Counter.count == bench.steps(rounds=2, quick=True) == len(rows) == 2
    for row in rows:
        assert set(row) == {"name", "ours_ms", "ref_ms", "ratio_median", "ratio_min", "ratio_max", "target", "pass"}
        assert row["ours_ms"] > 0 and row["ref_ms"] > 0 and row["target"] == 1.0
        assert row["ratio_min"] <= row["ratio_median"] <= row["ratio_max"]
        assert row["pass"] == (row["ratio_median"] <= row["target"])
    assert "PASS" in bench.format_rows(rows) or "MISS" in bench.format_rows(rows)
