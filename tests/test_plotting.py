"""Plot helpers (numpy_moe/plotting.py): each draws what it says on an Agg figure, from plain callables."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from numpy_moe.moe import MoE  # noqa: E402
from numpy_moe.plotting import (CLASS_COLORS, EXPERT_COLORS, count_used_experts, gate_weights, grid, plot_data,  # noqa: E402
                                plot_decision_boundary, plot_decision_regions, plot_expert_lines,
                                plot_expert_usage, plot_gate_regions, plot_loss_curves, plot_regression_fit)

X = np.array([[0.0, 0.0], [1.0, 2.0], [2.0, 1.0], [-1.0, 1.0]])
y = np.array([0, 1, 1, 0])


def halves(P):
    """A gate that gives x1 < 0.5 to expert 0 and the rest to expert 1."""
    left = (P[:, 0] < 0.5).astype(float)
    return np.column_stack([left, 1 - left])


def test_class_and_expert_palettes_cannot_be_confused():
    experts = np.array([to_rgb(c) for c in EXPERT_COLORS])
    classes = np.array([to_rgb(c) for c in CLASS_COLORS[:4]])
    distance = np.linalg.norm(classes[:, None] - experts[None], axis=2)  # (4 classes, 8 experts)
    assert distance.min() > 0.3, distance.round(2)
    assert len(set(EXPERT_COLORS)) == len(set(CLASS_COLORS)) == 8


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
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["expert 0", "expert 1", "class 0", "class 1"]
    plt.close(fig)


def test_gate_regions_of_a_sparse_top_k_gate_show_each_points_experts():
    """A MoE layer's top-k gate returns a Routing: its kept weights become the (M, E) combine weights,
    and the colour of a point is the weighted mean of its K experts' colours (rows are normalised, so a
    top-1 weight p_max < 1 still gives the pure colour)."""
    colors = np.array([to_rgb(c) for c in EXPERT_COLORS[:4]])
    for k in (1, 2):
        layer = MoE(2, 2, 4, hidden=4, top_k=k, seed=0)
        layer.eval()
        fig, ax = plt.subplots()
        g = plot_gate_regions(ax, layer.gate.forward, X, steps=20)
        _, _, P = grid(X, steps=20)
        r = layer.gate.forward(P)
        expected = np.zeros((400, 4))  # built from the routing's (sample, expert, weight) lists
        for n, e, w in zip(r.sample, r.expert, r.weight):
            expected[n, e] = w
        np.testing.assert_array_equal(g, expected)
        assert ((g > 0).sum(axis=1) == k).all() and count_used_experts(r) == count_used_experts(g) > 1
        image = ax.get_images()[0].get_array().reshape(-1, 3)
        np.testing.assert_allclose(image, expected @ colors / expected.sum(axis=1, keepdims=True), atol=1e-12)
        if k == 1:  # each point shows exactly one expert's colour
            np.testing.assert_allclose(image, colors[expected.argmax(axis=1)], atol=1e-12)
        plt.close(fig)


def test_gate_weights_of_a_routing_leave_dropped_assignments_at_zero():
    layer = MoE(2, 2, 4, hidden=4, top_k=2, capacity_factor=0.5, seed=0)
    layer.eval()
    rng = np.random.default_rng(0)
    r, _ = layer.capacity.apply(layer.gate.forward(rng.standard_normal((16, 2))))
    g = gate_weights(r)
    assert (~r.kept).sum() > 0, "the test needs dropped assignments"
    assert (g > 0).sum() == r.kept.sum() == 4 * 4  # capacity ceil(16 * 2 * 0.5 / 4) = 4 for each of 4 experts
    np.testing.assert_array_equal(g[r.sample[r.kept], r.expert[r.kept]], r.weight[r.kept])
    with pytest.raises(ValueError, match="must be an \\(M, E\\) array"):
        gate_weights(np.ones(3))


def test_count_used_experts_counts_the_experts_that_win_a_point():
    g = np.array([[0.6, 0.3, 0.1, 0.0], [0.2, 0.7, 0.1, 0.0], [0.5, 0.1, 0.4, 0.0]])
    assert count_used_experts(g) == 2  # experts 0 and 1 win a row; 2 holds weight but never the most
    assert count_used_experts(np.eye(5)[[0, 3, 3, 4]]) == 3


def test_expert_lines_are_each_experts_zero_set_solid_only_where_its_gate_owns_the_plane():
    fig, ax = plt.subplots()
    # expert 0's line is x1 = 0.25 (inside its own half x1 < 0.5); expert 1's is x2 = 1.5, in both halves;
    # expert 2's line x1 = 10 lies outside the box and is not drawn
    score = lambda P: np.column_stack([P[:, 0] - 0.25, P[:, 1] - 1.5, P[:, 0] - 10])  # noqa: E731
    gate = lambda P: np.column_stack([halves(P), np.zeros(len(P))])  # noqa: E731
    deciding = plot_expert_lines(ax, score, X, gate=gate, steps=101)
    assert deciding == [0, 1]
    white = np.array(to_rgb("white"))
    halos = [c for c in ax.collections if np.allclose(c.get_edgecolor()[0][:3], white)]
    lines = [c for c in ax.collections if not np.allclose(c.get_edgecolor()[0][:3], white)]
    solid = [c for c in lines if c.get_linewidths()[0] > 2]
    dashed = [c for c in lines if c.get_linewidths()[0] < 2]
    assert len(solid) == len(dashed) == len(halos) == 2
    assert np.allclose(solid[0].get_edgecolor()[0][:3], to_rgb(EXPERT_COLORS[0]))
    vertices = np.concatenate([p.vertices for p in solid[0].get_paths()])
    np.testing.assert_allclose(vertices[:, 0], 0.25, atol=1e-9)  # the zero set of x1 - 0.25
    vertices = np.concatenate([p.vertices for p in solid[1].get_paths()])
    np.testing.assert_allclose(vertices[:, 1], 1.5, atol=1e-9)
    assert vertices[:, 0].min() >= 0.5 - 0.04  # solid only in expert 1's half (one grid step of slack)
    plt.close(fig)
    fig, ax = plt.subplots()
    assert plot_expert_lines(ax, score, X, steps=101) == [0, 1]  # without a gate: every line solid
    assert all(c.get_linewidths()[0] > 2 for c in ax.collections)
    plt.close(fig)


def test_decision_boundary_is_drawn_where_the_class_changes():
    fig, ax = plt.subplots()
    handle = plot_decision_boundary(ax, lambda P: (P[:, 1] > 1.0).astype(int), X, steps=101)
    (contour,) = ax.collections
    vertices = np.concatenate([p.vertices for p in contour.get_paths()])
    np.testing.assert_allclose(vertices[:, 1], 1.0, atol=0.03)  # within one grid step of x2 = 1
    assert handle.get_label() == "decision boundary"
    plt.close(fig)


def test_expert_usage_plots_each_experts_share_of_the_assignments_per_epoch():
    fig, ax = plt.subplots()
    counts = np.array([[10, 6, 4, 0], [5, 5, 5, 5]])  # 2 epochs of 10 samples x top-2 = 20 assignments
    plot_expert_usage(ax, counts, top_k=2, unit="test images", first_epoch=0)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["expert 0", "expert 1", "expert 2", "expert 3", "balanced (1/E)"]
    np.testing.assert_allclose(lines[0].get_ydata(), [0.5, 0.25])  # expert 0: 10 of 20, then 5 of 20
    np.testing.assert_allclose(lines[3].get_ydata(), [0.0, 0.25])
    np.testing.assert_array_equal(lines[0].get_xdata(), [0, 1])
    assert [line.get_color() for line in lines[:4]] == EXPERT_COLORS[:4]
    assert ax.get_ylim() == (0, 1.05 / 2) and "top-2 assignments" in ax.get_ylabel()
    with pytest.raises(ValueError, match="must be \\(epochs, E\\)"):
        plot_expert_usage(ax, np.ones(4))
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
    experts = lambda P: np.column_stack([2 * P[:, 0], 3 - P[:, 0]])  # noqa: E731
    plot_regression_fit(top, bottom, lambda P: 2 * P, gate, x, 2 * x[:, 0], experts=experts, steps=50)
    assert [line.get_label() for line in top.get_lines()] == ["expert 0", "expert 1", "prediction"]
    np.testing.assert_allclose(top.get_lines()[2].get_ydata(), 2 * np.linspace(0, 1, 50))
    np.testing.assert_allclose(top.get_lines()[1].get_ydata(), 3 - np.linspace(0, 1, 50))
    assert [line.get_label() for line in bottom.get_lines()] == ["g_0(x)", "g_1(x)"]
    plt.close(fig)


def test_plot_data_draws_each_class():
    fig, ax = plt.subplots()
    plot_data(ax, X, y)
    assert len(ax.collections) == 2
    plt.close(fig)
