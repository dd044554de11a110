"""Post 000: a conv net with a sparse top-2 MoE of 4 MLP experts on the 8x8 digits (CIFAR-10 with --cifar DIR).

The post's classifier (conv 32 - pool - conv 64 - pool - top-2 of 4 MLP experts 256 -> 256 -> 256 -
linear), trained with Adam (lr 1e-3, batches of 64) as in the post, twice: with the post's balance loss
(0.01 std of the hard selection counts, whose gradient is zero) and with V-MoE's noisy gate plus the
importance and load losses (0.1 each), each with five seeds (the initial weights, the noise and the
batches; the split is fixed). After every epoch the test set is classified and the experts each test
image was routed to are counted. Prints, over the seeds, the test accuracy, the share of the test
images' top-2 assignments the two busiest experts take and the share of the least used expert, and the
time per epoch; draws the accuracy per epoch over the seeds and the expert usage per epoch of seed 0
(plots/images_digits.png).

With ``--cifar DIR`` (a folder holding the CIFAR-10 binary batches data_batch_1.bin ... test_batch.bin)
it also trains the post's exact layout on CIFAR-10 (32x32x3, experts 4096 -> 512 -> 512, the post's
loss, pixels scaled to [-1, 1] as the post does), in float32 for speed, for ``--cifar-epochs`` epochs
(default 10, as the post) and draws plots/images_cifar10.png. Nothing is downloaded.

BLAS runs on one thread: on the 2-core machine these figures were made on, two threads made a digits
epoch 5 times slower (6 s against 1.1 s, the matrices are tiny) and a CIFAR-10 step 6 times slower
(1.07 s against 0.18 s per batch of 64).
"""
import argparse
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from experiments._common import Progress, parse_args, positive_int, savefig
from numpy_moe import plotting
from numpy_moe.backend import to_numpy
from numpy_moe.data_images import CIFAR_TEST_FILE, CIFAR_TRAIN_FILES, load_cifar10, load_digits_images
from numpy_moe.image_layers import Unflatten
from numpy_moe.layers import Sequential
from numpy_moe.models import ImageMoEClassifier
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam
from numpy_moe.train import fit, predict

BALANCES = {"seed000": "post-000 loss (zero gradient)", "importance_load": "importance + load (V-MoE)"}


def evaluate(model, X, y, batch_size=500):
    """Test accuracy and, per MoE layer of ``model``, the routed rows per expert, in eval mode (no noise).

    Returns (accuracy, counts) with counts of shape (layers, E).
    """
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    counts = np.zeros((len(moes), moes[0].n_experts if moes else 0), dtype=int)
    correct = 0
    for start in range(0, len(y), batch_size):
        logits = to_numpy(predict(model, X[start:start + batch_size]))
        correct += int((logits.argmax(axis=1) == y[start:start + batch_size]).sum())
        counts += np.array([m.diagnostics["samples_per_expert"] for m in moes], dtype=int).reshape(counts.shape)
    return correct / len(y), counts


def train_and_track(model, X_train, y_train, X_test, y_test, epochs, batch_size, lr, seed, progress=None,
                    label=""):
    """Train an image model with ``numpy_moe.train.fit``, evaluating after every epoch.

    ``fit`` takes 2-D batches, so the images travel flattened and :class:`Unflatten` restores them.
    Returns a dict: "time" (seconds per epoch, training only), "loss", "accuracy" (per epoch) and
    "usage" (epochs, MoE layers, E) routed test rows per expert. ``progress`` (an
    ``experiments._common.Progress``) counts one step per epoch; without it every epoch prints a line.
    """
    net = Sequential(Unflatten(X_train.shape[1:]), model)
    flat = X_test.reshape(len(X_test), -1)
    track = {"accuracy": [], "usage": []}

    def after_epoch(epoch, _net, history):
        acc, counts = evaluate(net, flat, y_test)
        track["accuracy"].append(acc)
        track["usage"].append(counts)
        detail = (f"{label + ': ' if label else ''}epoch {epoch + 1}, loss {history.loss[-1]:.4f}, "
                  f"test accuracy {acc:.4f}")
        if progress is None:
            print(f"  {detail}, {history.time[-1]:.2f} s", flush=True)
        else:
            progress.step(detail)

    history = fit(net, X_train.reshape(len(X_train), -1), y_train, optimizer=Adam(lr), epochs=epochs,
                  batch_size=batch_size, seed=seed, callback=after_epoch)
    return dict(time=history.time, loss=history.loss, accuracy=track["accuracy"],
                usage=np.array(track["usage"]))


def epoch_axis(ax, n_epochs):
    """Label the x axis "epoch" with integer ticks 1..n_epochs (at most about 8 of them)."""
    ax.set_xticks(np.arange(1, n_epochs + 1, max(1, n_epochs // 8)))
    ax.set_xlabel("epoch")


def plot_usage(ax, usage, title, top_k, unit="test images", legend=True):
    """Share of the top-k assignments each expert received, per epoch; usage (epochs, E): the public
    ``numpy_moe.plotting.plot_expert_usage`` (kept here for the experiments that import it)."""
    plotting.plot_expert_usage(ax, usage, top_k=top_k, unit=unit, title=title, legend=legend)


def plot_accuracy_over_seeds(ax, runs, labels, epochs):
    """Test accuracy per epoch, mean over the seeds (line) and min-max (band), one run per entry."""
    for (key, rs), style in zip(runs.items(), ({"color": "k", "marker": "o"}, {"color": "0.55", "marker": "s"})):
        acc = np.array([r["accuracy"] for r in rs])  # (seeds, epochs)
        x = np.arange(1, epochs + 1)
        ax.plot(x, acc.mean(axis=0), ms=4, label=f"{labels[key]}: {acc[:, -1].mean():.3f} ± {acc[:, -1].std():.3f}",
                **style)
        ax.fill_between(x, acc.min(axis=0), acc.max(axis=0), color=style["color"], alpha=0.15)
    epoch_axis(ax, epochs)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=10, loc="lower right", title="last epoch, mean ± std", title_fontsize=10)


def usage_spread(usage):
    """(share of the two busiest experts, share of the least used one) of one layer's counts (E,)."""
    share = np.sort(usage / usage.sum())
    return share[-2:].sum(), share[0]


def run_digits(args):
    X_train, X_test, y_train, y_test = load_digits_images(seed=0)
    if args.quick:
        X_train, y_train, X_test, y_test = X_train[:64], y_train[:64], X_test[:32], y_test[:32]
    epochs, seeds = (1, [0]) if args.quick else (15, [0, 1, 2, 3, 4])
    progress = Progress(len(BALANCES) * len(seeds) * epochs, what="images")
    runs = {}
    for balance, label in BALANCES.items():
        for seed in seeds:
            model = ImageMoEClassifier(in_channels=1, image_size=8, channels=(32, 64), hidden=256, n_classes=10,
                                       n_experts=4, top_k=2, balance=balance, seed=seed,
                                       balance_weight=0.01 if balance == "seed000" else 0.1)
            runs.setdefault(balance, []).append(
                train_and_track(model, X_train, y_train, X_test, y_test, epochs, 64, 1e-3, seed=seed,
                                progress=progress, label=f"{label}, seed {seed}"))
    progress.done()
    print(f"\n8x8 digits, {len(y_train)} train / {len(y_test)} test images, {epochs} epochs, batches of 64, "
          f"seeds {seeds}")
    print("last epoch, over the seeds: test accuracy; shares of the test images' top-2 assignments taken by the "
          "two busiest experts\nand by the least used one (min-max); time per epoch")
    print(f"{'balance loss':<28} {'test accuracy':>15} {'(min-max)':>13} {'two busiest':>12} {'least used':>11} "
          f"{'s/epoch':>8}   test images per expert, seed {seeds[0]}")
    for balance, rs in runs.items():
        accs = np.array([r["accuracy"][-1] for r in rs])
        spread = np.array([usage_spread(r["usage"][-1, 0]) for r in rs])
        print(f"{BALANCES[balance]:<28} {accs.mean():>7.4f} ± {accs.std():.4f} ({accs.min():.3f}-{accs.max():.3f}) "
              f"{spread[:, 0].min():>5.2f}-{spread[:, 0].max():.2f} {spread[:, 1].min():>5.2f}-{spread[:, 1].max():.2f} "
              f"{np.mean([np.mean(r['time']) for r in rs]):>8.2f}   {rs[0]['usage'][-1, 0].tolist()}")
    for balance, rs in runs.items():
        print(f"{BALANCES[balance]}: share of the least used expert per seed "
              + ", ".join(f"{usage_spread(r['usage'][-1, 0])[1]:.2f}" for r in rs))
    fig = plt.figure(figsize=(11, 8.8))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.15])
    ax = fig.add_subplot(grid[0, :])
    plot_accuracy_over_seeds(ax, runs, BALANCES, epochs)
    ax.set_title(f"test accuracy per epoch: mean (line) and min-max (band) over {len(seeds)} seeds")
    for col, (balance, rs) in enumerate(runs.items()):
        plot_usage(fig.add_subplot(grid[1, col]), rs[0]["usage"][:, 0],
                   f"{BALANCES[balance].replace(' (', chr(10) + '(')}, seed {seeds[0]}", 2, legend=col == 1)
    idle = {b: sum(usage_spread(r["usage"][-1, 0])[1] == 0 for r in rs) for b, rs in runs.items()}
    final = {b: np.array([r["accuracy"][-1] for r in rs]) for b, rs in runs.items()}
    fig.suptitle(f"Post 000 on 8x8 digits, {len(seeds)} seeds: test accuracy {final['seed000'].mean():.3f} ± "
                 f"{final['seed000'].std():.3f} with the post's loss, {final['importance_load'].mean():.3f} ± "
                 f"{final['importance_load'].std():.3f} with importance + load;\nsome expert gets no test image in "
                 f"{idle['seed000']} of {len(seeds)} seeds with the post's loss, in {idle['importance_load']} of "
                 f"{len(seeds)} with importance + load (usage: seed {seeds[0]})")
    fig.tight_layout()
    savefig(fig, args, "images_digits.png")
    return runs


def run_cifar(args):
    X_train, X_test, y_train, y_test = load_cifar10(args.cifar)
    if args.quick:
        X_train, y_train, X_test, y_test = X_train[:64], y_train[:64], X_test[:32], y_test[:32]
    scale = lambda x: x.astype(np.float32) / np.float32(127.5) - 1  # noqa: E731  (x/255 - 0.5) / 0.5
    epochs = 1 if args.quick else args.cifar_epochs
    print(f"\nCIFAR-10, {len(y_train)} train / {len(y_test)} test images, the post's layout in float32")
    model = ImageMoEClassifier(in_channels=3, image_size=32, channels=(32, 64), hidden=512, n_classes=10,
                               n_experts=4, top_k=2, balance="seed000", seed=0, dtype="float32")
    r = train_and_track(model, scale(X_train), y_train, scale(X_test), y_test, epochs, 64, 1e-3, seed=0)
    print(f"CIFAR-10: test accuracy {r['accuracy'][-1]:.4f}, {np.mean(r['time']):.1f} s per epoch")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].plot(np.arange(1, epochs + 1), r["accuracy"], marker="o", label="post 000 layout, post-000 loss")
    epoch_axis(axes[0], epochs)
    axes[0].set_ylabel("test accuracy")
    axes[0].set_title("CIFAR-10 test accuracy per epoch (seed 0)")
    axes[0].legend(fontsize=10)
    plot_usage(axes[1], r["usage"][:, 0], "expert usage on the test images (seed 0)", 2)
    fig.suptitle("Post 000 on CIFAR-10 (NumPy, float32, the post's balance loss): accuracy and expert "
                 "usage per epoch")
    savefig(fig, args, "images_cifar10.png")
    return r


def cifar_folder(text):
    """argparse type of ``--cifar``: a folder holding the six CIFAR-10 binary batches.

    Checked at the command line: before, a wrong folder surfaced as a FileNotFoundError only after the
    whole digits study had trained (minutes in full mode), and its figure was lost with the run.
    """
    folder = Path(text)
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder; expected the folder holding the CIFAR-10 "
                                         "binary batches (cifar-10-batches-bin)")
    missing = [n for n in CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,) if not (folder / n).is_file()]
    if missing:
        raise argparse.ArgumentTypeError(f"{text!r} lacks {', '.join(missing)}")
    return folder


def main(argv=None):
    def extra(parser):
        parser.add_argument("--cifar", metavar="DIR", type=cifar_folder,
                            help="folder with the CIFAR-10 binary batches (*.bin)")
        parser.add_argument("--cifar-epochs", type=positive_int, default=10, help="CIFAR-10 epochs (default 10)")
    args = parse_args(argv, __doc__, extra)
    with threadpool_limits(limits=1, user_api="blas"):
        out = {"digits": run_digits(args)}
        if args.cifar:
            out["cifar10"] = run_cifar(args)
    return out


if __name__ == "__main__":
    main()
