"""Seed 004: Sparse-MLP (an MLP-Mixer with token- and channel-mixing MoE layers) on the 8x8 digits.

2x2 patches give S = 16 tokens of C = 32 channels; 4 blocks, the last two sparse: their token mixing
goes through the re-represent layers (C -> C1 = 16, S -> S1 = 32) into MoE_s, their channel mixing is
MoE_c; every MoE layer has 4 MLP experts, top-2 routing with V-MoE noise (std 1 / E) and the importance
and load losses. A dense MLP-Mixer of the same depth and width (every block dense) is trained beside it.
Adam, lr 3e-3, batches of 64, each model with five seeds (weights, noise, batches; the split is fixed).
After every epoch the test set is classified and, per MoE layer, the rows routed to each expert are
counted (MoE_s routes (image, channel) rows, MoE_c (image, token) rows). Prints test accuracy over the
seeds and time per epoch; draws accuracy and expert usage for seed 0 (plots/sparse_mlp_digits.png).
BLAS runs on one thread: the matrices are small (rows of 16 to 64 numbers), and on a busy 2-core machine
two threads made an epoch 10 times slower.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from experiments._common import Progress, parse_args, savefig
from experiments.images import epoch_axis, plot_usage, train_and_track, usage_spread
from numpy_moe.data_images import load_digits_images
from numpy_moe.models import SparseMLP

CONFIG = dict(image_size=8, in_channels=1, n_classes=10, patch_size=2, channels=32, depth=4,
              token_hidden=32, channel_hidden=64, n_experts=4, top_k=2, balance_weight=0.01, seed=0)


SPARSE, DENSE = "Sparse-MLP (blocks 3-4 sparse)", "MLP-Mixer (all blocks dense)"


def main(argv=None):
    args = parse_args(argv, __doc__)
    X_train, X_test, y_train, y_test = load_digits_images(seed=0)
    if args.quick:
        X_train, y_train, X_test, y_test = X_train[:64], y_train[:64], X_test[:32], y_test[:32]
    epochs, seeds = (1, [0]) if args.quick else (12, [0, 1, 2, 3, 4])
    configs = {SPARSE: CONFIG, DENSE: CONFIG | dict(sparse_blocks=())}
    progress = Progress(len(configs) * len(seeds) * epochs, what="sparse_mlp")
    runs, models = {}, {}
    for name, config in configs.items():
        for seed in seeds:
            model = SparseMLP(**config | dict(seed=seed))
            models.setdefault(name, model)
            with threadpool_limits(limits=1, user_api="blas"):
                runs.setdefault(name, []).append(
                    train_and_track(model, X_train, y_train, X_test, y_test, epochs, 64, 3e-3, seed=seed,
                                    progress=progress, label=f"{name.split(' (')[0]}, seed {seed}"))
    progress.done()
    print(f"\n8x8 digits, {len(y_train)} train / {len(y_test)} test images, {epochs} epochs, batches of 64, "
          f"seeds {seeds}")
    print(f"{'model':<32} {'params':>7} {'test accuracy (mean ± std)':>27} {'(min-max)':>13} {'s/epoch':>8}")
    for name, rs in runs.items():
        accs = np.array([r["accuracy"][-1] for r in rs])
        print(f"{name:<32} {models[name].n_parameters():>7} {accs.mean():>18.4f} ± {accs.std():.4f} "
              f"({accs.min():.3f}-{accs.max():.3f}) {np.mean([np.mean(r['time']) for r in rs]):>8.2f}")
    wins = sum(s["accuracy"][-1] > d["accuracy"][-1] for s, d in zip(runs[SPARSE], runs[DENSE]))
    print(f"Sparse-MLP more accurate than the dense Mixer with the same seed in {wins} of {len(seeds)} seeds")
    names = [f"block {b + 1} {kind}" for b in models[SPARSE].sparse_blocks
             for kind in ("MoE_s (tokens)", "MoE_c (channels)")]
    print("last epoch's test pass, per MoE layer over the seeds: share of the rows' top-2 assignments taken by the "
          "least used expert (min-max); rows per expert for seed 0")
    for i, name in enumerate(names):
        least = [usage_spread(r["usage"][-1, i])[1] for r in runs[SPARSE]]
        print(f"  {name:<26} {min(least):.2f}-{max(least):.2f}   {runs[SPARSE][0]['usage'][-1, i].tolist()}")
    fig = plt.figure(figsize=(14, 7), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(grid[:, 0])
    for name, rs in runs.items():
        ax.plot(np.arange(1, epochs + 1), rs[0]["accuracy"], marker="o", ms=3, label=name)
    epoch_axis(ax, epochs)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"test accuracy (seed {seeds[0]})", fontsize=10)
    ax.legend(fontsize=8)
    for i, (name, usage) in enumerate(zip(names, runs[SPARSE][0]["usage"].transpose(1, 0, 2))):
        plot_usage(fig.add_subplot(grid[i % 2, 1 + i // 2]), usage, f"Sparse-MLP {name}", CONFIG["top_k"],
                   unit="rows", legend=i == 0)
    acc = {name: np.array([r["accuracy"][-1] for r in rs]) for name, rs in runs.items()}
    fig.suptitle(f"Sparse-MLP on 8x8 digits (seed {seeds[0]} drawn): over {len(seeds)} seeds test accuracy "
                 f"{acc[SPARSE].mean():.3f} ± {acc[SPARSE].std():.3f}, a dense Mixer of the same shape "
                 f"{acc[DENSE].mean():.3f} ± {acc[DENSE].std():.3f}; every expert of every MoE layer is busy")
    savefig(fig, args, "sparse_mlp_digits.png")
    return runs


if __name__ == "__main__":
    main()
