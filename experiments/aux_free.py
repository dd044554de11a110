"""Auxiliary-loss-free balancing: the selection bias vs the Switch-style loss vs nothing, 16 experts top-2.

A fine-grained top-2 MoE (16 SwiGLU experts of hidden width 8, DeepSeek-V3's router: sigmoid scores,
renormalised weights) followed by a linear classifier, trained with Adam on the 8x8 digits. As in
``experiments/balance.py`` the pixels are scaled to [0, 1] and not centred, so every sample shares a large
common component and the router starts out collapsed onto a few experts (MaxVio about 5 at
initialisation: one expert gets six times its fair share). Seven runs per seed, from the same seeds and
batches:

(a) no balancing;
(b) the Switch-style loss alpha * sum_e f_e P_e (numpy_moe.balance.SequenceBalance over the batch, the
    top-k form DeepSeek-V2 and GShard use) at alpha = 0.01, 0.1, 1;
(c) the auxiliary-loss-free bias (Wang et al. 2024, Algorithm 1: after each step
    b_e += u sign(mean load - load_e), the bias added to the scores for selection only) at u = 0.001,
    0.01, 0.03.

MaxVio = max_e load_e / mean_e load_e - 1 is measured on the whole training set after every epoch
(evaluation mode, the bias as it stands) and on the test set at the end, with the test accuracy. The
figure shows MaxVio over training (mean ± std over the seeds) and the final accuracy against the final
MaxVio; the table prints mean ± std over the seeds.
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
from numpy_moe import balance as B
from numpy_moe.backend import default_rng, to_numpy
from numpy_moe.experts import ExpertBank
from numpy_moe.gates import ScoreGate
from numpy_moe.layers import Linear, Sequential
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam
from numpy_moe.train import fit, predict

E, K, H, WIDTH = 16, 2, 8, 16
RUNS = {"(a) no balancing": {}}
RUNS.update({f"(b) aux loss {a:g}": dict(alpha=a) for a in (0.01, 0.1, 1.0)})
RUNS.update({f"(c) bias u={u:g}": dict(u=u) for u in (0.001, 0.01, 0.03)})


def maxvio(moe, model, X):
    """MaxVio of the routing of X in evaluation mode: max_e load_e / mean_e load_e - 1."""
    predict(model, X)
    load = moe.diagnostics["samples_per_expert"]
    return float(load.max() / load.mean() - 1)


def train(data, seed, epochs, alpha=0.0, u=0.0, progress=None, label=""):
    """One run; returns (MaxVio on the training set per epoch (epochs + 1,), test MaxVio, test accuracy).
    ``progress`` (an ``experiments._common.Progress``) counts one step per epoch."""
    X_train, X_test, y_train, y_test = data
    rng = default_rng(seed)
    moe = MoE(gate=ScoreGate(X_train.shape[1], E, top_k=K, score="sigmoid", normalize=True, bias_update=u,
                             seed=rng),
              experts=ExpertBank(E, X_train.shape[1], WIDTH, H, seed=rng, activation="swiglu"),
              balance=[B.SequenceBalance(alpha, per_sequence=False)] if alpha else None)
    model = Sequential(moe, Linear(WIDTH, 10, seed=rng))
    curve = [maxvio(moe, model, X_train)]
    track = lambda *_: curve.append(maxvio(moe, model, X_train))  # noqa: E731
    fit(model, X_train, y_train, optimizer=Adam(0.01), epochs=epochs, batch_size=64, seed=seed,
        callback=track if progress is None else progress.fit_callback(label, then=track))
    accuracy = float((to_numpy(predict(model, X_test)).argmax(axis=1) == y_test).mean())
    return np.array(curve), maxvio(moe, model, X_test), accuracy


STRONG = ("(b) aux loss 0.1", "(b) aux loss 1", "(c) bias u=0.01", "(c) bias u=0.03")  # alpha >= 0.1, u >= 0.01


def title(results, n_seeds):
    """aux_free.png's title, each part computed from ``results`` (run name -> train's tuples over the seeds).

    The start is the mean MaxVio at initialisation (rounded down); "under 1" is the training MaxVio of the
    last 5 epochs (the table's column) of every run in STRONG; "at equal balance" compares the most
    accurate bias run and the most accurate loss run among those balanced on the test set (test MaxVio
    under 1); the unbalanced run (a) is "as accurate or more" when no other run's mean accuracy is higher.
    """
    mean = lambda name, f: float(np.mean([f(r) for r in results[name]]))  # noqa: E731
    start = np.mean([r[0][0] for runs in results.values() for r in runs])
    late = {name: mean(name, lambda r: r[0][-5:].mean()) for name in STRONG}
    balanced = {name: mean(name, lambda r: r[2]) for name in results if mean(name, lambda r: r[1]) < 1}
    bias = max((a for n, a in balanced.items() if n.startswith("(c)")), default=None)
    loss = max((a for n, a in balanced.items() if n.startswith("(b)")), default=None)
    unbalanced = mean("(a) no balancing", lambda r: r[2])
    cut = ("to under 1" if max(late.values()) < 1 else
           "to " + ", ".join(f"{v:.2f}" for v in late.values()) + " (alpha 0.1, 1; u 0.01, 0.03)")
    if bias is None or loss is None:
        equal = "no bias and loss runs are both balanced on the test set"
    else:
        equal = (f"at equal balance the bias keeps {'more' if bias > loss else 'no more'} accuracy than the loss")
    best = max(mean(n, lambda r: r[2]) for n in results if n != "(a) no balancing")
    last = ("but the unbalanced model is as accurate or more" if unbalanced >= best else
            "and the unbalanced model is less accurate than the best balanced one")
    return (f"16 experts, top-2, sigmoid router, digits, {n_seeds} seeds: the loss (alpha >= 0.1) and the bias "
            f"(u >= 0.01)\ncut MaxVio from {int(np.floor(start))} {cut}; {equal},\n{last}")


def main(argv=None):
    args = parse_args(argv, __doc__)
    epochs, seeds = (2, [0]) if args.quick else (25, [0, 1, 2, 3, 4])
    X, y = load_digits(return_X_y=True)
    if args.quick:
        X, y = X[:400], y[:400]
    data = train_test_split(X / 16, y, test_size=0.25, random_state=0, stratify=y)
    progress = Progress(len(RUNS) * len(seeds) * epochs, what="aux_free")
    results = {name: [train(data, seed, epochs, **kw, progress=progress, label=f"{name}, seed {seed}")
                      for seed in seeds] for name, kw in RUNS.items()}
    progress.done()

    print(f"\n{'run':<22} {'test accuracy':>16} {'test MaxVio':>16} {'train MaxVio, last 5 epochs':>28}   "
          f"(mean ± std over seeds {seeds})")
    rows = {}
    for name, runs in results.items():
        acc = np.array([r[2] for r in runs])
        mv = np.array([r[1] for r in runs])
        late = np.array([r[0][-5:].mean() for r in runs])
        rows[name] = (acc.mean(), acc.std(), mv.mean(), mv.std())
        print(f"{name:<22} {acc.mean():>8.3f} ± {acc.std():.3f} {mv.mean():>8.2f} ± {mv.std():.2f} "
              f"{late.mean():>20.2f} ± {late.std():.2f}")

    import matplotlib.pyplot as plt
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5.6), gridspec_kw={"width_ratios": [1.5, 1]})
    colors = {"(a)": "black", "(b)": plt.cm.Blues, "(c)": plt.cm.Oranges}
    for i, (name, runs) in enumerate(results.items()):
        tag = name[:3]
        shade = 0.45 + 0.25 * ((i - 1) % 3)
        color = colors[tag] if tag == "(a)" else colors[tag](shade)
        curves = np.array([r[0] for r in runs])
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        ax.plot(np.arange(len(mean)), mean, color=color, label=name, lw=2 if tag == "(a)" else 1.5)
        ax.fill_between(np.arange(len(mean)), np.maximum(mean - std, 0), mean + std, color=color, alpha=0.12)
        acc_m, acc_s, mv_m, mv_s = rows[name]
        bx.errorbar(mv_m, acc_m, xerr=mv_s, yerr=acc_s, fmt="o", color=color, capsize=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MaxVio on the training set")
    ax.set_ylim(0, None)
    ax.set_title("MaxVio over training (mean ± std over seeds)")
    ax.legend(fontsize=9, ncol=2)
    bx.set_xlabel("test MaxVio (final)")
    bx.set_ylabel("test accuracy")
    bx.set_title("final accuracy against balance\n(mean ± std over seeds)")
    fig.suptitle(title(results, len(seeds)))
    fig.tight_layout()
    savefig(fig, args, "aux_free.png")
    return results


if __name__ == "__main__":
    main()
