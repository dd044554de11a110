"""Classic mixture of local experts (seed 003): SGD vs FTRL, k = 1..8, cooperative vs competitive.

Regenerates the study of seed 003 with the corrected model (MATH.md §5): linear experts and a softmax
gate on standardised inputs, trained online (one sample per step, shuffled each epoch) by the closed-form
rules, with SGD (lr 0.1, the seed's per-epoch decay 0.99) or FTRL-Proximal (the seed's α = 1, β = 0.2,
λ1 = λ2 = 0).

1. k = 2 competitive experts on the linear "bands": data, SGD and FTRL decision regions, test log-loss.
2. The same on the nonlinear "circles".
3. Circles with k = 1, 2, 4, 8 competitive experts (FTRL): decision regions above gate regions; plus a
   table over five seeds of k = 4 with SGD and with FTRL (SGD sometimes loses an expert).
4. Cooperative vs competitive: circles with k = 4, and the V-shaped regression with k = 2 (its targets
   standardised too, so the unit-variance likelihood of the competitive rule fits their scale; mini-batches
   of 10, SGD lr 0.3 with decay 0.95), drawn as the fit above the gate values along x.

Prints one row per run: final test log-loss in bits and accuracy, or test MSE in the targets' units.
"""
import time

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import parse_args, savefig
from numpy_moe import plotting
from numpy_moe.classic import LocalExperts, fit_local_experts
from numpy_moe.datasets import make_bands, make_circles, make_v_regression, standardizer
from numpy_moe.optim import FTRL, SGD

OPTIMISERS = {"SGD": lambda: SGD(lr=0.1, decay=0.99), "FTRL": lambda: FTRL(alpha=1.0, beta=0.2)}


class Run:
    """One trained classifier on standardised inputs, with callables on raw points for the plots."""

    def __init__(self, data, mode, k, opt, epochs, seed=0):
        X_train, X_test, y_train, y_test = data
        self.scale = standardizer(X_train)
        self.model = LocalExperts(2, 2, k, mode=mode, seed=seed)
        t = time.perf_counter()
        self.history = fit_local_experts(self.model, self.scale(X_train), y_train, OPTIMISERS[opt](), epochs,
                                         batch_size=1, seed=seed, X_test=self.scale(X_test), y_test=y_test)
        self.seconds = time.perf_counter() - t
        self.accuracy = float((self.model.predict(self.scale(X_test)) == y_test).mean())
        used = np.unique(self.gate(X_test).argmax(axis=1)).size  # experts whose gate wins some test point
        self.row = (mode, k, opt, f"{self.history['test'][-1]:.3f} bits", f"{self.accuracy:.3f}",
                    f"{used} of {k} experts used", self.seconds)

    def predict(self, P):
        return self.model.predict(self.scale(P))

    def gate(self, P):
        return self.model.gate(self.scale(P))


def print_table(rows):
    head = (f"{'run':<18} {'mode':<12} {'k':>2} {'optimiser':<9} {'test loss':>12} {'accuracy':>9} "
            f"{'note':<34} {'s':>5}")
    print(head + "\n" + "-" * len(head))
    for name, (mode, k, opt, loss, acc, note, seconds) in rows:
        print(f"{name:<18} {mode:<12} {k:>2} {opt:<9} {loss:>12} {acc:>9} {note:<34} {seconds:>5.1f}")


def optimiser_figure(args, data, runs, name, title):
    """Data, SGD regions, FTRL regions, test log-loss per epoch for one dataset."""
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    plotting.plot_data(axes[0], data[0], data[2], title=f"{name}: training data")
    for ax, opt in zip(axes[1:3], ("SGD", "FTRL")):
        plotting.plot_decision_regions(ax, runs[opt].predict, data[1], data[3],
                                       title=f"{opt}: test accuracy {runs[opt].accuracy:.3f}")
    plotting.plot_loss_curves(axes[3], {opt: runs[opt].history["test"] for opt in ("SGD", "FTRL")},
                              title="test log-loss per epoch (log scale)")
    axes[3].set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    savefig(fig, args, f"local_experts_{name}.png")


def regions_figure(args, data, runs, labels, name, title):
    """Decision regions (top) and gate regions (bottom), one column per run."""
    fig, axes = plt.subplots(2, len(runs), figsize=(4.6 * len(runs), 8.6), squeeze=False)
    for col, (run, label) in enumerate(zip(runs, labels)):
        plotting.plot_decision_regions(axes[0, col], run.predict, data[1], data[3],
                                       title=f"{label}: test accuracy {run.accuracy:.3f}")
        plotting.plot_gate_regions(axes[1, col], run.gate, data[1], data[3], title=f"{label}: gate regions")
    fig.suptitle(title)
    fig.tight_layout()
    savefig(fig, args, f"local_experts_{name}.png")


def regression(args, N, epochs):
    """Cooperative vs competitive, 2 experts on the V: the fit and the gate values along x."""
    X_train, X_test, y_train, y_test = make_v_regression(N, seed=0)
    scale = standardizer(X_train)
    mu, sd = y_train.mean(), y_train.std()
    fig, axes = plt.subplots(2, 2, figsize=(12, 6.5), sharex=True, height_ratios=[2, 1])
    rows = []
    for col, mode in enumerate(("cooperative", "competitive")):
        model = LocalExperts(1, 1, 2, mode=mode, task="regression", seed=0)
        t = time.perf_counter()
        fit_local_experts(model, scale(X_train), (y_train - mu) / sd, SGD(lr=0.3, decay=0.95), epochs,
                          batch_size=10, seed=0)
        seconds = time.perf_counter() - t
        predict = lambda P, m=model: m.forward(scale(P))[:, 0] * sd + mu  # noqa: E731
        gate = lambda P, m=model: m.gate(scale(P))  # noqa: E731
        experts = lambda P, m=model: m.expert_outputs(scale(P))[:, :, 0] * sd + mu  # noqa: E731
        mse = float(((predict(X_test) - y_test) ** 2).mean())
        arms = gate(np.array([[0.25], [0.75]]))  # (2 arms, 2 experts)
        owners = "; ".join(f"x={x}: e{a.argmax()} g={a.max():.2f}" for x, a in zip((0.25, 0.75), arms))
        plotting.plot_regression_fit(axes[0, col], axes[1, col], predict, gate, X_test, y_test, experts,
                                     title=f"{mode}: test MSE {mse:.4f} (noise variance 0.01)")
        rows.append(("V regression", (mode, 2, "SGD", f"{mse:.4f} MSE", "-", owners, seconds)))
    fig.suptitle("V-shaped regression, 2 linear experts, one per arm: the competitive gate switches sharply "
                 "at x = 0.5 and keeps the kink; the cooperative gate blends the lines and rounds it off")
    fig.tight_layout()
    savefig(fig, args, "local_experts_regression.png")
    return rows


def main(argv=None):
    args = parse_args(argv, __doc__)
    N, epochs, seeds = (300, 3, 1) if args.quick else (1000, 30, 5)
    t0 = time.perf_counter()
    rows = []

    # 1-2. k = 2 competitive experts, SGD vs FTRL, on bands and on circles
    circles = make_circles(N, seed=0)
    pair = {}
    for name, data, title in [
        ("bands", make_bands(N, seed=0),
         "Bands, 2 competitive linear experts: both optimisers separate the classes; "
         "FTRL's log-loss falls faster"),
        ("circles", circles,
         "Circles, 2 competitive linear experts: two lines cannot enclose the inner ring, "
         "with either optimiser"),
    ]:
        runs = pair[name] = {opt: Run(data, "competitive", 2, opt, epochs) for opt in ("SGD", "FTRL")}
        rows += [(f"{name} k=2", runs[opt].row) for opt in ("SGD", "FTRL")]
        optimiser_figure(args, data, runs, name, title)

    # 3. circles with k = 1, 2, 4, 8 competitive experts (FTRL)
    ks = (1, 2, 4, 8)
    sweep = [Run(circles, "competitive", k, "FTRL", epochs) if k != 2 else pair["circles"]["FTRL"]
             for k in ks]
    rows += [(f"circles k={k}", run.row) for k, run in zip(ks, sweep) if k != 2]  # k = 2 is listed above
    regions_figure(args, circles, sweep, [f"k={k}" for k in ks], "k",
                   "Circles, competitive linear experts (FTRL): each expert draws one line in its own gate "
                   "region; k = 4 enclose the inner ring")

    # ... and k = 4 over several seeds: SGD sometimes loses an expert for good; FTRL's per-coordinate
    # rates keep every expert learning
    for opt in ("SGD", "FTRL"):
        for seed in range(1, seeds + 1):
            run = Run(make_circles(N, seed=seed), "competitive", 4, opt, epochs, seed=seed)
            rows.append((f"circles seed {seed}", run.row))

    # 4. cooperative vs competitive: circles with k = 4, then the V-shaped regression
    cooperative = Run(circles, "cooperative", 4, "FTRL", epochs)
    rows.append(("circles k=4", cooperative.row))
    regions_figure(args, circles, [cooperative, sweep[2]], ["cooperative", "competitive"], "modes",
                   "Circles, 4 experts (FTRL): competitive experts own one sector each; "
                   "cooperative experts overlap and blend their logits")
    rows += regression(args, 300 if args.quick else 2000, 5 if args.quick else 50)

    print_table(rows)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
