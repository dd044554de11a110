"""EM for mixtures of experts: EM vs gradient training, a task that needs the tree, R's mixtools.

1. EM against full-batch Adam (lr 0.05) on the negative log-likelihood of the same mixture from the same
   start (the M-step of spatially coherent random responsibilities): the V regression (2 linear-Gaussian
   experts) and the circles (4 softmax experts, standardised inputs, 5% of the labels flipped so that the
   maximum likelihood is finite; the rings alone are separable and both methods would chase it to
   infinity). EM with ridge 1e-6 (negligible here; Adam has none). Training
   log-likelihood per sample against iterations and against seconds, five seeds each; the table gives
   the final value and the iterations and seconds to come within 1e-3 nats per sample of EM's final value.
2. A task that needs the tree: y is a different linear function of x in each of four regions cut
   "staggered" (x1 < 0 split at x2 = 0.5, x1 > 0 split at x2 = -0.5). A two-level [2, 2] HME represents
   this partition exactly; a flat softmax gate over 4 experts only approximates it (its regions are the
   cells of one argmax of affine functions, whose two vertical boundaries line up only in the limit of
   infinitely sharp gates). Test log-likelihood and MSE over five seeds, each model the best of 6 EM
   starts by training log-likelihood (the tree has worse local optima: one start in three or so).
3. R's mixtools::hmeEM on its NOdata example (the committed fixture of experiments/r/hme_mixtools.R):
   numpy_moe's EM from the same start, and the differences.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import json
import time

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Progress, parse_args, savefig
from numpy_moe.datasets import make_circles, make_v_regression, standardizer
from numpy_moe.hme import HierarchicalMoE, fit_em, init_responsibilities
from numpy_moe.optim import Adam
from numpy_moe.plotting import EXPERT_COLORS

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "hme_mixtools.json"


def start(x, y, tree, expert, seed, ridge):
    O = int(y.max()) + 1 if expert == "softmax" else 1
    model = HierarchicalMoE(x.shape[1], O, tree, expert=expert, seed=seed)
    h = init_responsibilities(x, y, model.n_experts, seed=seed,
                              task="classification" if expert == "softmax" else "regression")
    model.m_step(x, y, h, ridge)
    return model


def tick(progress, detail):
    """Count one step of ``progress`` (None: nothing)."""
    if progress is not None:
        progress.step(detail)


def run_em(model, x, y, iters, ridge, progress=None, label=""):
    t0, times = time.perf_counter(), [0.0]

    def callback(it, m):
        times.append(time.perf_counter() - t0)
        tick(progress, f"{label}: EM iteration {it}")

    history = fit_em(model, x, y, max_iter=iters, tol=0, ridge=ridge, callback=callback)
    return np.array(history["log_likelihood"]) / len(y), np.array(times)


def run_adam(model, x, y, iters, lr=0.05, progress=None, label=""):
    opt, lls, times, t0 = Adam(lr), [model.log_likelihood(x, y) / len(y)], [0.0], time.perf_counter()
    for it in range(iters):
        model.nll_grads(x, y)
        opt.step(model)
        times.append(time.perf_counter() - t0)
        lls.append(model.log_likelihood(x, y) / len(y))  # evaluation included in the time, as for EM
        tick(progress, f"{label}: Adam step {it + 1}")
    return np.array(lls), np.array(times)


def fmt(v, digits):
    """mean ± std of the finite entries of v, or "never" when there is none."""
    return f"{np.nanmean(v):.{digits}f} ± {np.nanstd(v):.{digits}f}" if np.isfinite(v).any() else "never"


def reach(curve, times, target):
    """Iterations and seconds until curve >= target (None if never)."""
    hit = np.nonzero(curve >= target)[0]
    return (int(hit[0]), float(times[hit[0]])) if hit.size else (None, None)


def gradient_iters(args):
    """EM iterations and Adam steps per run of part 1."""
    return (15, 60) if args.quick else (100, 2000)


def tree_sizes(args):
    """Training samples, EM iterations (at most) and starts per model of part 2."""
    return (300, 30, 2) if args.quick else (1000, 300, 6)


def gradient_title(rows, adam_iters, n_seeds):
    """em_vs_gradient.png's title from the runs' rows (problem, seed, EM final, Adam final, EM iterations,
    EM seconds, Adam iterations, Adam seconds; iterations None when never within 1e-3 of EM's final):
    how fast EM gets there and whether Adam does, computed rather than assumed."""
    em = max(r[4] for r in rows)
    reached = sum(r[6] is not None for r in rows)
    em_text = "in tens of iterations" if 10 <= em < 100 else f"within {em} iterations"
    adam_text = (f"full-batch Adam is still short of it after {adam_iters} steps" if not reached else
                 f"full-batch Adam gets within 1e-3 of it in {reached} of {len(rows)} runs of {adam_iters} steps")
    return f"EM reaches its maximum {em_text}; {adam_text} (same model, same start; {n_seeds} seeds)"


def em_vs_gradient(args, seeds, progress=None):
    problems = {}
    Xv, _, yv, _ = make_v_regression(300 if args.quick else 600, seed=0, noise=0.1)
    Xc, _, yc, _ = make_circles(300 if args.quick else 600, seed=0)
    problems["V regression, 2 Gaussian experts"] = (Xv, yv, 2, "gaussian", 1e-6)
    flip = np.random.default_rng(1).random(len(yc)) < 0.05
    problems["circles (5% flipped), 4 softmax"] = (standardizer(Xc)(Xc), np.where(flip, 1 - yc, yc), 4, "softmax", 1e-6)
    em_iters, adam_iters = gradient_iters(args)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    rows = []
    for col, (name, (x, y, tree, expert, ridge)) in enumerate(problems.items()):
        for s in seeds:
            label = f"{name}, seed {s}"
            em_ll, em_t = run_em(start(x, y, tree, expert, s, ridge), x, y, em_iters, ridge, progress, label)
            ad_ll, ad_t = run_adam(start(x, y, tree, expert, s, ridge), x, y, adam_iters, progress=progress,
                                   label=label)
            target = em_ll[-1] - 1e-3
            rows.append((name, s, em_ll[-1], ad_ll[-1], *reach(em_ll, em_t, target), *reach(ad_ll, ad_t, target)))
            for ax, t_em, t_ad in ((axes[0, col], np.arange(len(em_ll)), np.arange(len(ad_ll))),
                                   (axes[1, col], em_t, ad_t)):
                ax.plot(np.maximum(t_em, 1e-4) if ax is axes[1, col] else t_em + 1, em_ll, color="C0", lw=1,
                        label="EM" if s == seeds[0] else None)
                ax.plot(np.maximum(t_ad, 1e-4) if ax is axes[1, col] else t_ad + 1, ad_ll, color="C3", lw=1,
                        label="Adam (lr 0.05)" if s == seeds[0] else None)
        lo = min(r[2] for r in rows if r[0] == name)
        for row, xlabel in ((0, "iteration + 1 (log scale)"), (1, "seconds (log scale)")):
            ax = axes[row, col]
            ax.set_xscale("log")
            ax.set_ylim(lo - (1.0 if expert == "gaussian" else 0.5), max(r[2] for r in rows if r[0] == name) + 0.1)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("training log-likelihood per sample")
            ax.set_title(f"{name}" if row == 0 else f"{name}: against time")
            ax.legend()
            ax.grid(alpha=0.3)
    fig.suptitle(gradient_title(rows, adam_iters, len(seeds)))
    fig.tight_layout()
    savefig(fig, args, "em_vs_gradient.png")
    print(f"\n{'problem':<34} {'EM final':>13} {'Adam final':>13} {'EM iters':>9} {'EM s':>7} "
          f"{'Adam iters':>11} {'Adam s':>7}   (to within 1e-3 of EM's final; mean ± std over seeds)")
    for name in problems:
        r = [row for row in rows if row[0] == name]

        def col(i):
            return np.array([row[i] if row[i] is not None else np.nan for row in r], dtype=float)

        missed = int(np.isnan(col(6)).sum())
        print(f"{name:<34} {fmt(col(2), 3):>13} {fmt(col(3), 3):>13} {fmt(col(4), 0):>9} {fmt(col(5), 2):>7} "
              f"{fmt(col(6), 0):>11} {fmt(col(7), 2):>7}" + (f"  (Adam never within 1e-3 in {missed} runs)"
                                                             if missed else ""))


def staggered(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 2))
    region = np.where(x[:, 0] < 0, (x[:, 1] > 0.5).astype(int), 2 + (x[:, 1] > -0.5).astype(int))
    coef = np.array([[1.0, 0.5, 1.0], [-1.0, 1.0, -1.0], [0.5, -1.0, 0.0], [-0.5, -0.5, 2.0]])
    y = (np.column_stack([x, np.ones(n)]) * coef[region]).sum(axis=1) + 0.1 * rng.standard_normal(n)
    return x, y, region


def best_of(x, y, tree, seed, restarts, iters, progress=None, label=""):
    """The best of ``restarts`` EM runs by training log-likelihood; ``progress`` counts ``iters`` steps
    per run (the iterations left when EM converges early are counted at the end)."""
    models = []
    for r in range(restarts):
        m = start(x, y, tree, "gaussian", 100 * seed + r, 1e-6)
        history = fit_em(m, x, y, max_iter=iters, tol=1e-9,
                         callback=lambda it, _: tick(progress, f"{label}, start {r + 1}: EM iteration {it}"))
        if progress is not None and history["n_iter"] < iters:
            progress.step(f"{label}, start {r + 1}: converged after {history['n_iter']} EM iterations",
                          n=iters - history["n_iter"])
        models.append(m)
    return max(models, key=lambda m: m.log_likelihood(x, y))


def tree_title(floor, gap):
    """em_tree.png's title from the true model's expected log-likelihood ``floor`` and the mean test
    log-likelihood of the HME minus the flat gate's, ``gap``: which comes closer is computed, not assumed."""
    closer = (f"the two-level HME comes closer\nto the true model's log-likelihood ({floor:.3f} per sample), by "
              f"{gap:.3f} on average" if gap > 0 else
              f"the flat gate comes as close or closer\nto the true model's log-likelihood ({floor:.3f} per "
              f"sample): HME minus flat {gap:+.3f} on average")
    return f"A staggered partition: both gates approximate it; {closer}"


def tree_study(args, seeds, progress=None):
    n, iters, restarts = tree_sizes(args)
    results = {"flat, 4 experts": [], "HME [2, 2]": []}
    shown = {}
    for s in seeds:
        x, y, _ = staggered(n, s)
        xt, yt, region_t = staggered(500 if args.quick else 2000, 1000 + s)
        for name, tree in (("flat, 4 experts", 4), ("HME [2, 2]", [2, 2])):
            m = best_of(x, y, tree, s, restarts, iters, progress, f"{name}, seed {s}")
            mse = float(((m.forward(xt)[:, 0] - yt) ** 2).mean())
            results[name].append((m.log_likelihood(xt, yt) / len(yt), mse))
            if s == seeds[0]:
                shown[name] = (m, xt, region_t)
    floor = -0.5 * np.log(2 * np.pi * 0.01) - 0.5  # E log N(ε; 0, 0.1²): the true model's expected value
    print(f"\nstaggered regions (noise std 0.1, {len(seeds)} seeds): test log-likelihood per sample (the true "
          f"model: {floor:.3f}), test MSE (noise: 0.0100)")
    for name, r in results.items():
        r = np.array(r)
        print(f"  {name:<16} {r[:, 0].mean():7.3f} ± {r[:, 0].std():.3f}   "
              f"MSE {r[:, 1].mean():.4f} ± {r[:, 1].std():.4f}")
    fig, axes = plt.subplots(1, 3, figsize=(13, 5.4))
    m, xt, region_t = shown["HME [2, 2]"]
    colors = np.array(EXPERT_COLORS)
    axes[0].scatter(xt[:, 0], xt[:, 1], c=colors[region_t], s=6)
    axes[0].set_title(f"test points by true region\n(each its own linear function,\nseed {seeds[0]})")
    for ax, name in zip(axes[1:], results):
        m, xt, _ = shown[name]
        owner = m.gate(xt).argmax(axis=1)
        ax.scatter(xt[:, 0], xt[:, 1], c=colors[owner % len(colors)], s=6)
        r = np.array(results[name])
        ax.set_title(f"{name}: expert of largest prior\n(colour = expert, seed {seeds[0]}); test log-lik\n"
                     f"{r[:, 0].mean():.2f} ± {r[:, 0].std():.2f} per sample ({len(seeds)} seeds)")
    for ax in axes:
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_aspect("equal")
    gap = np.mean([r[0] for r in results["HME [2, 2]"]]) - np.mean([r[0] for r in results["flat, 4 experts"]])
    fig.suptitle(tree_title(floor, gap))
    fig.tight_layout()
    savefig(fig, args, "em_tree.png")


def em_on_mixtools_example(d):
    """numpy_moe's EM from hmeEM's starting values (regmixEM's β and σ, gate weights 0), to convergence."""
    x, y = np.array(d["x"])[:, None], np.array(d["y"])
    model = HierarchicalMoE(1, 1, 2)
    start = np.array(d["start_beta"])  # (k, 2): intercept, slope (mixtools' β column per expert)
    model.params["V"][:, 0, 0], model.params["V"][:, 1, 0] = start[:, 1], start[:, 0]  # numpy_moe: bias last
    model.params["log_var"][...] = 2 * np.log(d["start_sigma"])
    model.params["G0"][...] = 0
    start_ll = model.log_likelihood(x, y)
    history = fit_em(model, x, y, max_iter=2000, tol=1e-13, ridge=0)
    return model, x, y, start_ll, history


def mixtools_table():
    d = json.loads(FIXTURE.read_text())
    model, x, y, start_ll, history = em_on_mixtools_example(d)
    beta = np.column_stack([model.params["V"][:, 1, 0], model.params["V"][:, 0, 0]])
    perm = [0, 1] if np.abs(beta - d["beta"]).sum() < np.abs(beta[::-1] - d["beta"]).sum() else [1, 0]
    G = model.params["G0"][:, perm]
    w = np.array([G[1, 0] - G[1, 1], G[0, 0] - G[0, 1]])
    post = np.abs(model.posterior(x, y)[:, perm] - np.array(d["posterior"])).max()
    print(f"\nmixtools {d['mixtools_version']} hmeEM on NOdata (n = {len(y)}), same start "
          f"(log-likelihood there: R {d['all_loglik'][0]:.6f}, numpy_moe {start_ll:.6f})")
    print(f"  {'':<22} {'mixtools':>24} {'numpy_moe':>24} {'max |diff|':>11}")
    rows = [("log-likelihood", [d["loglik"]], [history["log_likelihood"][-1]]),
            ("EM iterations", [len(d["all_loglik"]) - 1], [history["n_iter"]]),
            ("beta (intercept, slope) 1", d["beta"][0], beta[perm][0]),
            ("beta (intercept, slope) 2", d["beta"][1], beta[perm][1]),
            ("sigma", d["sigma"], np.exp(model.params["log_var"][perm] / 2)),
            ("gate w (intercept, slope)", d["w"], w)]
    for name, r, ours in rows:
        r, ours = np.atleast_1d(r), np.atleast_1d(ours)
        fmt = lambda v: ", ".join(f"{a:.6f}" if abs(a) < 1e3 and a != int(a) else f"{int(a)}" for a in v)  # noqa: E731
        diff = "" if name == "EM iterations" else f"{np.abs(r - ours).max():.1e}"
        print(f"  {name:<26} {fmt(r):>24} {fmt(ours):>24} {diff:>11}")
    print(f"  {'posterior (88 x 2)':<26} {'':>24} {'':>24} {post:>11.1e}")


def main(argv=None):
    args = parse_args(argv, __doc__)
    seeds = list(range(2 if args.quick else 5))
    # one step per EM iteration or Adam step (parts 1 and 2), one for the mixtools comparison (part 3)
    em_iters, adam_iters = gradient_iters(args)
    _, iters, restarts = tree_sizes(args)
    progress = Progress(2 * len(seeds) * (em_iters + adam_iters) + len(seeds) * 2 * restarts * iters + 1, what="em")
    em_vs_gradient(args, seeds, progress)
    tree_study(args, seeds, progress)
    mixtools_table()
    progress.step("mixtools comparison")
    progress.done()


if __name__ == "__main__":
    main()
