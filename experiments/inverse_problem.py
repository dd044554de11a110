"""Bishop's inverse problem: a mixture of experts fitted by EM shows the multi-valued conditional.

PRML §5.6 (Fig. 5.19) and §14.5.3: t ~ U(0, 1), x = t + 0.3 sin(2πt) + U(-0.1, 0.1) noise, and the task is
to predict t from x. Between x ≈ 0.35 and 0.65 three values of t fit the same x, so a least-squares
regressor, which predicts the conditional mean, runs through the middle where there is no data. A
mixture of 3 Gaussian experts under a softmax gate (numpy_moe.hme, EM, best of 3 starts by training
log-likelihood) models p(t | x) itself: each expert takes one branch, the gate says where each branch
exists, and the conditional mode (the t of largest density at each x) follows the data. Experts and gate
see the cubic features (x, x², x³), standardised, so a branch may bend.

The figure: the data, each expert's mean drawn where its gate weight exceeds 0.1, the conditional mode,
the least-squares fit (one Gaussian expert on the same features, a cubic in x); the gates along x below. The table:
test log-likelihood per sample of 1, 2, 3 and 5 experts over five seeds (mean ± std).
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
from numpy_moe.hme import HierarchicalMoE, fit_em, init_responsibilities
from numpy_moe.plotting import EXPERT_COLORS


def make_inverse(n, seed):
    """x (n,), t (n,) of Bishop's inverse problem."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, 1, n)
    return t + 0.3 * np.sin(2 * np.pi * t) + rng.uniform(-0.1, 0.1, n), t


def features(x):
    """(x, x², x³), centred and scaled with constants fixed for x in [-0.1, 1.1]."""
    z = (np.asarray(x) - 0.5) / 0.35
    return np.column_stack([z, z ** 2, z ** 3])


def fit(x, t, n_experts, seed, restarts, iters, progress=None):
    """The best of ``restarts`` EM runs by training log-likelihood; ``progress`` (an
    ``experiments._common.Progress``) counts ``iters`` steps per run, a run that converges early included."""
    X = features(x)
    best = None
    for r in range(restarts):
        model = HierarchicalMoE(3, 1, n_experts, seed=100 * seed + r)
        model.m_step(X, t, init_responsibilities(X, t, n_experts, seed=100 * seed + r))
        label = f"{n_experts} expert{'s' if n_experts > 1 else ''}, seed {seed}, start {r + 1} of {restarts}"
        step = None if progress is None else lambda i, m, label=label: progress.step(f"{label}: EM iteration {i}")
        history = fit_em(model, X, t, max_iter=iters, tol=1e-9, callback=step)
        if progress is not None and history["n_iter"] < iters:  # converged early: count the iterations it skipped
            progress.step(f"{label}: converged after {history['n_iter']} EM iterations", n=iters - history["n_iter"])
        if best is None or model.log_likelihood(X, t) > best.log_likelihood(X, t):
            best = model
    return best


def conditional_density(model, xs, ts):
    """p(t | x) on the grid (len(ts), len(xs))."""
    X = features(xs)
    prior, mean = model.gate(X), model.expert_outputs(X)[:, :, 0]  # (M, E)
    sd = np.exp(model.params["log_var"] / 2)
    dens = prior[None] * np.exp(-0.5 * ((ts[:, None, None] - mean[None]) / sd) ** 2) / (np.sqrt(2 * np.pi) * sd)
    return dens.sum(axis=2)


def main(argv=None):
    args = parse_args(argv, __doc__)
    seeds = range(2 if args.quick else 5)
    n, restarts, iters = (300, 2, 60) if args.quick else (1000, 3, 300)
    counts = (1, 3) if args.quick else (1, 2, 3, 5)
    scores = {E: [] for E in counts}
    shown = {}
    progress = Progress(len(seeds) * sum(restarts if E > 1 else 1 for E in counts) * iters, what="inverse_problem")
    for s in seeds:
        x, t = make_inverse(n, s)
        xt, tt = make_inverse(2000, 1000 + s)
        for E in counts:
            model = fit(x, t, E, s, restarts if E > 1 else 1, iters, progress)
            scores[E].append(model.log_likelihood(features(xt), tt) / len(tt))
            if s == 0:
                shown[E] = model
    progress.done()
    print(f"\nBishop's inverse problem: test log-likelihood per sample of t given x ({len(scores[1])} seeds)")
    for E in counts:
        print(f"  {E} expert{'s' if E > 1 else ' '}  {np.mean(scores[E]):7.3f} ± {np.std(scores[E]):.3f}")

    x, t = make_inverse(n, 0)
    mix, single = shown[3], shown[1]
    xs, ts = np.linspace(-0.1, 1.1, 241), np.linspace(-0.1, 1.1, 481)
    X = features(xs)
    prior, mean = mix.gate(X), mix.expert_outputs(X)[:, :, 0]
    mode = ts[conditional_density(mix, xs, ts).argmax(axis=0)]
    fig, (ax, axg) = plt.subplots(2, 1, figsize=(8, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.scatter(x, t, s=5, color="0.6", label="data")
    for e in range(3):
        m = np.where(prior[:, e] > 0.1, mean[:, e], np.nan)
        ax.plot(xs, m, color=EXPERT_COLORS[e], lw=2, label=f"expert {e + 1} mean (gate > 0.1)")
    ax.plot(xs, mode, "k.", ms=3, zorder=5, label="mixture's conditional mode")
    ax.plot(xs, single.forward(X)[:, 0], "k--", lw=2, label="least squares (1 expert)")
    ax.set_ylim(-0.1, 1.1)
    ax.set_ylabel("t")
    ax.legend(loc="upper left", fontsize=10)
    ax.set_title(f"Predict t from x: 3 experts by EM follow the three branches (test log-lik "
                 f"{np.mean(scores[3]):.2f} ± {np.std(scores[3]):.2f});\nleast squares averages them "
                 f"({np.mean(scores[1]):.2f} ± {np.std(scores[1]):.2f} per sample, {len(scores[1])} seeds)")
    for e in range(3):
        axg.plot(xs, prior[:, e], color=EXPERT_COLORS[e], lw=2, label=f"gate {e + 1}")
    axg.set_xlabel("x = t + 0.3 sin(2πt) + noise")
    axg.set_ylabel("gate weight")
    axg.legend(fontsize=10)
    fig.tight_layout()
    savefig(fig, args, "inverse_problem.png")


if __name__ == "__main__":
    main()
