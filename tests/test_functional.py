"""Every forward/backward pair in functional.py against central differences (float64, h=1e-6).

Single functions pass below 1e-7 (MATH.md §8): the truncation error of central differences is
O(h²) ~ 1e-12 and the rounding error ~ eps/h ~ 1e-10, so 1e-7 leaves three orders of margin while a
wrong derivative (a missing factor, a sign) gives errors of order 1.
"""
import numpy as np
import pytest
import scipy.special

from numpy_moe import functional as F
from numpy_moe.gradcheck import numerical_gradient, rel_error

TOL = 1e-7


def check_pair(forward, backward_from, x, rng):
    """L = sum(R * forward(x)); compare backward's dx with central differences."""
    R = rng.standard_normal(np.shape(forward(x)))
    analytic = backward_from(R, x)
    numeric = numerical_gradient(lambda v: float((R * forward(v)).sum()), x)
    return rel_error(analytic, numeric)


ELEMENTWISE = [
    ("softmax", F.softmax, lambda dy, x: F.softmax_backward(dy, F.softmax(x))),
    ("log_softmax", F.log_softmax, lambda dy, x: F.log_softmax_backward(dy, F.log_softmax(x))),
    ("logsumexp", F.logsumexp, lambda dy, x: F.logsumexp_backward(dy, x)),
    ("tanh", F.tanh, lambda dy, x: F.tanh_backward(dy, F.tanh(x))),
    ("sigmoid", F.sigmoid, lambda dy, x: F.sigmoid_backward(dy, F.sigmoid(x))),
    ("softplus", F.softplus, F.softplus_backward),
    ("normal_cdf", F.normal_cdf, F.normal_cdf_backward),
]


@pytest.mark.parametrize("name,forward,backward", ELEMENTWISE, ids=[e[0] for e in ELEMENTWISE])
def test_gradient(name, forward, backward, rng):
    x = rng.standard_normal((4, 5)) * 2
    assert check_pair(forward, backward, x, rng) < TOL


def test_relu_gradient_away_from_the_kink(rng):
    x = rng.standard_normal((4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep every input farther than 1000 h from the kink at 0
    assert check_pair(F.relu, F.relu_backward, x, rng) < TOL


def test_cv_squared_gradient_and_value(rng):
    v = rng.uniform(0.5, 2.0, 6)
    assert F.cv_squared(v) == pytest.approx(np.var(v) / np.mean(v) ** 2, rel=1e-8)
    numeric = numerical_gradient(lambda u: 3.0 * F.cv_squared(u), v)
    assert rel_error(F.cv_squared_backward(3.0, v), numeric) < TOL


@pytest.mark.parametrize("target_kind", ["labels", "one_hot"])
def test_cross_entropy_gradient(target_kind, rng):
    logits = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    target = labels if target_kind == "labels" else np.eye(4)[labels]
    numeric = numerical_gradient(lambda z: F.cross_entropy(z, target), logits)
    assert rel_error(F.cross_entropy_backward(logits, target), numeric) < TOL


def test_cross_entropy_labels_and_one_hot_agree(rng):
    logits = rng.standard_normal((6, 4))
    labels = rng.integers(0, 4, 6)
    assert F.cross_entropy(logits, labels) == F.cross_entropy(logits, np.eye(4)[labels])
    expected = -np.mean(scipy.special.log_softmax(logits, axis=1)[np.arange(6), labels])
    assert F.cross_entropy(logits, labels) == pytest.approx(expected, rel=1e-12)


def test_mse_value_and_gradient(rng):
    pred, target = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    assert F.mse(pred, target) == pytest.approx(np.mean((pred - target) ** 2), rel=1e-12)
    numeric = numerical_gradient(lambda p: F.mse(p, target), pred)
    assert rel_error(F.mse_backward(pred, target), numeric) < TOL


def test_large_logits_are_finite_and_correct():
    # Magnitude 1e4: a naive exp overflows to inf and gives NaN. Reference values by hand:
    # softmax([1e4, 1e4 - 1, -1e4]) = [1, e^-1, 0] / (1 + e^-1).
    x = np.array([[1e4, 1e4 - 1.0, -1e4]])
    expected = np.array([[1.0, np.exp(-1.0), 0.0]]) / (1 + np.exp(-1.0))
    np.testing.assert_allclose(F.softmax(x), expected, rtol=1e-12, atol=0)
    np.testing.assert_allclose(F.log_softmax(x)[0, :2], np.log(expected[0, :2]), rtol=1e-12)
    assert F.log_softmax(x)[0, 2] == pytest.approx(-2e4 - np.log1p(np.exp(-1.0)), rel=1e-12)
    assert F.logsumexp(x)[0] == pytest.approx(1e4 + np.log1p(np.exp(-1.0)), rel=1e-15)
    # cross-entropy of the 1e4-confident wrong class is exactly the logit gap plus log(1 + e^-1)
    assert F.cross_entropy(x, np.array([2])) == pytest.approx(2e4 + np.log1p(np.exp(-1.0)), rel=1e-12)
    assert np.isfinite(F.cross_entropy_backward(x, np.array([2]))).all()
    big = np.array([-1e4, -30.0, 0.0, 30.0, 1e4])
    np.testing.assert_allclose(F.sigmoid(big), scipy.special.expit(big), rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(F.softplus(big), np.logaddexp(0, big), rtol=1e-12, atol=1e-300)
    assert F.sigmoid(big)[0] == 0.0 and F.sigmoid(big)[-1] == 1.0


def test_softmax_rows_sum_to_one_for_any_scale(rng):
    for scale in (1e-3, 1.0, 1e4):
        np.testing.assert_allclose(F.softmax(rng.standard_normal((5, 7)) * scale).sum(axis=1), 1.0,
                                   rtol=1e-12)
