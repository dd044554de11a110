"""Convolutional experts on the 8x8 digits: a plain conv net beside the same net with a ConvMoE2d layer.

The plain net: conv 3x3 (1 -> 16, padding 1) - ReLU - maxpool 2 - conv 3x3 (16 -> 32, padding 1) - ReLU -
maxpool 2 - flatten - linear 128 -> 10. The expert nets replace the second convolution by
numpy_moe.conv_moe.ConvMoE2d with 4 experts of that shape and a 3x3 convolutional gate, dense (every
expert weighted at every position) or top-2 per position; a fourth net is the plain one with the second
convolution 4 times as wide (16 -> 128, linear 512 -> 10), about the experts' parameter count. Adam (lr
1e-3, batches of 64), 15 epochs, five seeds (the split, the weights and the shuffling change together).
BLAS on one thread (the matrices are tiny). The figure: test accuracy per epoch (mean ± std), and the
top-2 net's gate: the expert of largest weight at each of the 4x4 positions of its layer, for a few test
digits.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch
from threadpoolctl import threadpool_limits

from experiments._common import Progress, parse_args, savefig
from numpy_moe.conv_moe import ConvMoE2d
from numpy_moe.data_images import load_digits_images
from numpy_moe.image_layers import Conv2d, Flatten, MaxPool2d, Unflatten
from numpy_moe.layers import Linear, ReLU, Sequential
from numpy_moe.optim import Adam
from numpy_moe.plotting import EXPERT_COLORS
from numpy_moe.train import fit, predict

MODELS = ("plain conv", "plain, 4x wider conv", "conv experts, dense", "conv experts, top-2")


def build(name, seed):
    rng = np.random.default_rng(seed)
    width = 128 if name == "plain, 4x wider conv" else 32
    if name.startswith("conv experts"):
        second = ConvMoE2d(16, 32, 3, n_experts=4, top_k=2 if name.endswith("top-2") else None, padding=1, seed=rng)
    else:
        second = Conv2d(16, width, 3, padding=1, seed=rng)
    return Sequential(Unflatten((1, 8, 8)), Conv2d(1, 16, 3, padding=1, seed=rng), ReLU(), MaxPool2d(2),
                      second, ReLU(), MaxPool2d(2), Flatten(), Linear(width * 4, 10, seed=rng))


def accuracy(net, X, y):
    return float((predict(net, X).argmax(axis=1) == y).mean())


def main(argv=None):
    args = parse_args(argv, __doc__)
    seeds = range(2 if args.quick else 5)
    epochs = 1 if args.quick else 15
    curves = {name: [] for name in MODELS}
    times, counts, shown = {name: [] for name in MODELS}, {}, None
    progress = Progress(len(seeds) * len(MODELS) * epochs, what="conv_experts")
    with threadpool_limits(1):
        for s in seeds:
            X_tr, X_te, y_tr, y_te = load_digits_images(seed=s)
            if args.quick:
                X_tr, y_tr, X_te, y_te = X_tr[:128], y_tr[:128], X_te[:64], y_te[:64]
            X_tr, X_te = X_tr.reshape(len(X_tr), -1), X_te.reshape(len(X_te), -1)
            for name in MODELS:
                net = build(name, seed=s)
                counts[name] = net.n_parameters()
                acc = []
                history = fit(net, X_tr, y_tr, optimizer=Adam(1e-3), epochs=epochs, batch_size=64, seed=s,
                              callback=progress.fit_callback(
                                  f"{name}, seed {s}", then=lambda ep, m, h: acc.append(accuracy(m, X_te, y_te))))
                curves[name].append(acc)
                times[name].append(np.mean(history.time))
                if s == 0 and name.endswith("top-2"):
                    shown = (net, X_te, y_te)
    progress.done()
    print(f"\ndigits, {len(seeds)} seeds, {epochs} epochs: test accuracy after the last epoch")
    for name in MODELS:
        final = [c[-1] for c in curves[name]]
        print(f"  {name:<24} {counts[name]:>7} parameters  {np.mean(final):.4f} ± {np.std(final):.4f}  "
              f"{np.mean(times[name]):.2f} s per epoch")

    fig = plt.figure(figsize=(12.5, 6))
    ax = fig.add_subplot(1, 2, 1)
    styles = [("k", "o", "-"), ("0.55", "s", "-"), ("k", "^", "--"), ("0.55", "D", "--")]  # models, not experts
    for name, (color, marker, ls) in zip(MODELS, styles):
        c = np.array(curves[name])
        ep = np.arange(1, c.shape[1] + 1)
        ax.plot(ep, c.mean(axis=0), color=color, marker=marker, ls=ls, ms=4,
                label=f"{name} ({counts[name]} parameters): {c[:, -1].mean():.3f}")
        ax.fill_between(ep, c.mean(axis=0) - c.std(axis=0), c.mean(axis=0) + c.std(axis=0), color=color, alpha=0.12)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(max(0.0, min(np.array(curves[n]).mean(axis=0)[min(2, epochs - 1)] for n in MODELS) - 0.02), 1.0)
    ax.set_title(f"test accuracy per epoch,\nmean ± std over {len(seeds)} seeds")
    ax.legend(fontsize=9, title="final accuracy, mean over seeds", title_fontsize=9)
    ax.grid(alpha=0.3)
    net, X_te, y_te = shown
    layer = next(m for m in net.modules() if isinstance(m, ConvMoE2d))
    picks = [int(np.nonzero(y_te == d)[0][0]) for d in range(10) if (y_te == d).any()][:6]
    trunk = Sequential(*net.layers[:4])  # Unflatten, conv, ReLU, pool: the ConvMoE layer's input
    net.eval()
    gates = layer.gate(trunk.forward(X_te[picks]))  # (n, E, 4, 4)
    cmap = ListedColormap(EXPERT_COLORS[:layer.n_experts])
    for i, idx in enumerate(picks):
        a = fig.add_subplot(2, 6, 4 + i if i < 3 else 7 + i)  # the right half: 2 rows of 3
        a.imshow(X_te[idx].reshape(8, 8), cmap="gray_r", extent=(0, 8, 8, 0))
        a.imshow(gates[i].argmax(axis=0), cmap=cmap, vmin=-0.5, vmax=layer.n_experts - 0.5, alpha=0.45,
                 extent=(0, 8, 8, 0))
        a.set_title(f"digit {y_te[idx]}", fontsize=11)
        a.set_xticks([])
        a.set_yticks([])
    fig.text(0.75, 0.86, f"top-2 net (seed {seeds[0]}): expert of largest gate weight\nper position "
             "(colour), over the digit", ha="center", fontsize=12)
    fig.legend(handles=[Patch(color=EXPERT_COLORS[e], alpha=0.6, label=f"expert {e}") for e in range(layer.n_experts)],
               loc="lower center", bbox_to_anchor=(0.75, -0.02), ncol=layer.n_experts, fontsize=10, frameon=False)
    fig.suptitle("Convolutional experts on the 8x8 digits: test accuracy (left), and which expert each\n"
                 "position of the feature map uses (right)", y=1.06)
    savefig(fig, args, "conv_experts.png")


if __name__ == "__main__":
    main()
