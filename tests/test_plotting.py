"""Plot helpers (numpy_moe/plotting.py): each draws what it says on an Agg figure, from plain callables."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from numpy_moe.plotting import (EXPERT_COLORS, grid, plot_data, plot_decision_regions,  # noqa: E402
                                plot_gate_regions, plot_loss_curves, plot_regression_fit)

X = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0], [-1.0, 1.0]])
y = np.array([0, 1, 1, 0])


def halves(P):
    """A gate that gives x1 < 0.5 to expert 0 and the rest to expert 1."""
    left = (P[:, 0] < 0.5).astype(float)
    return np.column_stack([left, 1 - left])


def test_grid_covers_the_data_with_a_margin():
    xx, yy, P = grid(X, steps=11, margin=0.1)
    assert xx.shape == yy.shape == (11, 11) and P.shape == (121, 2)
    assert P[:, 0].min() == -1.3 and P[:, 0].max() == 2.3 and P[:, 1].min() == -0.2


def test_decision_regions_shade_the_predicted_class():
    fig, ax = plt.subplots()
    plot_decision_regions(ax, lambda P: (P[:, 0] > 0.5).astype(int), X, y, title="t")
    (contours,) = [c for c in ax.collections if hasattr(c, "levels")]
    np.testing.assert_allclose(contours.levels, [-0.5, 0.5, 1.5])
    assert ax.get_title() == "t" and ax.get_xlabel() == "x1"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["class 0", "class 1"]
    plt.close(fig)


def test_gate_regions_colour_each_point_by_its_expert():
    fig, ax = plt.subplots()
    plot_gate_regions(ax, halves, X, y)
    image = ax.get_images()[0].get_array()
    xx, _, _ = grid(X)
    assert np.allclose(image[:, xx[0] < 0.5], to_rgb(EXPERT_COLORS[0]))  # left half: expert 0's colour
    assert np.allclose(image[:, xx[0] >= 0.5], to_rgb(EXPERT_COLORS[1]))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["expert 0", "expert 1"]
    plt.close(fig)


def test_loss_curves_draw_one_line_per_run():
    fig, ax = plt.subplots()
    plot_loss_curves(ax, {"SGD": [1.0, 0.5, 0.2], "FTRL": [1.0, 0.4, 0.1]})
    assert [line.get_label() for line in ax.get_lines()] == ["SGD", "FTRL"]
    np.testing.assert_array_equal(ax.get_lines()[1].get_xdata(), [0, 1, 2])
    assert ax.get_xlabel() == "epoch"
    plt.close(fig)


def test_regression_fit_draws_the_curve_and_every_gate():
    fig, (top, bottom) = plt.subplots(2, 1)
    x = np.linspace(0, 1, 20)[:, None]
    gate = lambda P: np.column_stack([P[:, 0], 1 - P[:, 0]])  # noqa: E731
    plot_regression_fit(top, bottom, lambda P: 2 * P, gate, x, 2 * x[:, 0], steps=50)
    np.testing.assert_allclose(top.get_lines()[0].get_ydata(), 2 * np.linspace(0, 1, 50))
    assert [line.get_label() for line in bottom.get_lines()] == ["g_0(x)", "g_1(x)"]
    plt.close(fig)


def test_plot_data_draws_each_class():
    fig, ax = plt.subplots()
    plot_data(ax, X, y)
    assert len(ax.collections) == 2
    plt.close(fig)
