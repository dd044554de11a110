"""The post-003 datasets (numpy_moe/datasets.py, MATH.md §7): shapes, splits, geometry, seeding."""
import numpy as np
import pytest

from numpy_moe.datasets import make_bands, make_circles, make_v_regression, standardizer

MAKERS = [make_circles, make_bands, make_v_regression]


@pytest.mark.parametrize("make", MAKERS)
def test_split_is_70_30_and_seeded(make):
    X_train, X_test, y_train, y_test = make(1000, seed=3)
    assert X_train.shape[0] == y_train.shape[0] == 700 and X_test.shape[0] == y_test.shape[0] == 300
    assert X_train.dtype == np.float64
    again = make(1000, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((X_train, X_test, y_train, y_test), again))
    assert not np.array_equal(X_train, make(1000, seed=4)[0])


def test_circles_are_two_noisy_rings():
    X_train, X_test, y_train, y_test = make_circles(900, seed=0)
    X, y = np.vstack([X_train, X_test]), np.concatenate([y_train, y_test])
    assert np.bincount(y).tolist() == [300, 600]  # N/3 inner, 2N/3 outer
    # x = 5 + r (cos, sin) + U[0, 1)²: the distance from (5.5, 5.5) is r within the noise's half-diagonal
    d = np.linalg.norm(X - 5.5, axis=1)
    half_diagonal = np.sqrt(0.5)
    assert np.all(np.abs(d[y == 0] - 2) <= half_diagonal) and np.all(np.abs(d[y == 1] - 4) <= half_diagonal)


def test_bands_are_two_rectangles():
    X_train, X_test, y_train, y_test = make_bands(1000, seed=0)
    X, y = np.vstack([X_train, X_test]), np.concatenate([y_train, y_test])
    assert np.bincount(y).tolist() == [500, 500]
    assert np.all((X[:, 0] >= 3.5) & (X[:, 0] <= 6.5))
    assert np.all(np.abs(X[y == 0, 1] - 2) <= 0.5) and np.all(np.abs(X[y == 1, 1] - 8) <= 0.5)


def test_v_regression_residual_is_the_noise():
    X_train, X_test, y_train, y_test = make_v_regression(4000, seed=0)
    x, r = np.concatenate([X_train[:, 0], X_test[:, 0]]), np.concatenate([y_train, y_test])
    assert x.min() >= 0 and x.max() < 1
    residual = r - np.where(x < 0.5, 2 * x, 2 - 2 * x)
    assert abs(residual.mean()) < 0.01  # 4 standard errors of 0.1 / sqrt(4000)
    assert residual.std() == pytest.approx(0.1, rel=0.05)  # the std's std is ~1% here
    X0, _, r0, _ = make_v_regression(50, seed=1, noise=0)
    np.testing.assert_allclose(r0, 1 - np.abs(2 * X0[:, 0] - 1), rtol=0, atol=1e-15)  # the V itself


def test_standardizer_uses_the_training_statistics():
    X_train, X_test, _, _ = make_circles(300, seed=0)
    scale = standardizer(X_train)
    np.testing.assert_allclose(scale(X_train).mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(scale(X_train).std(axis=0), 1, rtol=1e-12)
    np.testing.assert_allclose(scale(X_test), (X_test - X_train.mean(0)) / X_train.std(0), rtol=1e-12)
    with pytest.raises(ValueError, match="constant column"):
        standardizer(np.ones((5, 2)))


@pytest.mark.parametrize("call,match", [
    (lambda: make_circles(2), "n_samples=2"),
    (lambda: make_bands(0), "n_samples=0"),
    (lambda: make_circles(100, test_size=1.5), "test_size=1.5"),
    (lambda: make_v_regression(100, noise=-1), "noise=-1"),
    # before: an empty test set without a word; every target -inf or inf; "'<' not supported between
    # instances of 'int' and 'str'"; a NaN column called "a constant column"
    (lambda: make_circles(3, test_size=0.1), "test_size=0.1 of 3 samples leaves no test sample"),
    (lambda: make_bands(4, test_size=0.9), "test_size=0.9 of 4 samples leaves no training sample"),
    (lambda: make_v_regression(100, noise=float("inf")), "noise=inf must be a finite number >= 0"),
    (lambda: make_bands(100, test_size="0.3"), "test_size='0.3' must be a finite number in"),
    (lambda: standardizer(np.array([[1.0, np.nan], [2.0, 3.0]])), "X_train contains NaN or inf"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
