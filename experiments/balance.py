"""Load balancing: a top-2 MoE collapses onto two experts without a differentiable balance loss.

Seed 000's layer (4 ReLU-MLP experts, softmax gate, keep the top 2) followed by a linear classifier,
trained with Adam on the 8x8 digits. The pixels are scaled to [0, 1] and not centred, like the
non-negative conv features seed 000 feeds its MoE: every sample shares a large common component, so
whichever experts the gate favours early win every sample ("rich get richer"). Four runs from the same
seed and the same batches:

(a) no balance loss;
(b) seed 000's loss 0.01 * std(counts / sum) - built from hard counts, its gradient is exactly zero, so
    (b) trains bit-for-bit like (a) (the script checks this);
(c) V-MoE noisy top-2 (noise std 1/E) with importance + load losses, 0.1 each;
(d) the Switch loss, 0.1.

Every run is repeated with five seeds (the initial weights, the noise and the batches; the split is
fixed). The figure shows each expert's share of the top-2 assignments on the training set after every
epoch, for seed 0; the table prints, over the five seeds, the test accuracy, the share of the
assignments the two busiest experts take at the end, and the share of the least used expert. Small
experts (hidden 4) make capacity matter.
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
from numpy_moe.train import fit, predict

RUNS = {
    "(a) no balance loss": {},
    "(b) seed-000 loss": dict(balance={"seed000": 0.01}),
    "(c) importance + load": dict(noise="vmoe", balance={"importance": 0.1, "load": 0.1}),
    "(d) Switch loss": dict(balance={"switch": 0.1}),
}
E, H = 4, 4


def digits(quick):
    X, y = load_digits(return_X_y=True)
    if quick:
        X, y = X[:400], y[:400]
    X_train, X_test, y_train, y_test = train_test_split(X / 16, y, test_size=0.25, random_state=0, stratify=y)
    return X_train, X_test, y_train, y_test


def train(kwargs, data, epochs, seed, callback=None):
    """Train one model; returns (model, shares per epoch (epochs + 1, E), test accuracy)."""
    X_train, X_test, y_train, y_test = data
    moe = MoE(X_train.shape[1], H, E, hidden=H, seed=seed, top_k=2, **kwargs)
    model = Sequential(moe, Linear(H, 10, seed=seed))
    shares = []

    def record(*_):
        predict(model, X_train)  # evaluation mode: routing without noise
        counts = moe.diagnostics["samples_per_expert"]
        shares.append(counts / counts.sum())

    def after_epoch(epoch, net, history):
        record()
        if callback is not None:
            callback(epoch, net, history)

    record()
    fit(model, X_train, y_train, optimizer=Adam(0.01), epochs=epochs, batch_size=64, seed=seed, callback=after_epoch)
    accuracy = float((to_numpy(predict(model, X_test)).argmax(axis=1) == y_test).mean())
    return model, np.array(shares), accuracy


def main(argv=None):
    args = parse_args(argv, __doc__)
    epochs, seeds = (2, [0]) if args.quick else (30, [0, 1, 2, 3, 4])
    data = digits(args.quick)
    progress = Progress(len(RUNS) * len(seeds) * epochs, what="balance")
    results = {name: [train(kwargs, data, epochs, seed, progress.fit_callback(f"{name}, seed {seed}"))
                      for seed in seeds] for name, kwargs in RUNS.items()}
    progress.done()

    diffs = []
    for (a, *_), (b, *_) in zip(results["(a) no balance loss"], results["(b) seed-000 loss"]):
        diffs.append(max(float(np.abs(to_numpy(p) - to_numpy(q)).max())
                         for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters())))
    print(f"\nmax |parameter difference| between (a) and (b) after training, per seed: {diffs}")

    print(f"\nover seeds {seeds}: test accuracy; at the end of training, on the training set, the share of the "
          "top-2 assignments\ntaken by the two busiest experts, and the share of the least used expert "
          "(min-max over seeds)")
    print(f"{'run':<24} {'test accuracy':>15} {'(min-max)':>13} {'two busiest':>12} {'least used':>12}"
          f"   final shares, seed {seeds[0]}")
    for name, runs in results.items():
        accs = np.array([acc for *_, acc in runs])
        final = np.array([np.sort(shares[-1]) for _, shares, _ in runs])  # (seeds, E), ascending
        top2, least = final[:, -2:].sum(axis=1), final[:, 0]
        print(f"{name:<24} {accs.mean():>7.3f} ± {accs.std():.3f} ({accs.min():.3f}-{accs.max():.3f}) "
              f"{top2.min():>5.2f}-{top2.max():.2f} {least.min():>6.2f}-{least.max():.2f}   "
              + " ".join(f"{v:.2f}" for v in runs[0][1][-1]))

    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6), sharey=True)
    for ax, (name, runs) in zip(axes, results.items()):
        shares, acc = runs[0][1], runs[0][2]
        for e in range(E):
            ax.plot(np.arange(len(shares)), shares[:, e], marker=".", label=f"expert {e}")
        ax.axhline(1 / E, color="gray", lw=0.8, ls="--", label="balanced (1/E)")
        ax.set_title(f"{name}\nseed {seeds[0]}: test accuracy {acc:.3f}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.set_ylim(-0.02, 0.62)
    axes[0].set_ylabel("share of top-2 assignments (train set)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=E + 1, bbox_to_anchor=(0.5, -0.08))
    fig.suptitle(f"Without a differentiable balance loss, top-2 routing collapses onto two experts; seed 000's "
                 f"loss changes nothing, importance + load and Switch keep all four busy (seed {seeds[0]} drawn; the "
                 f"table gives all {len(seeds)} seeds)", fontsize=11)
    fig.tight_layout()
    savefig(fig, args, "balance_shares.png")
    return results


if __name__ == "__main__":
    main()
