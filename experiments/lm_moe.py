"""MoE inside a tiny Transformer LM: against dense models of equal active / total size; what experts specialise in.

Data (numpy_moe.data_text): four synthetic character-level languages mixed in one stream, each sequence
labelled by its source: arithmetic (``^12+7=19$``), balanced brackets (``^([a]{})$``), copying
(``^a3kb>a3kb$``) and reversing (``^a3kb<bk3a$``); 34 tokens, sequences of at most 19, right-padded.
Each training step draws a fresh batch of 32 sequences from the stream (the same batches for every
model of a seed); the validation set is 512 other sequences.

Models (numpy_moe.models.transformer.TransformerLM): D = 32, 2 heads, 2 pre-LN blocks, tied embeddings,
next-token cross-entropy over the real tokens (MATH.md §15). Their feed-forward sublayers differ:

- MoE: E = 4 ReLU MLP experts of hidden width 32 per block, softmax then top-2, the top-k f·P balance
  loss (SequenceBalance over the batch, alpha = 0.01) with the padding masked out of its statistics;
- MoE, per-sequence balance: the same, with the f·P loss taken per sequence and averaged (DeepSeek-V3's
  sequence-wise loss), which pushes every sequence, hence every source, to use every expert;
- dense, equal active: one ReLU MLP of width 64 (= K x 32, what a token passes through in the MoE);
- dense, equal total: one ReLU MLP of width 128 (= E x 32, every expert parameter).

Adam, learning rate warmed up over 50 steps to 1e-2 and decayed (cosine) to 1e-3, 800 steps, five seeds
(weights and batches; the validation set is fixed). Validation loss is measured every 50 steps, against
steps and against training seconds: the CPU time of the process (forward, backward, Adam; evaluation not
counted), which other jobs on the shared 2-core development machine disturb less than the wall clock,
but which is still noisy: compare ratios only. BLAS runs on one thread.

Specialisation: the validation tokens are routed through each MoE block and every token's first-choice
expert is counted by the source of its sequence and by the type of the token (boundary, digit, operator,
bracket, letter, separator). The question is whether experts become "topic" (source) specialists or
token-type specialists; the normalised mutual information I(expert; X) / H(expert) measures how much of
the routing X explains, and I(expert; source | type) / H(expert) what the source adds once the token's
type is known (0: the source adds nothing). Figures: plots/lm_moe.png (loss against steps and seconds)
and plots/lm_moe_experts.png (expert-by-source and expert-by-type heatmaps, and, for the digits and
letters that several sources share, expert by source within the type; seed 0).
"""
import sys
import time
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import matplotlib.pyplot as plt
import numpy as np
from threadpoolctl import threadpool_limits

from experiments._common import Progress, parse_args, positive_int, savefig
from numpy_moe import balance as B
from numpy_moe.data_text import MAX_LEN, SOURCES, TOKEN_TYPES, VOCAB, synthetic_languages, token_types
from numpy_moe.models.transformer import TransformerLM
from numpy_moe.optim import Adam
from numpy_moe.plotting import EXPERT_COLORS

D, HEADS, LAYERS, E, K, H, ALPHA, LR = 32, 2, 2, 4, 2, 32, 0.01, 1e-2
MOE, MOE_SEQ = "MoE, 4 experts top-2", "MoE, per-sequence balance"
ACTIVE, TOTAL = "dense, equal active", "dense, equal total"
MODELS = {
    MOE: dict(hidden=H, moe=dict(n_experts=E, top_k=K, hidden=H,
                                 balance=[B.SequenceBalance(ALPHA, per_sequence=False)])),
    MOE_SEQ: dict(hidden=H, moe=dict(n_experts=E, top_k=K, hidden=H, balance=[B.SequenceBalance(ALPHA)])),
    ACTIVE: dict(hidden=K * H, activation="relu"),
    TOTAL: dict(hidden=E * H, activation="relu"),
}


def build(name, seed):
    return TransformerLM(len(VOCAB), d_model=D, n_heads=HEADS, n_layers=LAYERS, max_len=MAX_LEN - 1, seed=seed,
                         **MODELS[name])


def split(tokens):
    """Sequences (n, L) -> inputs (n, L-1), next-token targets (n, L-1), mask of real targets (n, L-1)."""
    return tokens[:, :-1], tokens[:, 1:], tokens[:, 1:] != 0


def token_losses(model, val, batch=256):
    """Cross-entropy of every validation target (n, L-1) in evaluation mode, 0 at the padding."""
    model.eval()
    x, y, m = split(val)
    out = np.zeros(y.shape)
    for i in range(0, len(x), batch):
        logits = model.forward(x[i:i + batch], m[i:i + batch])
        logp = logits - logits.max(axis=-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
        out[i:i + batch] = -np.take_along_axis(logp, y[i:i + batch, :, None], axis=-1)[..., 0] * m[i:i + batch]
    model.train()
    return out


def validation_loss(model, val):
    """Mean cross-entropy per real target token over the validation set."""
    return token_losses(model, val).sum() / split(val)[2].sum()


def per_source_loss(model, val, sources):
    """(len(SOURCES),): the validation loss of each source's tokens."""
    losses, m = token_losses(model, val), split(val)[2]
    return np.array([losses[sources == s].sum() / m[sources == s].sum() for s in range(len(SOURCES))])


def learning_rate(step, total, warmup=50):
    """Linear warm-up to LR over ``warmup`` steps, then a cosine decay to LR / 10 (as GPT-style training)."""
    if step <= warmup:
        return LR * step / warmup
    return LR * (0.1 + 0.45 * (1 + np.cos(np.pi * (step - warmup) / max(1, total - warmup))))


def train(model, batches, every, val, progress, label):
    """Adam over the batches; returns (steps, training seconds, validation loss) at every ``every`` steps."""
    opt = Adam(LR)
    steps, seconds, losses = [0], [0.0], [validation_loss(model, val)]
    spent = 0.0
    for step, batch in enumerate(batches, 1):
        opt.lr = learning_rate(step, len(batches))
        t = time.process_time()  # CPU time of this process: less disturbed by other jobs than the wall clock
        loss = model.loss_and_grads(*split(batch))
        opt.step(model)
        model.end_step()
        spent += time.process_time() - t
        if step % every == 0 or step == len(batches):
            steps.append(step)
            seconds.append(spent)
            losses.append(validation_loss(model, val))
        progress.step(f"{label}: step {step}, loss {loss:.3f}")
    return np.array(steps), np.array(seconds), np.array(losses)


def routing_table(model, val, sources):
    """Per MoE block, the first-choice expert of every real validation token, with its source and type."""
    x, _, m = split(val)
    model.eval()
    model.forward(x, m)
    model.train()
    kinds = token_types()[x]  # (n, T)
    src = np.broadcast_to(sources[:, None], x.shape)
    out = []
    for layer in model.moe_layers():
        r = layer.routing
        first = r.expert.reshape(-1, r.top_k)[:, 0]  # the highest-weighted expert of each token
        out.append((first[m.ravel()], src[m], kinds[m]))
    return out


def entropy(*labels):
    """Joint entropy (nats) of the empirical distribution of the label columns."""
    _, counts = np.unique(np.stack(labels, axis=1), axis=0, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def specialisation(expert, source, kind):
    """Normalised mutual informations: I(e; source), I(e; type), I(e; source | type), I(e; type | source), each
    divided by H(e)."""
    He = entropy(expert)
    mi = {
        "source": entropy(expert) + entropy(source) - entropy(expert, source),
        "type": entropy(expert) + entropy(kind) - entropy(expert, kind),
        "source | type": entropy(expert, kind) + entropy(source, kind) - entropy(expert, source, kind)
        - entropy(kind),
        "type | source": entropy(expert, source) + entropy(kind, source) - entropy(expert, kind, source)
        - entropy(source),
    }
    return {k: v / He for k, v in mi.items()}


def shares(expert, label, n_labels):
    """(E, n_labels): the share of each label's tokens whose first choice is each expert (columns sum to 1)."""
    counts = np.zeros((E, n_labels))
    np.add.at(counts, (expert, label), 1)
    return counts / counts.sum(axis=0, keepdims=True)


def heatmap(ax, table, columns, title):
    im = ax.imshow(table, vmin=0, vmax=1, cmap="Greys", aspect="auto")
    ax.set_xticks(range(len(columns)), columns, rotation=30, ha="right")
    ax.set_yticks(range(E), [f"expert {e}" for e in range(E)])
    for tick, color in zip(ax.get_yticklabels(), EXPERT_COLORS):
        tick.set_color(color)
        tick.set_fontweight("bold")
    for (i, j), v in np.ndenumerate(table):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v > 0.5 else "black", fontsize=10)
    ax.set_title(title)
    return im


def main(argv=None):
    args = parse_args(argv, __doc__, extra=lambda p: p.add_argument(
        "--seeds", type=positive_int, default=5, help="number of seeds (default 5)"))
    seeds, steps, every, batch, n_val = (([0], 12, 4, 8, 64) if args.quick
                                         else (list(range(args.seeds)), 800, 50, 32, 512))
    val, _, val_source = synthetic_languages(n_val, seed=10_000)
    progress = Progress(len(MODELS) * len(seeds) * steps, what="lm_moe")
    curves, by_source, params = {name: [] for name in MODELS}, {name: [] for name in MODELS}, {}
    tables = {MOE: [], MOE_SEQ: []}
    start, cpu = time.perf_counter(), time.process_time()
    with threadpool_limits(limits=1, user_api="blas"):
        for seed in seeds:
            data, _, _ = synthetic_languages(steps * batch, seed=seed)
            batches = [data[i * batch:(i + 1) * batch] for i in range(steps)]
            for name in MODELS:
                model = build(name, seed)
                curves[name].append(train(model, batches, every, val, progress, f"{name}, seed {seed}"))
                by_source[name].append(per_source_loss(model, val, val_source))
                if name in tables:
                    tables[name].append(routing_table(model, val, val_source))
                params[name] = model
    progress.done()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu

    active = {name: m.n_parameters() for name, m in params.items()}
    moe_layers = params[MOE].moe_layers()
    per_expert = sum(p.size for n, p in moe_layers[0].experts.named_parameters()) // E
    active[MOE] = active[MOE_SEQ] = params[MOE].n_parameters() - LAYERS * (E - K) * per_expert
    print(f"\n{len(seeds)} seeds x {steps} steps of {batch} sequences; validation: {n_val} sequences "
          f"({int(split(val)[2].sum())} target tokens).")
    print(f"Whole study: {cpu:.0f} s of CPU time, {wall:.0f} s wall clock (the machine is shared); 'train s' is the "
          "CPU time of one model's training (BLAS on one thread), mean over seeds")
    print(f"{'model':<27} {'total params':>12} {'active':>8} {'final val loss (mean ± std)':>28} {'(min-max)':>13} "
          f"{'train s':>8}")
    final = {}
    for name, runs in curves.items():
        final[name] = np.array([r[2][-1] for r in runs])
        secs = np.array([r[1][-1] for r in runs])
        print(f"{name:<27} {params[name].n_parameters():>12,} {active[name]:>8,} {final[name].mean():>19.4f} ± "
              f"{final[name].std():.4f} ({final[name].min():.3f}-{final[name].max():.3f}) {secs.mean():>7.1f}")
    for moe, other in [(MOE, ACTIVE), (MOE, TOTAL), (MOE_SEQ, ACTIVE), (MOE_SEQ, MOE)]:
        diff = final[moe] - final[other]
        print(f"{moe} - {other}, paired by seed: {diff.mean():+.4f} ± {diff.std():.4f}; lower in "
              f"{int((diff < 0).sum())} of {len(seeds)} seeds")
    budget = min(np.mean([r[1][-1] for r in runs]) for runs in curves.values())
    at_budget = {name: np.array([np.interp(budget, r[1], r[2]) for r in runs]) for name, runs in curves.items()}
    print(f"validation loss after {budget:.1f} CPU seconds of training (the fastest model's mean time; "
          "interpolated between evaluations): " + ", ".join(
              f"{name} {v.mean():.3f} ± {v.std():.3f}" for name, v in at_budget.items()))

    print("\nfinal validation loss per source, mean ± std over the seeds")
    print(f"{'model':<27}" + "".join(f"{s:>17}" for s in SOURCES))
    for name, rows in by_source.items():
        rows = np.array(rows)
        print(f"{name:<27}" + "".join(f"{m:>10.3f} ± {sd:.3f}" for m, sd in zip(rows.mean(0), rows.std(0))))

    print("\nWhat the MoE's experts specialise in (validation tokens, first-choice expert): "
          "I(expert; X) / H(expert), "
          f"mean ± std over {len(seeds)} seeds")
    keys = ("source", "type", "source | type", "type | source")
    print(f"{'model, block':<34}" + "".join(f"{'X = ' + k:>20}" for k in keys))
    summary = {}
    for name, runs in tables.items():
        summary[name] = []
        for layer in range(len(runs[0])):
            rows = np.array([[specialisation(*t[layer])[k] for k in keys] for t in runs])  # (seeds, 4)
            summary[name].append(rows.mean(axis=0))
            print(f"{name + ', block ' + str(layer + 1):<34}"
                  + "".join(f"{m:>13.3f} ± {s:.3f}" for m, s in zip(rows.mean(0), rows.std(0))))

    for layer, (expert, source, kind) in enumerate(tables[MOE][0]):
        print(f"\n{MOE}, block {layer + 1}, seed {seeds[0]}: share of each source's / type's tokens sent first to "
              "each expert")
        by_source, by_type = shares(expert, source, len(SOURCES)), shares(expert, kind, len(TOKEN_TYPES))
        print(f"{'':<10}" + "".join(f"{s:>11}" for s in SOURCES) + " |" + "".join(f"{t:>10}" for t in TOKEN_TYPES))
        for e in range(E):
            print(f"expert {e:<3}" + "".join(f"{v:>11.2f}" for v in by_source[e]) + " |"
                  + "".join(f"{v:>10.2f}" for v in by_type[e]))

    plot_curves(args, curves, seeds, active, params, final, budget, at_budget)
    plot_experts(args, tables[MOE][0], seeds[0], summary[MOE])
    return curves, tables


STYLES = {MOE: dict(color="#000000"), MOE_SEQ: dict(color="#000000", ls=":"),
          ACTIVE: dict(color="#1b9e77", ls="--"), TOTAL: dict(color="#d95f02")}


def plot_curves(args, curves, seeds, active, params, final, budget, at_budget):
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5), layout="constrained", sharey=True)
    for name, runs in curves.items():
        steps = runs[0][0]
        loss = np.array([r[2] for r in runs])  # (seeds, evaluations)
        label = f"{name} ({active[name]:,} active / {params[name].n_parameters():,} total)"
        axes[0].plot(steps, loss.mean(axis=0), label=label, **STYLES[name])
        axes[0].fill_between(steps, loss.min(axis=0), loss.max(axis=0), alpha=0.12, color=STYLES[name]["color"])
        for _, sec, l in runs:
            axes[1].plot(sec, l, lw=0.6, alpha=0.35, **STYLES[name])
        axes[1].plot(np.mean([r[1] for r in runs], axis=0), loss.mean(axis=0), lw=2, label=name, **STYLES[name])
    axes[1].axvline(budget, color="#888888", lw=0.8)
    axes[0].set_xlabel("training step (32 sequences each)")
    axes[0].set_ylabel("validation loss (nats per token)")
    axes[0].set_title(f"against steps: mean, min-max band over {len(seeds)} seeds")
    axes[0].legend(fontsize=10)
    axes[1].set_xlabel("training CPU seconds (one thread; machine shared, so noisy)")
    axes[1].set_title(f"against time: mean (thick), each seed (thin); line at {budget:.1f} s")
    axes[1].legend(fontsize=10)
    top = max(2.8, max(v.max() for v in final.values()) + 0.3)  # the first steps' fall from 3.5 is cut off
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.set_ylim(top=top)
    best_step = min(final, key=lambda n: final[n].mean())
    best_time = min(at_budget, key=lambda n: at_budget[n].mean())
    d_end, d_time = final[MOE] - final[ACTIVE], at_budget[MOE] - at_budget[ACTIVE]
    fig.suptitle(f"Tiny Transformer LM on 4 synthetic languages, {len(seeds)} seeds. Lowest loss at the last step: "
                 f"{best_step}; after {budget:.1f} CPU seconds: {best_time}.\nMoE minus dense of equal active "
                 f"parameters, paired by seed: {d_end.mean():+.3f} ± {d_end.std():.3f} at the last step, "
                 f"{d_time.mean():+.3f} ± {d_time.std():.3f} at equal CPU time")
    savefig(fig, args, "lm_moe.png")


SHARED = [("digit", ("arithmetic", "copy", "reverse")), ("letter", ("brackets", "copy", "reverse"))]


def within_type(expert, source, kind):
    """(E, 6): for the token types several sources share, the share of each (type, source)'s tokens per expert."""
    cols, names = [], []
    for kind_name, sources in SHARED:
        for src in sources:
            pick = (kind == TOKEN_TYPES.index(kind_name)) & (source == SOURCES.index(src))
            cols.append(np.bincount(expert[pick], minlength=E) / max(1, pick.sum()))
            names.append(f"{kind_name}s in {src}")
    return np.stack(cols, axis=1), names


def plot_experts(args, table, seed, summary):
    fig, axes = plt.subplots(len(table), 3, figsize=(17, 4.4 * len(table)), layout="constrained",
                             gridspec_kw=dict(width_ratios=[len(SOURCES), len(TOKEN_TYPES), 6]))
    axes = np.atleast_2d(axes)
    for layer, (expert, source, kind) in enumerate(table):
        s = summary[layer]
        heatmap(axes[layer, 0], shares(expert, source, len(SOURCES)), SOURCES,
                f"block {layer + 1}: by source (I/H {s[0]:.2f})")
        heatmap(axes[layer, 1], shares(expert, kind, len(TOKEN_TYPES)), TOKEN_TYPES,
                f"by token type (I/H {s[1]:.2f})")
        im = heatmap(axes[layer, 2], *within_type(expert, source, kind),
                     f"one type, several sources (source | type: I/H {s[2]:.2f})")
    fig.colorbar(im, ax=axes, shrink=0.6, label="share of the column's tokens whose first choice is the expert")
    by_type = np.mean([s[1] for s in summary]) > np.mean([s[0] for s in summary])
    fig.suptitle(f"Where each validation token goes first (seed {seed}; I/H: mutual information over the expert's "
                 "entropy, mean over seeds):\nrouting follows the token's "
                 f"{'type more than its source' if by_type else 'source more than its type'}; "
                 "the right panels show what the source adds within one type")
    savefig(fig, args, "lm_moe_experts.png")


if __name__ == "__main__":
    main()
