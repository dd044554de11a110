"""Plot helpers for 2-D classifiers and 1-D regressions with gates; an edge module (NumPy, matplotlib).

Each helper draws on a matplotlib ``Axes`` it is given and takes the model as callables on NumPy
points, so any model fits: ``predict(P) -> labels (M,)``, ``gate(P) -> (M, E)`` gate values,
``predict(P) -> values (M,) or (M, 1)`` for regression. Backend arrays returned by the callables are
moved to NumPy with ``to_numpy``.

- :func:`plot_decision_regions`: the predicted class over the plane, with the data.
- :func:`plot_gate_regions`: which expert owns which part of the plane, each expert its own colour
  (colours blend where the gate shares a point between experts).
- :func:`plot_loss_curves`: one line per run, per epoch.
- :func:`plot_regression_fit`: a 1-D fit over the data, and the gate values along x below it.
"""
import numpy as np
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.patches import Patch

from .backend import to_numpy

CLASS_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f"]
EXPERT_COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a6761d", "#f781bf", "#17becf"]


def grid(X, steps=200, margin=0.1):
    """A ``steps`` x ``steps`` grid over the bounding box of X (N, 2), widened by ``margin`` of its size.

    Returns xx, yy (steps, steps) and the points P (steps², 2).
    """
    X = np.asarray(X)
    lo, hi = X.min(axis=0), X.max(axis=0)
    pad = margin * (hi - lo)
    xx, yy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], steps),
                         np.linspace(lo[1] - pad[1], hi[1] + pad[1], steps))
    return xx, yy, np.column_stack([xx.ravel(), yy.ravel()])


def _scatter_classes(ax, X, y):
    for c in np.unique(y):
        ax.scatter(X[y == c, 0], X[y == c, 1], s=8, color=CLASS_COLORS[c % len(CLASS_COLORS)],
                   edgecolors="k", linewidths=0.3, label=f"class {c}")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")


def plot_data(ax, X, y, title="data"):
    """The points X (N, 2) coloured by their labels y (N,)."""
    _scatter_classes(ax, np.asarray(X), np.asarray(y))
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title)


def plot_decision_regions(ax, predict, X, y, title="decision regions", steps=200):
    """The class ``predict`` gives each point of the plane, shaded, with the data X (N, 2), y (N,) on top."""
    X, y = np.asarray(X), np.asarray(y)
    xx, yy, P = grid(X, steps)
    n_classes = int(max(y.max(), 1)) + 1
    labels = to_numpy(predict(P)).reshape(xx.shape)
    cmap = ListedColormap(CLASS_COLORS[:n_classes])
    ax.contourf(xx, yy, labels, levels=np.arange(n_classes + 1) - 0.5, cmap=cmap, alpha=0.25)
    _scatter_classes(ax, X, y)
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title)


def plot_gate_regions(ax, gate, X, y=None, title="gate regions", steps=200):
    """Each point of the plane coloured by Σ_e g_e colour_e: pure colour where one expert owns it.

    gate : callable P (M, 2) -> g (M, E). X (N, 2), y (N,) optional: the data, drawn as small marks.
    """
    X = np.asarray(X)
    xx, yy, P = grid(X, steps)
    g = to_numpy(gate(P))  # (M, E)
    E = g.shape[1]
    colors = np.array([to_rgb(EXPERT_COLORS[e % len(EXPERT_COLORS)]) for e in range(E)])  # (E, 3)
    image = (g @ colors).reshape(xx.shape + (3,))
    ax.imshow(image, origin="lower", extent=(xx.min(), xx.max(), yy.min(), yy.max()), aspect="auto", alpha=0.8)
    if y is not None:
        y = np.asarray(y)
        for c, marker in zip(np.unique(y), "o^sDv<>p"):
            ax.scatter(X[y == c, 0], X[y == c, 1], s=5, marker=marker, facecolors="none", edgecolors="k",
                       linewidths=0.3)
    handles = [Patch(color=colors[e], label=f"expert {e}") for e in range(E)]
    ax.legend(handles=handles, loc="upper right", fontsize=7)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title(title)


def plot_loss_curves(ax, histories, ylabel="test log-loss (bits)", title="loss per epoch"):
    """One line per entry of ``histories`` (label -> sequence of per-epoch values, entry 0 before training)."""
    for label, values in histories.items():
        ax.plot(np.arange(len(values)), values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)


def plot_regression_fit(ax_fit, ax_gate, predict, gate, X, y, title="fit", steps=400):
    """Top: the data X (N, 1), y (N,) and the curve ``predict``; bottom: each gate value g_e(x) along x.

    predict : callable x (M, 1) -> (M,) or (M, 1). gate : callable x (M, 1) -> (M, E).
    """
    X, y = np.asarray(X), np.asarray(y)
    xs = np.linspace(X.min(), X.max(), steps)[:, None]
    ax_fit.scatter(X[:, 0], y, s=4, color="0.6", label="data")
    ax_fit.plot(xs[:, 0], to_numpy(predict(xs)).reshape(-1), color="k", lw=2, label="prediction")
    ax_fit.set_ylabel("r")
    ax_fit.legend(loc="upper right", fontsize=7)
    ax_fit.set_title(title)
    g = to_numpy(gate(xs))
    for e in range(g.shape[1]):
        ax_gate.plot(xs[:, 0], g[:, e], color=EXPERT_COLORS[e % len(EXPERT_COLORS)], label=f"g_{e}(x)")
    ax_gate.set_xlabel("x")
    ax_gate.set_ylabel("gate value")
    ax_gate.set_ylim(-0.05, 1.05)
    ax_gate.legend(loc="center right", fontsize=7)
