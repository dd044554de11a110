"""Eight routers side by side: top-k, top-k + aux loss, expert choice, aux-free bias, Soft MoE, BASE, Sinkhorn, hash.

The task is token-level: each 8x8 digit is a sequence of T = 16 tokens, its 2x2 patches. A token's
features are its 4 pixels (scaled to [0, 1], not centred, so routers start out crowding a few experts) and
a one-hot of its position (16), D = 20. One MoE layer maps every token to O = 8 features with E = 8
experts (ReLU MLPs of hidden width 16, the same experts for every router); the 16 token outputs are
concatenated and a linear layer classifies the digit. Same experts, same data, same batches, Adam, for

- top-k softmax: TopKGate, softmax then top-2, no balancing;
- top-k + aux loss: the same with the top-k f·P loss (SequenceBalance over the batch) at alpha = 0.1;
- expert choice: each expert takes 2 N / E tokens (capacity_factor = 2, the same N K assignments);
- aux-free bias: ScoreGate, softmax scores, top-2, the selection bias of Wang et al. 2024, u = 0.01;
- Soft MoE: one group per digit (its 16 tokens), S = 4 slots per expert, so E S = 2 T: the same expert
  work as top-2;
- BASE: the exact balanced assignment in training, greedy in evaluation, x-free form (the layer maps 20 ->
  8, so no residual); top-1 by its definition;
- Sinkhorn: S-BASE / Megatron's sinkhorn, top-2;
- hash: a balanced hash (Roller et al. 2021) of the token id = position x 16 + the patch's 4 pixels
  thresholded at 0.5 (256 ids, Zipf-like: blank patches are frequent), built on the training tokens;
  top-1 by its definition.

The top-k style routers (top-k, aux, bias, Sinkhorn, BASE, hash) run with capacity factor 1.25, so
imbalance costs dropped assignments, as in Switch; expert choice cannot drop but can leave tokens
unrouted (no expert picked them); Soft MoE neither drops nor leaves out anything. Reported per router,
mean ± std over seeds: test accuracy; the load in training (CV = std / mean of assignments per expert,
max / mean) and in evaluation on the test set (max / mean); the fraction of assignments dropped
(tokens unrouted for expert choice) in training; time per training step (forward, backward, Adam step;
the 10th percentile over the steps, the least disturbed by other processes on the shared 2-core machine,
so only the ratios mean anything). BASE and Sinkhorn route greedily in evaluation, as their papers do; they
are evaluated a second time routing as in training (balanced over each test batch), to measure what the
switch costs.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from experiments._common import Progress, parse_args, savefig
from numpy_moe import balance as B
from numpy_moe import functional as F
from numpy_moe.backend import default_rng, to_numpy
from numpy_moe.experts import ExpertBank
from numpy_moe.gates import BaseGate, ExpertChoiceGate, HashGate, ScoreGate, SinkhornGate, TopKGate
from numpy_moe.layers import Linear, Sequential
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam
from numpy_moe.soft_moe import SoftMoE

T, D, O, E, H, K, CAPACITY, N_KEYS = 16, 20, 8, 8, 16, 2, 1.25, 256
ROUTERS = ("top-k softmax", "top-k + aux loss", "expert choice", "aux-free bias", "Soft MoE", "BASE",
           "Sinkhorn", "hash (balanced)")


def tokens(X):
    """Digits (n, 64) in [0, 1] -> tokens (n T, D) and token ids (n T,): 2x2 patches with their position."""
    n = X.shape[0]
    patches = X.reshape(n, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(n, T, 4)  # (n, 16, 4), row-major
    position = np.broadcast_to(np.eye(T), (n, T, T))
    feats = np.concatenate([patches, position], axis=2).reshape(n * T, D)
    code = ((patches > 0.5) * np.array([1, 2, 4, 8])).sum(axis=2)  # (n, 16) in [0, 16)
    ids = (np.arange(T) * 16 + code).reshape(-1)
    return feats, ids


def build(name, rng, train_ids):
    """The routed layer of router ``name`` (every one with the same E experts of the same shape)."""
    experts = ExpertBank(E, D, O, H, seed=rng)
    if name == "Soft MoE":
        return SoftMoE(D, O, E, slots=K * T // E, group_size=T, experts=experts, seed=rng)
    if name == "expert choice":
        return MoE(gate=ExpertChoiceGate(D, E, capacity_factor=K, seed=rng), experts=experts)
    gate, balance = {
        "top-k softmax": lambda: (TopKGate(D, E, K, seed=rng), None),
        "top-k + aux loss": lambda: (TopKGate(D, E, K, seed=rng), [B.SequenceBalance(0.1, per_sequence=False)]),
        "aux-free bias": lambda: (ScoreGate(D, E, top_k=K, score="softmax", normalize=False, bias_update=0.01,
                                            seed=rng), None),
        "BASE": lambda: (BaseGate(D, E, seed=rng), None),
        "Sinkhorn": lambda: (SinkhornGate(D, E, top_k=K, seed=rng), None),
        "hash (balanced)": lambda: (HashGate(D, E, N_KEYS, kind="balanced", seed=rng).balance(train_ids), None),
    }[name]()
    return MoE(gate=gate, experts=experts, balance=balance, capacity_factor=CAPACITY)


def load_stats(layer):
    """(assignments per expert (E,), dropped, out of) of the last forward; dropped counts unrouted tokens
    for expert choice."""
    d = layer.diagnostics
    if isinstance(layer, SoftMoE):
        return d["samples_per_expert"], 0, 1
    r = layer.routing
    if r.top_k is None:  # expert choice: tokens no expert picked
        n = r.logits.shape[0]
        return d["samples_per_expert"], n - len(np.unique(to_numpy(r.sample))), n
    return d["samples_per_expert"], d["dropped"], int(r.kept.size)


def run(name, data, seed, epochs, batch=32, progress=None):
    """Train one router; returns a dict of its metrics. ``progress`` (an ``experiments._common.Progress``)
    counts one step per epoch, outside the timed training steps."""
    Xtr, Xte, ytr, yte = data
    rng = default_rng(seed)
    (ftr, idtr), (fte, idte) = tokens(Xtr), tokens(Xte)
    layer = build(name, rng, idtr)
    head = Linear(T * O, 10, seed=rng)
    model = Sequential(layer, head)
    opt = Adam(0.01)
    is_hash = name.startswith("hash")

    def forward(X_tok, ids, n):
        y = layer.forward(X_tok, keys=ids) if is_hash else layer.forward(X_tok)
        return head.forward(y.reshape(n, T * O))

    order_rng = np.random.default_rng(seed)
    loads, drops, times = [], [], []
    for epoch in range(epochs):
        model.train()
        perm = order_rng.permutation(len(ytr))
        for i in range(0, len(perm) - batch + 1, batch):  # whole batches only: BASE and the groups stay exact
            b = perm[i:i + batch]
            rows = (b[:, None] * T + np.arange(T)).reshape(-1)
            t0 = time.perf_counter()
            logits = forward(ftr[rows], idtr[rows], len(b))
            dz = F.cross_entropy_backward(logits, ytr[b])
            layer.backward(head.backward(dz).reshape(len(b) * T, O))
            opt.step(model)
            model.end_step()
            times.append(time.perf_counter() - t0)
            if epoch == epochs - 1:
                load, dropped, total = load_stats(layer)
                loads.append(load)
                drops.append(dropped / total)
        if progress is not None:
            progress.step(f"seed {seed}, {name}: epoch {epoch + 1}")
    model.eval()

    def evaluate():
        correct, test_loads = 0, []
        for i in range(0, len(yte), batch):
            rows = np.arange(i * T, min(i + batch, len(yte)) * T)
            n = len(rows) // T
            logits = forward(fte[rows], idte[rows], n)
            correct += int((to_numpy(logits).argmax(axis=1) == yte[i:i + n]).sum())
            test_loads.append(load_stats(layer)[0])
        return correct / len(yte), np.sum(test_loads, axis=0).astype(float)

    accuracy, test_load = evaluate()
    balanced_accuracy = float("nan")
    if name in ("BASE", "Sinkhorn"):  # evaluate once more with the training-time (balanced) routing
        layer.gate.training = True
        balanced_accuracy = evaluate()[0]
        layer.gate.training = False
    train_load = np.sum(loads, axis=0).astype(float)
    return {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "cv": train_load.std() / train_load.mean(),
            "max_mean": train_load.max() / train_load.mean(), "test_max_mean": test_load.max() / test_load.mean(),
            "dropped": float(np.mean(drops)), "ms_per_step": 1000 * float(np.percentile(times, 10)),
            "train_load": train_load / train_load.sum()}


BALANCED_BY_CONSTRUCTION = ("expert choice", "Soft MoE", "BASE", "hash (balanced)")


def title(table, seeds):
    """routers.png's title: each sentence is checked against ``table`` (router -> metric -> (mean, std)) and
    replaced by what the table shows when it does not hold (a quick run, other seeds, a change to a router).
    "Balanced" is a training max / mean load under 1.05."""
    mean = {name: {k: v[0] for k, v in row.items()} for name, row in table.items()}
    best = max(mean, key=lambda n: mean[n]["accuracy"])
    most_dropped = max(mean, key=lambda n: mean[n]["dropped"])
    slowest = max(mean, key=lambda n: mean[n]["ms_per_step"])
    unbalanced = [n for n in BALANCED_BY_CONSTRUCTION if mean[n]["max_mean"] >= 1.05]
    greedy = {n: mean[n]["accuracy"] - mean[n]["balanced_accuracy"] for n in ("BASE", "Sinkhorn")}
    sentences = [
        "Balancing by a loss or by the aux-free bias is the most accurate"
        if best in ("top-k + aux loss", "aux-free bias") else f"{best} is the most accurate",
        "plain top-k drops the most" if most_dropped == "top-k softmax" else f"{most_dropped} drops the most",
        "expert choice, Soft MoE, BASE and the balanced hash are balanced in training by construction"
        if not unbalanced else "in training, max / mean load " + ", ".join(
            f"{n} {mean[n]['max_mean']:.2f}" for n in BALANCED_BY_CONSTRUCTION),
        "BASE and Sinkhorn lose accuracy by routing greedily in evaluation" if all(g < 0 for g in greedy.values())
        else "routing greedily in evaluation changes the accuracy by " + ", ".join(
            f"{g:+.3f} ({n})" for n, g in greedy.items()),
        "BASE is the slowest" if slowest == "BASE" else f"{slowest} is the slowest",
    ]
    return (f"Eight routers, the same {E} experts, digits as 16 tokens, {len(seeds)} seeds (mean ± std).\n"
            f"{sentences[0]}; {sentences[1]};\n{sentences[2]};\n{sentences[3]}; {sentences[4]}")


def main(argv=None):
    args = parse_args(argv, __doc__)
    epochs, seeds = (1, [0]) if args.quick else (12, [0, 1, 2, 3, 4])
    X, y = load_digits(return_X_y=True)
    if args.quick:
        X, y = X[:256], y[:256]
    data = train_test_split(X / 16, y, test_size=0.25, random_state=0, stratify=y)
    results = {name: [] for name in ROUTERS}
    progress = Progress(len(seeds) * len(ROUTERS) * epochs, what="routers")
    for seed in seeds:  # every router once per seed, so a busy spell of the shared machine hits them alike
        for name in ROUTERS:
            results[name].append(run(name, data, seed, epochs, progress=progress))
        print(f"  seed {seed}: done", flush=True)
    progress.done()

    keys = ("accuracy", "balanced_accuracy", "cv", "max_mean", "test_max_mean", "dropped", "ms_per_step")
    table = {name: {k: (np.mean([r[k] for r in runs]), np.std([r[k] for r in runs])) for k in keys}
             for name, runs in results.items()}
    print(f"\n{len(seeds)} seeds {seeds}, {epochs} epochs, E = {E} experts; mean ± std\n")
    print(f"| router | test accuracy | load CV (train) | max/mean (train) | max/mean (test) | dropped / unrouted "
          f"(train) | ms / step |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, row in table.items():
        cells = [f"{row['accuracy'][0]:.3f} ± {row['accuracy'][1]:.3f}", f"{row['cv'][0]:.2f} ± {row['cv'][1]:.2f}",
                 f"{row['max_mean'][0]:.2f} ± {row['max_mean'][1]:.2f}",
                 f"{row['test_max_mean'][0]:.2f} ± {row['test_max_mean'][1]:.2f}",
                 f"{100 * row['dropped'][0]:.1f}% ± {100 * row['dropped'][1]:.1f}%",
                 f"{row['ms_per_step'][0]:.1f} ± {row['ms_per_step'][1]:.1f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name in ("BASE", "Sinkhorn"):
        acc = [r["balanced_accuracy"] for r in results[name]]
        print(f"{name}: test accuracy {np.mean(acc):.3f} ± {np.std(acc):.3f} when evaluation routes as training "
              f"does (balanced), against {table[name]['accuracy'][0]:.3f} greedy")

    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 2, figsize=(12.5, 9.5))
    axes = axes.ravel()
    colors = plt.cm.tab10(np.arange(len(ROUTERS)))  # one colour per router (routers are not experts)
    ypos = np.arange(len(ROUTERS))[::-1]
    for ax, key, label in [(axes[0], "accuracy", "test accuracy"), (axes[1], "max_mean", "max / mean load"),
                           (axes[2], "dropped", "fraction dropped / unrouted (training)"),
                           (axes[3], "ms_per_step", "ms per training step (shared machine)")]:
        means = [table[n][key][0] for n in ROUTERS]
        stds = [table[n][key][1] for n in ROUTERS]
        ax.barh(ypos, means, xerr=stds, color=colors, capsize=3)
        ax.set_xlabel(label)
        ax.set_yticks(ypos)
        ax.set_yticklabels(ROUTERS if ax in (axes[0], axes[2]) else [])
        ax.grid(axis="x", alpha=0.3)
    balanced = [n for n in ROUTERS if n in ("BASE", "Sinkhorn")]
    axes[0].errorbar([table[n]["balanced_accuracy"][0] for n in balanced], [ypos[ROUTERS.index(n)] for n in balanced],
                     xerr=[table[n]["balanced_accuracy"][1] for n in balanced], fmt="D", color="black", mfc="white",
                     capsize=3, label="evaluation routed as in training")
    for ax in axes[:2]:  # room below the bars for the legend of the diamonds
        ax.set_ylim(-1.6, len(ROUTERS) - 0.4)
    axes[0].legend(fontsize=10, loc="lower left")
    axes[0].set_xlim(min(table[n]["accuracy"][0] for n in ROUTERS) - 0.05, 1.0)
    axes[1].axvline(1.0, color="black", lw=1, ls="--")
    axes[1].errorbar([table[n]["test_max_mean"][0] for n in ROUTERS], ypos,
                     xerr=[table[n]["test_max_mean"][1] for n in ROUTERS], fmt="D", color="black", mfc="white",
                     capsize=3, label="evaluation, test set")
    axes[1].legend(fontsize=10, loc="lower right")
    axes[1].set_xlabel("max / mean load: bars training,\ndiamonds evaluation")
    fig.suptitle(title(table, seeds))
    fig.tight_layout()
    savefig(fig, args, "routers.png")
    return table


if __name__ == "__main__":
    main()
