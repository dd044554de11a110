"""Load balancing: a top-2 MoE collapses onto two experts without a differentiable balance loss.

Post 000's layer (4 ReLU-MLP experts, softmax gate, keep the top 2) followed by a linear classifier,
trained with Adam on the 8x8 digits. The pixels are scaled to [0, 1] and not centred, like the
non-negative conv features post 000 feeds its MoE: every sample shares a large common component, so
whichever experts the gate favours early win every sample ("rich get richer"). Five runs from the same
seed and the same batches, each adding or swapping one thing:

(a) no balance loss;
(b) post 000's loss 0.01 * std(counts / sum) - built from hard counts, its gradient is exactly zero, so
    (b) trains bit-for-bit like (a) (the script checks this);
(c) noise only: V-MoE noisy top-2 (noise std 1/E on the logits in training), no balance loss;
(d) the same noisy gate with the importance + load losses, 0.1 each;
(e) the Switch loss, 0.1, without noise.

Then a sweep of the loss weight w in {0, 1e-3, 1e-2, 0.1, 1}: the noisy gate with importance + load at
w each (w = 0 is (c)), and the Switch loss at w without noise (w = 0 is (a)).

Every run is repeated with five seeds (the initial weights, the noise and the batches; the split is
fixed). Balance is measured on the training set at the end (evaluation mode, no noise) from the
kept top-2 assignments per expert, load_e: MaxVio = max_e load_e / mean_e load_e - 1 (0 when balanced,
1 when two experts take everything, the most top-2 of 4 allows) and CV = std_e load_e / mean_e load_e
(sample std, ddof = 1). Figures: balance_shares.png, each expert's share of the assignments after
every epoch for seed 0 in runs (a)-(e); balance_sweep.png, MaxVio against the weight and test accuracy
against MaxVio, mean ± std over the seeds. The tables print the same numbers. Small experts (hidden 4)
make capacity matter.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from experiments._common import Progress, parse_args, savefig
from numpy_moe.backend import to_numpy
from numpy_moe.layers import Linear, Sequential
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam
from numpy_moe.plotting import EXPERT_COLORS
from numpy_moe.train import fit, predict

E, H = 4, 4
WEIGHTS = (0.0, 1e-3, 1e-2, 1e-1, 1.0)
NOISY_IL, SWITCH = "noisy gate, importance + load", "Switch loss, no noise"
ZERO = {NOISY_IL: "w = 0: (c) noise only", SWITCH: "w = 0: (a) no loss"}


def config(loss, weight):
    """MoE keyword arguments of one point of the sweep: ``loss`` NOISY_IL or SWITCH at ``weight``."""
    if loss == NOISY_IL:
        return dict(noise="vmoe", balance={"importance": weight, "load": weight}) if weight else dict(noise="vmoe")
    if loss == SWITCH:
        return dict(balance={"switch": weight}) if weight else {}
    raise ValueError(f"loss={loss!r} must be {NOISY_IL!r} or {SWITCH!r}")


RUNS = {
    "(a) no balance loss": config(SWITCH, 0.0),
    "(b) post-000 loss": dict(balance={"seed000": 0.01}),
    "(c) noise only": config(NOISY_IL, 0.0),
    "(d) noise + importance + load": config(NOISY_IL, 0.1),
    "(e) Switch loss": config(SWITCH, 0.1),
}


def imbalance(load):
    """(MaxVio, CV) of assignments per expert ``load`` (E,): max/mean - 1 and std (ddof = 1) / mean."""
    load = np.asarray(load, dtype=float)
    return float(load.max() / load.mean() - 1), float(load.std(ddof=1) / load.mean())


def digits(quick):
    X, y = load_digits(return_X_y=True)
    if quick:
        X, y = X[:400], y[:400]
    X_train, X_test, y_train, y_test = train_test_split(X / 16, y, test_size=0.25, random_state=0, stratify=y)
    return X_train, X_test, y_train, y_test


def train(kwargs, data, epochs, seed, callback=None):
    """Train one model; returns (model, shares per epoch (epochs + 1, E), test accuracy, final loads (E,))."""
    X_train, X_test, y_train, y_test = data
    moe = MoE(X_train.shape[1], H, E, hidden=H, seed=seed, top_k=2, **kwargs)
    model = Sequential(moe, Linear(H, 10, seed=seed))
    loads = []

    def record(*_):
        predict(model, X_train)  # evaluation mode: routing without noise
        loads.append(moe.diagnostics["samples_per_expert"])

    def after_epoch(epoch, net, history):
        record()
        if callback is not None:
            callback(epoch, net, history)

    record()
    fit(model, X_train, y_train, optimizer=Adam(0.01), epochs=epochs, batch_size=64, seed=seed, callback=after_epoch)
    accuracy = float((to_numpy(predict(model, X_test)).argmax(axis=1) == y_test).mean())
    loads = np.array(loads, dtype=float)
    return model, loads / loads.sum(axis=1, keepdims=True), accuracy, loads[-1]


def summary(runs):
    """Over the seeds of one setting: dict of arrays (seeds,) accuracy, maxvio, cv."""
    accuracy = np.array([r[2] for r in runs])
    maxvio, cv = np.array([imbalance(r[3]) for r in runs]).T
    return dict(accuracy=accuracy, maxvio=maxvio, cv=cv)


def main(argv=None):
    args = parse_args(argv, __doc__)
    epochs, seeds = (2, [0]) if args.quick else (30, [0, 1, 2, 3, 4])
    data = digits(args.quick)
    settings = dict(RUNS)  # every distinct setting once: the sweep's w = 0 points are (a) and (c)
    sweep = {loss: {w: next((name for name, kw in settings.items() if kw == config(loss, w)), None)
                    for w in WEIGHTS} for loss in (NOISY_IL, SWITCH)}
    for loss, points in sweep.items():
        for w, name in points.items():
            if name is None:
                points[w] = name = f"{loss}, w = {w:g}"
                settings[name] = config(loss, w)
    progress = Progress(len(settings) * len(seeds) * epochs, what="balance")
    results = {name: [train(kwargs, data, epochs, seed, progress.fit_callback(f"{name}, seed {seed}"))
                      for seed in seeds] for name, kwargs in settings.items()}
    progress.done()
    stats = {name: summary(runs) for name, runs in results.items()}

    diffs = []
    for (a, *_), (b, *_) in zip(results["(a) no balance loss"], results["(b) post-000 loss"]):
        diffs.append(max(float(np.abs(to_numpy(p) - to_numpy(q)).max())
                         for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters())))
    print(f"\nmax |parameter difference| between (a) and (b) after training, per seed: {diffs}")

    print(f"\nover seeds {seeds}, {epochs} epochs: test accuracy (mean ± std, min-max); at the end of training, on "
          "the training set,\nMaxVio and CV of the top-2 assignments per expert (mean ± std), the share taken by "
          "the two busiest experts and by the least used one (min-max)")
    print(f"{'run':<30} {'test accuracy':>15} {'(min-max)':>13} {'MaxVio':>12} {'CV':>12} {'two busiest':>12} "
          f"{'least used':>11}   final shares, seed {seeds[0]}")
    for name in RUNS:
        runs, s = results[name], stats[name]
        final = np.sort(np.array([r[1][-1] for r in runs]), axis=1)  # (seeds, E), ascending
        top2, least = final[:, -2:].sum(axis=1), final[:, 0]
        acc = s["accuracy"]
        print(f"{name:<30} {acc.mean():>7.3f} ± {acc.std():.3f} ({acc.min():.3f}-{acc.max():.3f}) "
              f"{s['maxvio'].mean():>5.2f} ± {s['maxvio'].std():.2f} {s['cv'].mean():>5.2f} ± {s['cv'].std():.2f} "
              f"{top2.min():>6.2f}-{top2.max():.2f} {least.min():>5.2f}-{least.max():.2f}   "
              + " ".join(f"{v:.2f}" for v in runs[0][1][-1]))

    print(f"\nsweep of the loss weight w (mean ± std over seeds {seeds})")
    print(f"{'loss':<32} {'w':>6} {'test accuracy':>15} {'MaxVio':>12} {'CV':>12}")
    for loss, points in sweep.items():
        for w, name in points.items():
            s = stats[name]
            print(f"{loss:<32} {w:>6g} {s['accuracy'].mean():>7.3f} ± {s['accuracy'].std():.3f} "
                  f"{s['maxvio'].mean():>5.2f} ± {s['maxvio'].std():.2f} "
                  f"{s['cv'].mean():>5.2f} ± {s['cv'].std():.2f}")

    plot_shares(results, seeds, args)
    plot_sweep(sweep, stats, seeds, args)
    return dict(results=results, stats=stats, sweep=sweep)


def idle_experts(run):
    """Experts with no assignment at the end of one run (train's tuple): their final share is 0."""
    return int((run[1][-1] == 0).sum())


def shares_title(results, seeds):
    """balance_shares.png's title: what seed ``seeds[0]`` of runs (a)-(e) shows, computed from the runs.

    The sentence the figure was made to show holds when (a) and (c) end with an idle expert, (b) ends with
    the very parameters of (a), and (d) and (e) keep every expert; otherwise the title lists the idle
    experts of each run instead of asserting it."""
    first = {name: results[name][0] for name in RUNS}
    a, b, c, d, e = RUNS
    same = all(np.array_equal(to_numpy(p), to_numpy(q)) for (_, p), (_, q)
               in zip(first[a][0].named_parameters(), first[b][0].named_parameters()))
    idle = {name: idle_experts(run) for name, run in first.items()}
    if idle[a] and same and idle[c] and not idle[d] and not idle[e]:
        return (f"Without a differentiable balance loss one expert gets no sample: post 000's loss changes nothing, "
                f"the noise alone\nis not enough; importance + load and Switch keep all four busy (seed {seeds[0]} "
                f"drawn; the table gives all {len(seeds)} seeds)")
    return (f"Each expert's share of the assignments per epoch (seed {seeds[0]} drawn; the table gives all "
            f"{len(seeds)} seeds);\nexperts with no sample at the end: "
            + ", ".join(f"{name[:3]} {idle[name]}" for name in RUNS)
            + f"; post 000's loss {'changes nothing' if same else 'changes the training'}")


def sweep_title(sweep, stats, seeds):
    """balance_sweep.png's title, computed from the sweep's statistics (mean over the seeds).

    "Balanced" is MaxVio under 0.5 (half way between even and two experts taking everything); the
    accuracy gap is the range over every balanced point (w >= 0.1) minus every collapsed one (w <= 1e-3),
    in percentage points."""
    mean = lambda loss, w, key: stats[sweep[loss][w]][key].mean()  # noqa: E731
    noise_balances = mean(NOISY_IL, 0.0, "maxvio") < 0.5
    loss_balances = all(mean(loss, 0.1, "maxvio") < 0.5 for loss in sweep)
    gaps = [100 * (mean(lb, wb, "accuracy") - mean(lc, wc, "accuracy"))
            for lb in sweep for wb in WEIGHTS if wb >= 0.1 for lc in sweep for wc in WEIGHTS if wc <= 1e-3]
    lo, hi = round(min(gaps), 1), round(max(gaps), 1)  # rounded first: 0.935 - 0.925 is 1 point, not 0.99...
    gap = (f"are {int(np.floor(lo))}-{int(np.ceil(hi))} points more accurate than" if lo > 0
           else f"differ by {lo:+.1f} to {hi:+.1f} points in accuracy from")
    return (f"Top-2 of 4 experts on the digits, {len(seeds)} seeds (mean ± std): the noise alone (w = 0) "
            f"{'balances' if noise_balances else 'does not balance'} the experts, a loss weight of 0.1 "
            f"{'does' if loss_balances else 'does not'};\nthe balanced runs (w >= 0.1) {gap} the collapsed ones "
            "(w <= 1e-3)")


def plot_shares(results, seeds, args):
    """balance_shares.png: each expert's share per epoch in runs (a)-(e), seed ``seeds[0]``; 2x3 panels."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(14, 8.5), sharey=True)
    for ax, name in zip(axes.flat, RUNS):
        shares, acc = results[name][0][1], results[name][0][2]
        for e in range(E):
            ax.plot(np.arange(len(shares)), shares[:, e], marker=".", color=EXPERT_COLORS[e], label=f"expert {e}")
        ax.axhline(1 / E, color="gray", lw=0.8, ls="--", label="balanced (1/E)")
        ax.set_title(f"{name}\nseed {seeds[0]}: test accuracy {acc:.3f}")
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 0.55)
    for ax in axes[:, 0]:
        ax.set_ylabel("share of top-2 assignments\n(training set)")
    legend_ax = axes.flat[-1]
    legend_ax.axis("off")
    legend_ax.legend(*axes.flat[0].get_legend_handles_labels(), loc="center")
    fig.suptitle(shares_title(results, seeds))
    fig.tight_layout()
    savefig(fig, args, "balance_shares.png")


def plot_sweep(sweep, stats, seeds, args):
    """balance_sweep.png: MaxVio against the weight; test accuracy against MaxVio (mean ± std)."""
    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5.5))
    colors = {NOISY_IL: "#1b9e77", SWITCH: "#d95f02"}
    x0 = WEIGHTS[1] / 10  # where w = 0 is drawn on the log axis
    xs = [w if w else x0 for w in WEIGHTS]
    for loss, points in sweep.items():
        s = [stats[points[w]] for w in WEIGHTS]
        mv_m, mv_s = np.array([p["maxvio"].mean() for p in s]), np.array([p["maxvio"].std() for p in s])
        acc_m, acc_s = np.array([p["accuracy"].mean() for p in s]), np.array([p["accuracy"].std() for p in s])
        ax.errorbar(xs, mv_m, yerr=mv_s, marker="o", capsize=3, color=colors[loss], label=f"{loss} ({ZERO[loss]})")
        bx.errorbar(mv_m, acc_m, xerr=mv_s, yerr=acc_s, fmt="o", capsize=3, color=colors[loss], label=loss,
                    elinewidth=1, alpha=0.85)
        for w, x, y in zip(WEIGHTS, mv_m, acc_m):
            bx.annotate(f"w={w:g}", (x, y), textcoords="offset points", xytext=(5, -15 if w in (0, 1) else 5),
                        fontsize=10, color=colors[loss])
    ax.set_xscale("log")
    ax.set_xticks(xs, ["0"] + [f"{w:g}" for w in WEIGHTS[1:]])
    ax.minorticks_off()
    ax.set_xlabel("balance-loss weight w (each of importance and load, or Switch)")
    ax.set_ylabel("MaxVio, training set, end of training")
    ax.set_ylim(-0.05, 1.1)
    ax.axhline(1, color="gray", lw=0.8, ls=":")
    ax.text(xs[0], 1.02, "two experts take everything", fontsize=10, color="gray")
    ax.set_title("balance against the loss weight")
    ax.legend(loc="lower left")
    bx.set_xlabel("MaxVio, training set, end of training")
    bx.set_ylabel("test accuracy")
    bx.set_title("accuracy against balance")
    bx.legend(loc="lower left")
    fig.suptitle(sweep_title(sweep, stats, seeds))
    fig.tight_layout()
    savefig(fig, args, "balance_sweep.png")


if __name__ == "__main__":
    main()
