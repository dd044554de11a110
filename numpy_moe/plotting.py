"""Plot helpers for 2-D classifiers and 1-D regressions with gates; an edge module (NumPy, matplotlib).

Each helper draws on a matplotlib ``Axes`` it is given and takes the model as callables on NumPy
points, so any model fits: ``predict(P) -> labels (M,)``, ``gate(P) -> (M, E)`` gate values,
``predict(P) -> values (M,) or (M, 1)`` for regression. Backend arrays returned by the callables are
moved to NumPy with ``to_numpy``.

- :func:`plot_decision_regions`: the predicted class over the plane, with the data.
- :func:`plot_gate_regions`: which expert owns which part of the plane, each expert its own colour
  (colours blend where the gate shares a point between experts); dense or sparse (top-k) gates.
- :func:`plot_expert_lines`: each expert's decision line in its colour, solid where its gate owns the plane.
- :func:`plot_decision_boundary`: where the predicted class changes, as black lines.
- :func:`count_used_experts`: how many experts win (largest gate weight) at least one point.
- :func:`plot_loss_curves`: one line per run, per epoch.
- :func:`plot_regression_fit`: a 1-D fit (and each expert's line) over the data, the gates along x below.
- :func:`plot_expert_usage`: each expert's share of a sparse layer's N K assignments, per epoch.

Colours: experts always take :data:`EXPERT_COLORS` (expert e: ``EXPERT_COLORS[e % 8]``, saturated hues),
classes :data:`CLASS_COLORS` (greys and yellows), a different palette, so that an expert is never
mistaken for a class.
"""
import numpy as np
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .backend import to_numpy
from .routing import combine_weights

EXPERT_COLORS = ["#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a6761d", "#f781bf", "#17becf"]
# greys and yellows, which the experts' saturated hues avoid: the first four classes are far (RGB distance
# > 0.3) from every expert colour, so a class region is never read as an expert's
CLASS_COLORS = ["#333333", "#f0d800", "#a8a8a8", "#9acd32", "#000080", "#fff5a0", "#6b6b6b", "#556b2f"]


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
    ax.legend(loc="upper right", fontsize=9)
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
    ax.legend(loc="upper right", fontsize=9)
    ax.set_title(title)


def plot_decision_boundary(ax, predict, X, steps=200, label="decision boundary"):
    """The lines where the class ``predict`` gives changes, in black, over the box of X (N, 2).

    predict : callable P (M, 2) -> labels (M,). Drawn at the half-integer levels between class labels.
    Returns a legend handle for the line.
    """
    xx, yy, P = grid(np.asarray(X), steps)
    labels = to_numpy(predict(P)).reshape(xx.shape)
    if labels.min() < labels.max():
        ax.contour(xx, yy, labels, levels=np.arange(labels.min(), labels.max()) + 0.5, colors="k", linewidths=1.6)
    return Line2D([], [], color="k", lw=1.6, label=label)


def gate_weights(gate_output, n_experts=None):
    """The (M, E) combine weights of a gate's output: an (M, E) array as it is, a Routing made dense.

    gate_output : an (M, E) array (dense gate values, or a sparse gate's combine weights with zeros for
        the experts a point is not routed to), or a ``numpy_moe.gates.Routing``, made dense by
        :func:`numpy_moe.routing.combine_weights` (dropped assignments stay 0).

    n_experts : None, or E to check a Routing against (it has as many experts as its logits have columns).
    """
    if hasattr(gate_output, "sample") and hasattr(gate_output, "weight"):  # a Routing
        g = to_numpy(combine_weights(gate_output))  # (M, E), zero off the kept assignments
        if n_experts is not None and n_experts != g.shape[1]:
            raise ValueError(f"n_experts={n_experts} but the routing has {g.shape[1]} experts")
        return g
    g = to_numpy(gate_output)
    if g.ndim != 2:
        raise ValueError(f"gate output of shape {g.shape} must be an (M, E) array of combine weights or a Routing")
    return g


def count_used_experts(gate_output):
    """The number of experts that have the largest weight at one point at least (ties: the first).

    gate_output : (M, E) weights or a Routing (see :func:`gate_weights`); an expert that never wins a
    point, even if it holds some weight everywhere, is not counted.
    """
    g = gate_weights(gate_output)
    return int(np.unique(g.argmax(axis=1)).size)


def _class_markers(ax, X, y):
    """The data as small hollow black marks, one marker shape per class; returns legend handles."""
    handles = []
    for c, marker in zip(np.unique(y), "o^sDv<>p"):
        ax.scatter(X[y == c, 0], X[y == c, 1], s=6, marker=marker, facecolors="none", edgecolors="k",
                   linewidths=0.4)
        handles.append(Line2D([], [], ls="none", marker=marker, mfc="none", mec="k", label=f"class {c}"))
    return handles


def plot_gate_regions(ax, gate, X, y=None, title="gate regions", steps=200, legend=True, alpha=0.8):
    """Each point of the plane coloured by its experts' colours mixed by the gate: Σ_e g_e colour_e / Σ_e g_e.

    gate : callable P (M, 2) -> g (M, E), the combine weights, or -> a ``numpy_moe.gates.Routing``.
        Sparse gates work either way: return the dense (M, E) combine weights (zeros for the experts a
        point is not routed to), or the Routing, which :func:`gate_weights` scatters into that matrix.
        Rows are normalised, so a top-1 gate whose kept weight is p_max < 1 still shows its expert's pure
        colour; a point every assignment of which was dropped (all zeros) is white.

    X (N, 2), y (N,) optional: the data, drawn as small hollow marks (one shape per class).
    legend : draw the experts' (and classes') legend in the panel. alpha : opacity of the colours.

    Returns g (steps², E), the weights on the grid (rows in the order of :func:`grid`'s points).

    Example: the regions of a MoE layer's top-2 gate (eval mode, so no noise is drawn)::

        layer = MoE(2, 3, n_experts=4, hidden=8, top_k=2, seed=0)
        layer.eval()
        plot_gate_regions(ax, layer.gate.forward, X)  # a Routing, scattered to its (M, 4) combine weights
    """
    X = np.asarray(X)
    xx, yy, P = grid(X, steps)
    g = gate_weights(gate(P))  # (M, E)
    E = g.shape[1]
    colors = np.array([to_rgb(EXPERT_COLORS[e % len(EXPERT_COLORS)]) for e in range(E)])  # (E, 3)
    total = g.sum(axis=1, keepdims=True)  # (M, 1)
    image = np.where(total > 0, (g @ colors) / np.where(total > 0, total, 1), 1.0)  # (M, 3), white if empty
    extent = (xx.min(), xx.max(), yy.min(), yy.max())
    ax.imshow(image.reshape(xx.shape + (3,)), origin="lower", extent=extent, aspect="auto", alpha=alpha)
    handles = [Patch(color=colors[e], label=f"expert {e}") for e in range(E)]
    if y is not None:
        handles += _class_markers(ax, X, np.asarray(y))
    if legend:
        ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_title(title)
    return g


def plot_expert_lines(ax, score, X, gate=None, steps=200):
    """Each expert's decision line, the zero set of its decision function, in the expert's colour.

    score : callable P (M, 2) -> (M, E), each expert's own decision function (for two classes, its logit
        of class 1 minus its logit of class 0); a linear expert's zero set is the straight line
        w_e·x + b_e = 0, drawn where it crosses the plotted box (:func:`grid` over X (N, 2)).
    gate : optional callable P (M, 2) -> (M, E) or Routing: the line is drawn solid and thick where its
        expert has the largest gate weight (the part of the line that decides there) and thin and dashed
        elsewhere. Without it every line is solid.

    Returns the list of experts whose solid part is not empty (their line crosses their own region).
    """
    X = np.asarray(X)
    xx, yy, P = grid(X, steps)
    s = to_numpy(score(P))  # (M, E)
    owner = gate_weights(gate(P)).argmax(axis=1) if gate is not None else None  # (M,)
    deciding = []
    for e in range(s.shape[1]):
        color = EXPERT_COLORS[e % len(EXPERT_COLORS)]
        field = s[:, e].reshape(xx.shape)
        if not (field.min() < 0 < field.max()):
            continue  # the line does not cross the box
        own = np.ma.masked_where(owner.reshape(xx.shape) != e if owner is not None else False, field)
        if owner is not None:
            ax.contour(xx, yy, field, levels=[0], colors=[color], linewidths=1.0, linestyles="--", alpha=0.8)
        if own.count() and own.min() < 0 < own.max():
            # above other lines (zorder 3), such as a class boundary that follows it; a white halo shows
            # it on any colour
            ax.contour(xx, yy, own, levels=[0], colors="white", linewidths=5.4, zorder=3)
            ax.contour(xx, yy, own, levels=[0], colors=[color], linewidths=2.4, zorder=3)
            deciding.append(e)
    return deciding


def plot_loss_curves(ax, histories, ylabel="test log-loss (bits)", title="loss per epoch"):
    """One line per entry of ``histories``: label -> per-epoch values, entry 0 before training."""
    for label, values in histories.items():
        ax.plot(np.arange(len(values)), values, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.set_title(title)


def plot_regression_fit(ax_fit, ax_gate, predict, gate, X, y, experts=None, title="fit", steps=400):
    """Top: the data X (N, 1), y (N,), the curve ``predict`` and each expert's line (dashed, in its gate's
    colour); bottom: each gate value g_e(x) along x.

    predict : callable x (M, 1) -> (M,) or (M, 1). gate : callable x (M, 1) -> (M, E).
    experts : optional callable x (M, 1) -> (M, E), each expert's own prediction.
    """
    X, y = np.asarray(X), np.asarray(y)
    xs = np.linspace(X.min(), X.max(), steps)[:, None]
    ax_fit.scatter(X[:, 0], y, s=4, color="0.6", label="data")
    if experts is not None:
        lo, hi = y.min() - 0.1 * np.ptp(y), y.max() + 0.1 * np.ptp(y)
        for e, line in enumerate(to_numpy(experts(xs)).T):
            color = EXPERT_COLORS[e % len(EXPERT_COLORS)]
            ax_fit.plot(xs[:, 0], line, ls="--", color=color, label=f"expert {e}")
        ax_fit.set_ylim(lo, hi)  # an expert's line may leave the data's range where its gate is off
    ax_fit.plot(xs[:, 0], to_numpy(predict(xs)).reshape(-1), color="k", lw=2, label="prediction")
    ax_fit.set_ylabel("r")
    ax_fit.legend(loc="upper right", fontsize=9)
    ax_fit.set_title(title)
    g = to_numpy(gate(xs))
    for e in range(g.shape[1]):
        ax_gate.plot(xs[:, 0], g[:, e], color=EXPERT_COLORS[e % len(EXPERT_COLORS)], label=f"g_{e}(x)")
    ax_gate.set_xlabel("x")
    ax_gate.set_ylabel("gate value")
    ax_gate.set_ylim(-0.05, 1.05)
    ax_gate.legend(loc="center right", fontsize=9)


def plot_expert_usage(ax, counts, top_k=1, unit="samples", title="expert usage per epoch", first_epoch=1,
                      legend=True):
    """Each expert's share of a sparse layer's assignments, one line per expert (its colour), per epoch.

    counts : (epochs, E) assignments each expert received in each epoch (for example the sum over the
        batches of a MoE layer's ``diagnostics["samples_per_expert"]``, which counts all K assignments
        of every sample). Each row is divided by its sum, N K minus the dropped ones: a share is
        "the fraction of the N K assignments", not of the N samples. An expert takes at most one
        assignment per sample, so a share lies in [0, 1 / K]; 1 / E (dotted) is a balanced layer.

    top_k : K, used for the y limit and the label. unit : what the N rows are, for the y label.
    first_epoch : the epoch of row 0 (1, or 0 when row 0 is before training).

    Not for an estimator's ``expert_usage_``, which is a top-1 share: the fraction of the samples whose
    largest gate weight is each expert (it sums to 1 whatever K).
    """
    counts = np.asarray(counts, dtype=float)
    if counts.ndim != 2:
        raise ValueError(f"counts of shape {counts.shape} must be (epochs, E)")
    share = counts / counts.sum(axis=1, keepdims=True)  # (epochs, E)
    epochs = np.arange(first_epoch, first_epoch + len(counts))
    for e in range(counts.shape[1]):
        ax.plot(epochs, share[:, e], marker="o", ms=3, color=EXPERT_COLORS[e % len(EXPERT_COLORS)],
                label=f"expert {e}")
    ax.axhline(1 / counts.shape[1], color="grey", ls=":", lw=1, label="balanced (1/E)")
    ax.set_ylim(0, 1.05 / top_k)
    ax.set_xticks(epochs[::max(1, len(epochs) // 8)])
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"share of the {unit}' top-{top_k} assignments" if top_k > 1
                  else f"share of the {unit} (top-1)")
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=9)
