"""Classic mixture of local experts (post 003): SGD vs FTRL, k = 1..8, cooperative vs competitive.

Regenerates the study of post 003 with the corrected model (MATH.md §5): linear experts and a softmax
gate on standardised inputs, trained online (one sample per step, shuffled each epoch) by the closed-form
rules, with SGD (lr 0.1, per-epoch decay 0.99) or FTRL-Proximal (α = 1, β = 0.2, λ1 = λ2 = 0): the settings of
the code post 003 links to, not of its text.

1. k = 2 competitive experts on the linear "bands": data, SGD and FTRL decision regions, test log-loss.
2. The same on the nonlinear "circles".
3. Circles with k = 1, 2, 4, 8 competitive experts (FTRL): one panel per k with the gate regions (each
   expert's colour), each expert's decision line in its colour (solid where its gate owns the plane) and
   the mixture's decision boundary in black; and k = 4 with SGD (which sometimes loses an expert).
4. Cooperative vs competitive: circles with k = 4, and the V-shaped regression with k = 2 (its targets
   standardised too, so the unit-variance likelihood of the competitive rule fits their scale; mini-batches
   of 10, SGD lr 0.3 with decay 0.95), drawn as the fit above the gate values along x.

Every configuration runs with five seeds (seed s draws the data set, the initial weights and the
shuffling); the figures show seed 0 and say so beside each accuracy. Prints one row per configuration: final test log-loss in bits and
accuracy as mean ± std over the seeds (and the accuracy's min-max), or test MSE in the targets' units.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import time

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from experiments._common import Progress, parse_args, savefig
from numpy_moe import plotting
from numpy_moe.classic import LocalExperts, fit_local_experts
from numpy_moe.datasets import make_bands, make_circles, make_v_regression, standardizer
from numpy_moe.optim import FTRL, SGD

OPTIMISERS = {"SGD": lambda: SGD(lr=0.1, decay=0.99), "FTRL": lambda: FTRL(alpha=1.0, beta=0.2)}


class Run:
    """One trained classifier on standardised inputs, with callables on raw points for the plots."""

    def __init__(self, data, mode, k, opt, epochs, seed=0, callback=None):
        X_train, X_test, y_train, y_test = data
        self.scale = standardizer(X_train)
        self.model = LocalExperts(2, 2, k, mode=mode, seed=seed)
        t = time.perf_counter()
        self.history = fit_local_experts(self.model, self.scale(X_train), y_train, OPTIMISERS[opt](), epochs,
                                         batch_size=1, seed=seed, X_test=self.scale(X_test), y_test=y_test,
                                         callback=callback)
        self.seconds = time.perf_counter() - t
        self.accuracy = float((self.model.predict(self.scale(X_test)) == y_test).mean())
        self.used = plotting.count_used_experts(self.gate(X_test))  # experts whose gate wins a test point
        self.mode, self.k, self.opt, self.seed = mode, k, opt, seed

    def predict(self, P):
        return self.model.predict(self.scale(P))

    def gate(self, P):
        return self.model.gate(self.scale(P))

    def expert_scores(self, P):
        """(M, E) each expert's own decision function, logit of class 1 minus logit of class 0: its line
        is where it is zero (linear in the raw inputs too, the standardisation being affine)."""
        w = self.model.expert_outputs(self.scale(P))  # (M, E, 2)
        return w[:, :, 1] - w[:, :, 0]


def summary(runs):
    """One table row for the same configuration over seeds: (mode, k, optimiser, loss, accuracy, note, s)."""
    loss = np.array([r.history["test"][-1] for r in runs])
    acc = np.array([r.accuracy for r in runs])
    used = [r.used for r in runs]
    first = runs[0]
    return (first.mode, first.k, first.opt, f"{loss.mean():.3f} ± {loss.std():.3f}",
            f"{acc.mean():.3f} ± {acc.std():.3f} ({acc.min():.3f}-{acc.max():.3f})",
            f"{min(used)}-{max(used)} of {first.k} experts used", float(np.mean([r.seconds for r in runs])))


def print_table(rows, n_seeds):
    head = (f"{'run':<18} {'mode':<12} {'k':>2} {'optimiser':<9} {'test log-loss, bits':>19} "
            f"{'test accuracy, mean ± std (min-max)':>36} {'note':<34} {'s/run':>5}")
    print(f"\nover {n_seeds} seeds (data, initial weights and shuffling)\n" + head + "\n" + "-" * len(head))
    for name, (mode, k, opt, loss, acc, note, seconds) in rows:
        print(f"{name:<18} {mode:<12} {k:>2} {opt:<9} {loss:>19} {acc:>36} {note:<34} {seconds:>5.1f}")


def panel_title(label, run, lines=None):
    """``k=8: accuracy 1.000 (seed 0), 5 of 8 experts used``: the accuracy with the seed it was drawn from,
    and how many experts win at least one test point (computed by the run, not written by hand); with
    ``lines`` (the experts whose decision line crosses their own gate region, from
    ``plotting.plot_expert_lines``) a second line says how many draw their line there."""
    text = f"{label}: accuracy {run.accuracy:.3f} (seed {run.seed}), {run.used} of {run.k} experts used"
    if lines is not None:
        text += f"\n{len(lines)} of them draw{'s' if len(lines) == 1 else ''} a line in {'its' if len(lines) == 1 else 'their'} own region"
    return text


def bands_title(pair):
    """local_experts_bands.png's title from the SGD and FTRL runs drawn (``pair``: optimiser -> Run): whether
    both separate the classes (test accuracy 1) and whose test log-loss is lower at every epoch after
    the first, computed rather than assumed."""
    sgd, ftrl = pair["SGD"], pair["FTRL"]
    both = sgd.accuracy == 1 and ftrl.accuracy == 1
    lower = np.array(ftrl.history["test"][1:]) < np.array(sgd.history["test"][1:])
    first = ("both optimisers separate the classes" if both else
             f"test accuracy {sgd.accuracy:.3f} with SGD, {ftrl.accuracy:.3f} with FTRL")
    second = ("FTRL's log-loss falls faster" if lower.all() else "SGD's log-loss falls faster" if not lower.any()
              else f"FTRL's log-loss is the lower in {int(lower.sum())} of {lower.size} epochs")
    return f"Bands, 2 competitive linear experts: {first}; {second}"


def optimiser_figure(args, data, runs, name, title):
    """2 x 2: data, SGD regions, FTRL regions (each expert's line over them), test log-loss per epoch."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 9.5))
    axes = axes.ravel()
    plotting.plot_data(axes[0], data[0], data[2], title=f"{name}: training data (seed {runs['SGD'].seed})")
    for ax, opt in zip(axes[1:3], ("SGD", "FTRL")):
        run = runs[opt]
        plotting.plot_decision_regions(ax, run.predict, data[1], data[3],
                                       title=f"{opt}: test accuracy {run.accuracy:.3f} (seed {run.seed})")
        plotting.plot_expert_lines(ax, run.expert_scores, data[1], gate=run.gate)
    plotting.plot_loss_curves(axes[3], {opt: runs[opt].history["test"] for opt in ("SGD", "FTRL")},
                              title=f"test log-loss per epoch (seed {runs['SGD'].seed})")
    axes[3].set_yscale("log")
    axes[3].set_ylabel("test log-loss (bits, log scale)")
    fig.suptitle(title + "\nexpert lines in their gate colours, solid where that expert's gate owns the plane")
    fig.tight_layout()
    savefig(fig, args, f"local_experts_{name}.png")


def regions_figure(args, data, runs, labels, name, title, ncols=2):
    """One panel per run: gate regions, each expert's decision line and the mixture's boundary (black).

    Returns the panel titles (``panel_title``)."""
    nrows = -(-len(runs) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.8 * ncols, 5.2 * nrows + 0.9), squeeze=False)
    titles = []
    for ax, run, label in zip(axes.ravel(), runs, labels):
        plotting.plot_gate_regions(ax, run.gate, data[1], data[3], legend=False, alpha=0.55)
        lines = plotting.plot_expert_lines(ax, run.expert_scores, data[1], gate=run.gate)
        titles.append(panel_title(label, run, lines))
        ax.set_title(titles[-1])
        boundary = plotting.plot_decision_boundary(ax, run.predict, data[1], label="the mixture's class boundary")
    k = max(run.k for run in runs)
    experts = [Patch(color=plotting.EXPERT_COLORS[e], label=f"expert {e}") for e in range(k)]
    rest = ([Line2D([], [], color="0.3", lw=2.4, label="an expert's line where its gate owns the plane"),
             Line2D([], [], color="0.3", lw=1.0, ls="--", label="the same line elsewhere"), boundary]
            + [Line2D([], [], ls="none", marker=m, mfc="none", mec="k", label=f"test points, class {c}")
               for c, m in ((0, "o"), (1, "^"))])
    height = 5.2 * nrows + 0.9
    fig.legend(handles=experts, loc="lower center", bbox_to_anchor=(0.5, 0.45 / height), ncol=len(experts),
               fontsize=10, frameon=False, handlelength=1.2, columnspacing=1.0)
    fig.legend(handles=rest, loc="lower center", ncol=3, fontsize=10, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 1.0 / height, 1, 1))
    savefig(fig, args, f"local_experts_{name}.png")
    return titles


def regression(args, N, epochs, seeds, progress):
    """Cooperative vs competitive, 2 experts on the V, over seeds: the fit and the gate values along x
    (seed 0 drawn), test MSE and who owns each arm."""
    fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex=True, height_ratios=[2, 1])
    rows = []
    for col, mode in enumerate(("cooperative", "competitive")):
        mses, split, seconds = [], 0, []
        for seed in seeds:
            X_train, X_test, y_train, y_test = make_v_regression(N, seed=seed)
            scale = standardizer(X_train)
            mu, sd = y_train.mean(), y_train.std()
            model = LocalExperts(1, 1, 2, mode=mode, task="regression", seed=seed)
            t = time.perf_counter()
            fit_local_experts(model, scale(X_train), (y_train - mu) / sd, SGD(lr=0.3, decay=0.95), epochs,
                              batch_size=10, seed=seed, callback=progress.fit_callback(f"V regression, {mode}, "
                                                                                       f"seed {seed}"))
            seconds.append(time.perf_counter() - t)
            predict = lambda P, m=model, s=scale, mu=mu, sd=sd: m.forward(s(P))[:, 0] * sd + mu  # noqa: E731
            gate = lambda P, m=model, s=scale: m.gate(s(P))  # noqa: E731
            mses.append(float(((predict(X_test) - y_test) ** 2).mean()))
            arms = gate(np.array([[0.25], [0.75]]))  # (2 arms, 2 experts)
            split += int(arms[0].argmax() != arms[1].argmax())
            if seed == seeds[0]:
                experts = lambda P, m=model, s=scale, mu=mu, sd=sd: m.expert_outputs(s(P))[:, :, 0] * sd + mu  # noqa: E731
                plotting.plot_regression_fit(axes[0, col], axes[1, col], predict, gate, X_test, y_test, experts,
                                             title=f"{mode}, seed {seed}: test MSE {mses[-1]:.4f} "
                                                   "(noise variance 0.01)")
        mses = np.array(mses)
        rows.append(("V regression", (mode, 2, "SGD", f"{mses.mean():.4f} ± {mses.std():.4f} MSE",
                                      f"MSE {mses.min():.4f}-{mses.max():.4f}",
                                      f"arms split in {split} of {len(seeds)} seeds", float(np.mean(seconds)))))
    fig.suptitle("V-shaped regression, 2 linear experts (dashed), one per arm: the competitive gate switches "
                 "sharply\nat x = 0.5 and keeps the kink; the cooperative gate blends the lines and rounds it off")
    fig.tight_layout()
    savefig(fig, args, "local_experts_regression.png")
    return rows


CONFIGS = [  # (table name, data set, mode, k, optimiser)
    ("bands k=2", "bands", "competitive", 2, "SGD"),
    ("bands k=2", "bands", "competitive", 2, "FTRL"),
    ("circles k=2", "circles", "competitive", 2, "SGD"),
    ("circles k=2", "circles", "competitive", 2, "FTRL"),
    ("circles k=1", "circles", "competitive", 1, "FTRL"),
    ("circles k=4", "circles", "competitive", 4, "FTRL"),
    ("circles k=8", "circles", "competitive", 8, "FTRL"),
    ("circles k=4", "circles", "competitive", 4, "SGD"),
    ("circles k=4", "circles", "cooperative", 4, "FTRL"),
]
DATA = {"bands": make_bands, "circles": make_circles}


def main(argv=None):
    args = parse_args(argv, __doc__)
    N, epochs, seeds = (300, 3, [0]) if args.quick else (1000, 30, [0, 1, 2, 3, 4])
    reg_N, reg_epochs = (300, 5) if args.quick else (2000, 50)
    progress = Progress(len(seeds) * (len(CONFIGS) * epochs + 2 * reg_epochs), what="local_experts")
    t0 = time.perf_counter()
    runs = {}  # (name, mode, k, opt) -> [Run per seed]
    for name, data_name, mode, k, opt in CONFIGS:
        for seed in seeds:
            data = DATA[data_name](N, seed=seed)
            label = f"{data_name}, {mode}, k={k}, {opt}, seed {seed}"
            runs.setdefault((name, mode, k, opt), []).append(
                Run(data, mode, k, opt, epochs, seed=seed, callback=progress.fit_callback(label)))
    rows = [(name, summary(r)) for (name, *_), r in runs.items()]
    first = {key: r[0] for key, r in runs.items()}  # seed 0 draws the figures

    # 1-2. k = 2 competitive experts, SGD vs FTRL, on bands and on circles
    for name in ("bands", "circles"):
        pair = {opt: first[(f"{name} k=2", "competitive", 2, opt)] for opt in ("SGD", "FTRL")}
        title = (bands_title(pair) if name == "bands" else  # a fact of geometry: two half-planes, two lines
                 "Circles, 2 competitive linear experts: two lines cannot enclose the inner ring, "
                 "with either optimiser")
        optimiser_figure(args, DATA[name](N, seed=seeds[0]), pair, name, title)

    # 3. circles with k = 1, 2, 4, 8 competitive experts (FTRL)
    circles = make_circles(N, seed=seeds[0])
    ks = (1, 2, 4, 8)
    sweep = [first[(f"circles k={k}", "competitive", k, "FTRL")] for k in ks]
    regions_figure(args, circles, sweep, [f"k={k}" for k in ks], "k",
                   "Circles, competitive linear experts (FTRL): the class boundary (black) follows an expert's line\n"
                   "where it crosses that expert's own gate region, and the gate's borders between experts elsewhere")

    # 4. cooperative vs competitive: circles with k = 4, then the V-shaped regression
    regions_figure(args, circles, [first[("circles k=4", "cooperative", 4, "FTRL")], sweep[2]],
                   ["cooperative", "competitive"], "modes",
                   "Circles, 4 experts (FTRL): the competitive gate draws sharp borders between its experts;\n"
                   "cooperative experts overlap and blend their logits")
    rows += regression(args, reg_N, reg_epochs, seeds, progress)
    progress.done()

    print_table(rows, len(seeds))
    print(f"total {time.perf_counter() - t0:.1f} s")
    return rows


if __name__ == "__main__":
    main()
