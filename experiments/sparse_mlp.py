"""Post 004: Sparse-MLP (an MLP-Mixer with token- and channel-mixing MoE layers) on the 8x8 digits.

Sparse-MLP: Lou, Xue, Zheng and You 2021, arXiv:2109.02008; MLP-Mixer: Tolstikhin et al. 2021.
2x2 patches give S = 16 tokens of C = 32 channels; 4 blocks, the last two sparse: their token mixing
goes through the re-represent layers (C -> C1 = 16, S -> S1 = 32) into MoE_s, their channel mixing is
MoE_c; every MoE layer has 4 MLP experts, top-2 routing with V-MoE noise (std 1 / E) and the importance
and load losses. Two dense MLP-Mixers (every block dense) are trained beside it:

- the same shape: the same depth, width and hidden widths (token 32, channel 64), so about a third of
  Sparse-MLP's parameters (the experts and the re-represent layers are what Sparse-MLP adds);
- parameter-matched: the token and channel MLPs widened in the same 1 : 2 ratio until the parameter
  count is the closest to Sparse-MLP's total (``matched_dense_config``), so it has as many parameters,
  every one used by every row.

The parameter counts are computed from the models, with the parameters a routed row of Sparse-MLP
uses (the total less the E - K experts each MoE layer does not pick for it). Adam, lr 3e-3, batches of 64,
each model with five seeds (weights, noise, batches; the split is fixed), the three models taking turns
seed by seed so that whatever else runs on the machine slows each alike. After every epoch the test set
is classified and, per MoE layer, the rows routed to each expert are counted (MoE_s routes (image,
channel) rows, MoE_c (image, token) rows). Prints test accuracy over the seeds and the training time per
epoch; draws accuracy over the seeds and Sparse-MLP's expert usage for seed 0
(plots/sparse_mlp_digits.png). BLAS runs on one thread: the matrices are small (rows of 16 to 64
numbers), and on a busy 2-core machine two threads made an epoch 10 times slower.
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
from numpy_moe.moe import MoE
from numpy_moe.plotting import EXPERT_COLORS

CONFIG = dict(image_size=8, in_channels=1, n_classes=10, patch_size=2, channels=32, depth=4,
              token_hidden=32, channel_hidden=64, n_experts=4, top_k=2, balance_weight=0.01, seed=0)

SPARSE, DENSE, MATCHED = ("Sparse-MLP (blocks 3-4 sparse)", "MLP-Mixer, same shape",
                          "MLP-Mixer, parameter-matched")
COLORS = {SPARSE: "#1b9e77", DENSE: "#7570b3", MATCHED: "#d95f02"}  # models, not experts


def active_parameters(model):
    """Parameters one routed row passes through: the total less the E - K unpicked experts per MoE layer."""
    unpicked = sum(m.experts.n_parameters() * (m.n_experts - m.gate.top_k) / m.n_experts
                   for m in model.modules() if isinstance(m, MoE))
    return int(round(model.n_parameters() - unpicked))


def matched_dense_config(config):
    """A dense Mixer config (every block dense) whose parameter count is the closest to the sparse model's.

    The token and channel hidden widths grow together in the ratio of ``config`` (32 : 64): with
    widths (h t, h c) / t for an integer h, the dense count is affine in h, so two models give the line
    and the two integers around its solution are compared. Returns (config, its parameter count).
    """
    target = SparseMLP(**config).n_parameters()
    t, c = config["token_hidden"], config["channel_hidden"]
    dense = lambda h: config | dict(sparse_blocks=(), token_hidden=h, channel_hidden=h * c // t)  # noqa: E731
    count = lambda h: SparseMLP(**dense(h)).n_parameters()  # noqa: E731
    n1, n2 = count(t), count(2 * t)
    h = t + (target - n1) * t / (n2 - n1)
    best = min({max(1, int(np.floor(h))), max(1, int(np.ceil(h)))}, key=lambda k: abs(count(k) - target))
    return dense(best), count(best)


def main(argv=None):
    args = parse_args(argv, __doc__)
    X_train, X_test, y_train, y_test = load_digits_images(seed=0)
    if args.quick:
        X_train, y_train, X_test, y_test = X_train[:64], y_train[:64], X_test[:32], y_test[:32]
    epochs, seeds = (1, [0]) if args.quick else (12, [0, 1, 2, 3, 4])
    configs = {SPARSE: CONFIG, DENSE: CONFIG | dict(sparse_blocks=()), MATCHED: matched_dense_config(CONFIG)[0]}
    progress = Progress(len(configs) * len(seeds) * epochs, what="sparse_mlp")
    runs, models = {name: [] for name in configs}, {}
    for seed in seeds:  # the models take turns, so a busy machine slows each of them alike
        for name, config in configs.items():
            model = SparseMLP(**config | dict(seed=seed))
            models.setdefault(name, model)
            with threadpool_limits(limits=1, user_api="blas"):
                runs[name].append(
                    train_and_track(model, X_train, y_train, X_test, y_test, epochs, 64, 3e-3, seed=seed,
                                    progress=progress, label=f"{name}, seed {seed}"))
    progress.done()

    params = {name: m.n_parameters() for name, m in models.items()}
    active = {name: active_parameters(m) for name, m in models.items()}
    acc = {name: np.array([r["accuracy"][-1] for r in rs]) for name, rs in runs.items()}
    sec = {name: np.array([np.mean(r["time"]) for r in rs]) for name, rs in runs.items()}
    print(f"\n8x8 digits, {len(y_train)} train / {len(y_test)} test images, {epochs} epochs, batches of 64, "
          f"seeds {seeds}; time: training seconds per epoch, mean ± std over the seeds (one BLAS thread, on "
          "whatever else the machine was running)")
    widths = {name: f"{c['token_hidden']}/{c['channel_hidden']}" for name, c in configs.items()}
    print(f"{'model':<32} {'hidden tok/ch':>13} {'params':>7} {'used/row':>8} {'test accuracy (mean ± std)':>27} "
          f"{'(min-max)':>13} {'s/epoch':>12}")
    for name in runs:
        a, s = acc[name], sec[name]
        print(f"{name:<32} {widths[name]:>13} {params[name]:>7} {active[name]:>8} {a.mean():>18.4f} ± {a.std():.4f} "
              f"({a.min():.3f}-{a.max():.3f}) {s.mean():>6.2f} ± {s.std():.2f}")
    print(f"Sparse-MLP has {params[SPARSE] / params[DENSE]:.2f} times the parameters of the same-shape Mixer "
          f"({params[SPARSE]} against {params[DENSE]}) and {sec[SPARSE].mean() / sec[DENSE].mean():.2f} times "
          f"its time per epoch; the parameter-matched Mixer has {params[MATCHED]} parameters "
          f"({100 * (params[MATCHED] / params[SPARSE] - 1):+.1f}% of Sparse-MLP's) and "
          f"{sec[MATCHED].mean() / sec[DENSE].mean():.2f} times the same-shape Mixer's time per epoch")
    for other in (DENSE, MATCHED):
        wins = int(sum(acc[SPARSE] > acc[other]))
        print(f"Sparse-MLP more accurate than the {other!r} with the same seed in {wins} of {len(seeds)} seeds")
    names = [f"block {b + 1} {kind}" for b in models[SPARSE].sparse_blocks
             for kind in ("MoE_s (tokens)", "MoE_c (channels)")]
    print("last epoch's test pass, per MoE layer over the seeds: share of the rows' top-2 assignments taken by the "
          "least used expert (min-max); rows per expert for seed 0")
    for i, name in enumerate(names):
        least = [usage_spread(r["usage"][-1, i])[1] for r in runs[SPARSE]]
        print(f"  {name:<26} {min(least):.2f}-{max(least):.2f}   {runs[SPARSE][0]['usage'][-1, i].tolist()}")

    plot_digits(runs, params, names, seeds, args)
    return dict(runs=runs, params=params, active=active, configs=configs, names=names, seeds=seeds)


def busy_claim(runs):
    """Whether every expert of every MoE layer got some of the last test pass's rows, in every seed's run
    (``runs``: train_and_track's dicts, usage (epochs, layers, E)): computed, not assumed."""
    idle = sum(bool((r["usage"][-1] == 0).any()) for r in runs)
    if not idle:
        return "every expert of every MoE layer is busy"
    return f"some MoE layer leaves an expert without rows in {idle} of {len(runs)} seeds"


def plot_digits(runs, params, names, seeds, args):
    """sparse_mlp_digits.png: test accuracy of the three models over the seeds (mean ± std) and the usage
    of every MoE layer of Sparse-MLP for the first seed."""
    acc = {name: np.array([r["accuracy"][-1] for r in rs]) for name, rs in runs.items()}
    sec = {name: np.array([np.mean(r["time"]) for r in rs]) for name, rs in runs.items()}
    epochs = len(runs[SPARSE][0]["accuracy"])
    fig = plt.figure(figsize=(15, 8), layout="constrained")
    grid = fig.add_gridspec(2, 3)
    ax = fig.add_subplot(grid[:, 0])
    x = np.arange(1, epochs + 1)
    for name, rs in runs.items():
        curves = np.array([r["accuracy"] for r in rs])
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        ax.plot(x, mean, marker="o", ms=3, color=COLORS[name],
                label=f"{name.split(' (')[0]}\n{params[name]:,} params, {sec[name].mean():.2f} s/epoch")
        ax.fill_between(x, mean - std, mean + std, color=COLORS[name], alpha=0.15)
    epoch_axis(ax, epochs)
    ax.set_ylabel("test accuracy")
    low = min(a.mean() - 3 * a.std() for a in acc.values())
    ax.set_ylim(0.9 if low > 0.92 else max(0.0, low - 0.05), 1.0)  # the end of training, where they differ
    ax.set_title(f"test accuracy (mean ± std, {len(seeds)} seeds)")
    ax.legend(fontsize=10, loc="lower right", title="time: the shared 2-core machine", title_fontsize=10)
    for i, (name, usage) in enumerate(zip(names, runs[SPARSE][0]["usage"].transpose(1, 0, 2))):
        panel = fig.add_subplot(grid[i % 2, 1 + i // 2])
        panel.set_prop_cycle(color=EXPERT_COLORS)  # plot_usage draws expert e in the e-th colour of the cycle
        plot_usage(panel, usage, f"Sparse-MLP {name}, seed {seeds[0]}", CONFIG["top_k"], unit="rows",
                   legend=i == 0)
        panel.title.set_fontsize(12)
    def compared(a, b):  # "about as", "more" or "less" accurate: a's mean against b's, within the larger std
        diff = a.mean() - b.mean()
        return "about as" if abs(diff) <= max(a.std(), b.std()) else "more" if diff > 0 else "less"

    fig.suptitle(f"Sparse-MLP on 8x8 digits, {len(seeds)} seeds: {params[SPARSE] / params[DENSE]:.1f}x the parameters "
                 f"of a same-shape Mixer at {sec[SPARSE].mean() / sec[DENSE].mean():.1f}x its time per epoch,\nand "
                 f"{compared(acc[SPARSE], acc[DENSE])} accurate ({acc[SPARSE].mean():.3f} ± {acc[SPARSE].std():.3f} "
                 f"against {acc[DENSE].mean():.3f} ± {acc[DENSE].std():.3f}); a dense Mixer with as many parameters "
                 f"is {compared(acc[MATCHED], acc[SPARSE])} accurate\n"
                 f"({acc[MATCHED].mean():.3f} ± {acc[MATCHED].std():.3f}) at "
                 f"{sec[MATCHED].mean() / sec[SPARSE].mean():.1f}x Sparse-MLP's time; {busy_claim(runs[SPARSE])}")
    savefig(fig, args, "sparse_mlp_digits.png")


if __name__ == "__main__":
    main()
