"""Datasets as seeded train/test splits (MATH.md §7); an edge module, so it uses NumPy directly.

Every ``make_*`` function draws from ``numpy.random.default_rng(seed)`` and returns NumPy arrays
``X_train, X_test, y_train, y_test``: X float64 of shape (N, D), y int64 labels (N,) for classification
or float64 targets (N,) for regression. :func:`standardizer` scales features by the training set's mean
and standard deviation.

- ``make_circles``: post 003's nonlinear set, two noisy rings around (5, 5).
- ``make_bands``: post 003's linear set, two uniform 3 x 1 rectangles.
- ``make_v_regression``: the V-shaped target of the classic competitive-experts demo.
"""
import numpy as np

from .backend import default_rng
from .validation import check_positive_int, check_real


def _split(X, y, rng, test_size):
    """Shuffle with ``rng`` and split: the first ``round((1 - test_size) N)`` rows train."""
    check_real(test_size, "test_size", 0, 1, low_open=True, high_open=True)
    n_train = int(round((1 - test_size) * len(X)))
    if not 0 < n_train < len(X):
        raise ValueError(f"test_size={test_size!r} of {len(X)} samples leaves "
                         f"{'no test' if n_train == len(X) else 'no training'} sample; change test_size or n_samples")
    order = rng.permutation(len(X))
    train, test = order[:n_train], order[n_train:]
    return X[train], X[test], y[train], y[test]


def make_circles(n_samples=1000, seed=None, test_size=0.3):
    """Two rings centred at (5, 5): radius 2 (N/3 points, class 0) and radius 4 (the rest, class 1).

    Angles are uniform on [0, 2π); each coordinate then gets U[0, 1) noise (post 003). Split 70/30.
    Returns X_train (n, 2), X_test (N - n, 2), y_train (n,), y_test (N - n,).
    """
    N = check_positive_int(n_samples, "n_samples", 3)
    rng = default_rng(seed)
    n_inner = N // 3
    radius = np.where(np.arange(N) < n_inner, 2.0, 4.0)
    angle = rng.uniform(0, 2 * np.pi, N)
    X = 5 + radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1) + rng.uniform(0, 1, (N, 2))
    y = (radius > 2).astype(np.int64)
    return _split(X, y, rng, test_size)


def make_bands(n_samples=1000, seed=None, test_size=0.3):
    """Two uniform 3 x 1 rectangles (x1 width 3, x2 height 1) centred at (5, 2) (class 0), (5, 8) (class 1).

    Half the points in each (post 003's linear set). Split 70/30. Shapes as for :func:`make_circles`.
    """
    N = check_positive_int(n_samples, "n_samples", 2)
    rng = default_rng(seed)
    y = (np.arange(N) >= N // 2).astype(np.int64)
    centre = np.stack([np.full(N, 5.0), np.where(y == 0, 2.0, 8.0)], axis=1)
    X = centre + rng.uniform(-0.5, 0.5, (N, 2)) * np.array([3.0, 1.0])
    return _split(X, y, rng, test_size)


def make_v_regression(n_samples=1000, seed=None, noise=0.1, test_size=0.3):
    """x ~ U(0, 1); r = 2x + ε for x < 0.5, r = 2 - 2x + ε otherwise, ε ~ N(0, noise²).

    The classic two-expert demo: one linear expert per arm of the V. Split 70/30.
    Returns X_train (n, 1), X_test (N - n, 1), y_train (n,), y_test (N - n,) float targets.
    """
    N = check_positive_int(n_samples, "n_samples", 2)
    noise = check_real(noise, "noise", 0)  # finite: noise=inf made every target -inf or inf
    rng = default_rng(seed)
    x = rng.uniform(0, 1, N)
    r = np.where(x < 0.5, 2 * x, 2 - 2 * x) + noise * rng.standard_normal(N)
    return _split(x[:, None], r, rng, test_size)


def standardizer(X_train):
    """A function mapping X (M, D) to (X - mean) / std with the mean and std of ``X_train`` (N, D)."""
    X_train = _real_rows(X_train, None, "X_train")
    if not np.isfinite(X_train).all():
        raise ValueError("X_train contains NaN or inf; cannot standardise it")
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    if not (std > 0).all():
        raise ValueError(f"X_train has a constant column (std={std}); cannot standardise it")
    return lambda X: (_real_rows(X, X_train.shape[1], "X") - mean) / std


def _real_rows(X, D, name):
    """``X`` as float64 rows (N, D) (D None: any width); a 1-D X or another width broadcast against the mean
    and std into nonsense, a complex X lost its imaginary part."""
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {X.dtype}; expected real numbers")
    if X.ndim != 2 or D is not None and X.shape[1] != D:
        raise ValueError(f"{name} has shape {X.shape}; expected (N, {'D' if D is None else D})")
    return X.astype(np.float64)
