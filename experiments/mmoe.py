"""MMoE (Ma et al. 2018) on their synthetic two-task data: shared-bottom vs OMoE vs MMoE by task correlation.

The data of Ma et al. §4.2: orthogonal unit vectors u1, u2 in R^100, w1 = c u1,
w2 = c (p u1 + sqrt(1 - p²) u2), x ~ N(0, I_100), and for each task
y_t = w_tᵀx + Σ_{j=1..10} sin(α_j w_tᵀx + β_j) + ε_t, ε_t ~ N(0, 0.01), c = 1. The cosine p of the two
task weights controls how related the tasks are (p = 1: the same task up to noise). The paper gives no
values for α_j, β_j; here they are drawn N(0, 1) once, from seed 2018, and kept for every data seed (a
fresh draw per seed changes the difficulty of the task more than the models differ).

Models, as in the paper: 8 experts of one ReLU layer of 16 units and towers of one ReLU layer of 8
units for MMoE (a gate per task) and OMoE (one gate), gates starting uniform (zero weights: with random
gate weights on 100 inputs every sample starts routed to an arbitrary expert and the experts overfit);
the shared-bottom model's bottom layer is as wide as gives it MMoE's parameter count (the table prints
the counts). Adam (lr 0.003), batches of 128, 12 epochs, 10000 training and 2000 test samples, the
targets standardised with the training set's statistics.
The figure shows the test MSE (mean of the two tasks, in standardised units) against p, mean ± std
over five seeds, and the test MSE along training for p = 0.5.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Progress, parse_args, savefig
from numpy_moe.models.mmoe import MMoE, SharedBottom
from numpy_moe.optim import Adam
from numpy_moe.train import fit, predict

CORRELATIONS = (0.5, 0.9, 1.0)
MODELS = ("shared-bottom", "OMoE", "MMoE")


def make_tasks(n, p, seed, d=100, m=10, c=1.0):
    """x (n, d) and targets (n, 2) of Ma et al.'s synthetic data with task-weight cosine p."""
    alpha, beta = np.random.default_rng(2018).standard_normal((2, m))
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((d, 2)))[0].T  # two orthonormal rows
    w = np.stack([c * u[0], c * (p * u[0] + np.sqrt(1 - p ** 2) * u[1])])  # (2, d)
    x = rng.standard_normal((n, d))
    s = x @ w.T  # (n, 2)
    y = s + np.sin(alpha * s[:, :, None] + beta).sum(axis=2) + 0.1 * rng.standard_normal((n, 2))
    return x, y


def build(name, d, seed):
    if name == "shared-bottom":
        target = MMoE(d, seed=0).n_parameters()
        bottom = round((target - 2 * 17) / (d + 1 + 2 * 8))  # bottom (d + 1) + towers 2 (8 bottom + 8 + 9)
        return SharedBottom(d, bottom=bottom, seed=seed)
    return MMoE(d, gates="multi" if name == "MMoE" else "one", seed=seed)


def main(argv=None):
    args = parse_args(argv, __doc__)
    seeds = range(2 if args.quick else 5)
    n_train, n_test, epochs = (500, 200, 1) if args.quick else (10000, 2000, 12)
    results = {(name, p): [] for name in MODELS for p in CORRELATIONS}
    curves = {name: [] for name in MODELS}
    counts = {}
    progress = Progress(len(CORRELATIONS) * len(seeds) * len(MODELS) * epochs, what="mmoe")
    for p in CORRELATIONS:
        for s in seeds:
            x, y = make_tasks(n_train + n_test, p, seed=s)
            mean, std = y[:n_train].mean(axis=0), y[:n_train].std(axis=0)
            y = (y - mean) / std
            x_tr, y_tr, x_te, y_te = x[:n_train], y[:n_train], x[n_train:], y[n_train:]
            for name in MODELS:
                model = build(name, x.shape[1], seed=100 + s)
                counts[name] = model.n_parameters()
                curve = []
                fit(model, x_tr, y_tr, loss="mse", optimizer=Adam(0.003), epochs=epochs, batch_size=128, seed=s,
                    callback=progress.fit_callback(f"p = {p}, seed {s}, {name}", then=lambda ep, m, h: curve.append(
                        float(((predict(m, x_te) - y_te) ** 2).mean()))))
                results[name, p].append(curve[-1])
                if p == CORRELATIONS[0]:
                    curves[name].append(curve)
    progress.done()
    print(f"\nMa et al.'s synthetic tasks: test MSE (standardised targets, mean of 2 tasks), {len(seeds)} seeds")
    print(f"{'model':<14} {'parameters':>10} " + " ".join(f"{'p = ' + str(p):>17}" for p in CORRELATIONS))
    for name in MODELS:
        cells = " ".join(f"{np.mean(results[name, p]):>8.4f} ± {np.std(results[name, p]):.4f}" for p in CORRELATIONS)
        print(f"{name:<14} {counts[name]:>10} {cells}")
    for a, b in (("MMoE", "OMoE"), ("MMoE", "shared-bottom"), ("OMoE", "shared-bottom")):
        cells = " ".join(f"{np.mean(d):>+8.4f} ± {np.std(d):.4f}" for d in
                         (np.subtract(results[a, p], results[b, p]) for p in CORRELATIONS))
        print(f"{a + ' - ' + b:<25} {cells}   (paired by seed)")

    fig, (ax, axc) = plt.subplots(1, 2, figsize=(12, 5.4))
    for i, name in enumerate(MODELS):
        m = [np.mean(results[name, p]) for p in CORRELATIONS]
        sd = [np.std(results[name, p]) for p in CORRELATIONS]
        ax.errorbar(np.arange(len(CORRELATIONS)) + (i - 1) * 0.08, m, yerr=sd, marker="o", capsize=4,
                    label=f"{name} ({counts[name]} parameters)")
        c = np.array(curves[name])
        axc.plot(np.arange(1, c.shape[1] + 1), c.mean(axis=0), label=name)
        axc.fill_between(np.arange(1, c.shape[1] + 1), c.mean(axis=0) - c.std(axis=0),
                         c.mean(axis=0) + c.std(axis=0), alpha=0.2)
    ax.set_xticks(range(len(CORRELATIONS)), [f"p = {p}" for p in CORRELATIONS])
    ax.set_xlabel("cosine of the two tasks' weight vectors")
    ax.set_ylabel("test MSE after training (mean ± std over seeds)")
    ax.set_title("test MSE by task relatedness\n(lower is better)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1, fontsize=10)
    ax.grid(alpha=0.3)
    axc.set_yscale("log")
    axc.set_xlabel("epoch")
    axc.set_ylabel("test MSE (log scale)")
    axc.set_title(f"p = {CORRELATIONS[0]}: test MSE along training\n(mean ± std over seeds)")
    axc.legend()
    axc.grid(alpha=0.3)
    gap = [np.mean(np.subtract(results["MMoE", p], results["OMoE", p])) for p in CORRELATIONS]
    beats = all(np.mean(results[m, p]) < np.mean(results["shared-bottom", p]) for m in MODELS[1:] for p in CORRELATIONS)
    fig.suptitle(f"Same parameter budget, {len(seeds)} seeds: " +
                 ("both MoE models beat shared-bottom at every p;\n" if beats else "\n") +
                 "MMoE minus OMoE " + ", ".join(f"{g:+.4f}" for g in gap) + " (p = " +
                 ", ".join(map(str, CORRELATIONS)) + ")")
    fig.tight_layout()
    savefig(fig, args, "mmoe.png")


if __name__ == "__main__":
    main()
