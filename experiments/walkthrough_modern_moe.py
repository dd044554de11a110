"""Walk-through: today's MoE blocks (Mixtral, DeepSeek-V3) built from parts, every gradient checked.

Run it as a script (``python -m experiments walkthrough_modern_moe``) or cell by cell (``# %%`` cells in
VS Code, PyCharm, Spyder, Jupytext). MATH.md §10 derives every formula used here.
"""
# %% [markdown]
# The MoE layers of 2017-2022 papers route with a softmax over a few large ReLU experts. The MoE you meet
# in today's open models differs in four places:
#
# - experts are gated-linear units, `E(x) = (silu(x W_gate) * (x W_up)) W_down` (SwiGLU), without biases;
# - the router's scores are a softmax (Mixtral, Qwen) or, in DeepSeek-V3, a sigmoid per expert; the K kept
#   scores are often renormalised to sum to 1 and multiplied by a "routed scaling factor";
# - DeepSeek-V2/V3 limit each token to a few *groups* of experts (a group lives on one device or node), and
#   DeepSeek-V3 balances the load with a bias added to the scores for the *choice* only, moved by a sign
#   rule after each step instead of by a loss;
# - an always-on *shared* expert is added to the routed output.
#
# numpy_moe builds each block by composing objects: `MoE(gate=..., experts=..., shared=..., balance=[...])`.

# %%
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import matplotlib.pyplot as plt
import numpy as np

from experiments._common import Progress, parse_args, savefig
from numpy_moe import balance as B
from numpy_moe.backend import default_rng
from numpy_moe.experts import ExpertBank, SharedExpert
from numpy_moe.gates import ScoreGate, TopKGate
from numpy_moe.gradcheck import check_module
from numpy_moe.moe import MoE

args = parse_args(sys.argv[1:], __doc__, notebook=True)
rng = np.random.default_rng(0)
D, O = 6, 4
progress = Progress(7, what="walkthrough_modern_moe")  # one step per cell: elapsed time, time left


def perturb(moe):
    """Move every parameter off its initial value (as after training) and give the bias a value."""
    for _, p in moe.named_parameters():
        p += 0.3 * rng.standard_normal(p.shape)
    if "bias" in moe.gate.buffers:
        moe.gate.buffers["bias"][:] = 0.1 * rng.standard_normal(moe.n_experts)
    return moe


def frozen(moe, **kwargs):
    """A forward that replays one jitter draw and asserts the routing never changes under perturbation."""
    first = []

    def forward(x):
        moe.gate.rng = default_rng(1)
        y = moe.forward(x, **kwargs)
        if first:
            assert np.array_equal(first[0], moe.routing.expert), "routing changed: pick an input away from ties"
        else:
            first.append(moe.routing.expert.copy())
        return y
    return forward


progress.step("setup")

# %% [markdown]
# ## 1. A Mixtral block
# Mixtral 8x7B: 8 SwiGLU experts, top-2, softmax over all 8 logits, the two kept probabilities divided by
# their sum, and in training multiplicative jitter `x * U(1 - eps, 1 + eps)` on the router's input. The
# renormalised softmax of the top 2 *is* Shazeer's `topk_then_softmax`: a softmax over the two kept logits.

# %%
mixtral = MoE(gate=ScoreGate(D, 8, top_k=2, score="softmax", normalize=True, jitter=0.01, seed=0),
              experts=ExpertBank(8, D, O, hidden=16, seed=1, activation="swiglu"),
              balance=[B.SequenceBalance(0.02 * 2, per_sequence=False)])  # HF's loss is K times SequenceBalance
x = rng.standard_normal((12, D))
mixtral.forward(x)
shazeer = TopKGate(D, 8, top_k=2, convention="topk_then_softmax")
shazeer.params["W"][:] = mixtral.gate.params["W"]
mixtral.eval()
same = np.allclose(mixtral.gate.forward(x).weight, shazeer.forward(x).weight, rtol=1e-12)
print("Mixtral's renormalised top-2 equals a softmax over the two kept logits:", same)
mixtral.train()
progress.step("1. Mixtral block")

# %% [markdown]
# Every gradient, through the whole layer, against central differences (float64, h = 1e-6; pass mark
# 1e-6 for a composed model). `frozen` replays one jitter draw and checks that no perturbation changed
# which experts were chosen: the gradient of a fixed routing is what backward computes.

# %%
perturb(mixtral)
errors = check_module(mixtral, x, tol=1e-6, forward=frozen(mixtral))
print(f"Mixtral block: worst relative error over {len(errors)} tensors {max(errors.values()):.1e}")
progress.step("1. Mixtral gradient check")

# %% [markdown]
# ## 2. A DeepSeek-V3 block
# 16 fine-grained routed SwiGLU experts in 4 groups, top-4 from the best 2 groups (a group scores by the
# sum of its two best biased scores), sigmoid scores renormalised over the kept 4 and multiplied by 2.5, a
# selection bias updated by `b_e += u sign(mean load - load_e)` after each step, one shared expert, and a
# small sequence-wise balance loss computed per sequence of the batch, counting each token's top-4 of the
# unbiased scores as the paper's eq. 18 does (not the biased, group-limited choice).

# %%
v3 = MoE(gate=ScoreGate(D, 16, top_k=4, score="sigmoid", normalize=True, scale=2.5, n_groups=4, topk_groups=2,
                        group_score="top2", bias_update=1e-3, seed=0),
         experts=ExpertBank(16, D, O, hidden=8, seed=1, activation="swiglu"),
         shared=SharedExpert(D, O, hidden=8, seed=2),
         balance=[B.SequenceBalance(1e-2, counts="top_scores")])
perturb(v3)
seqs = [5, 7]  # the batch holds two sequences
errors = check_module(v3, x, tol=1e-6, forward=frozen(v3, seq_lengths=seqs))
print(f"DeepSeek-V3 block: worst relative error over {len(errors)} tensors {max(errors.values()):.1e}")
r = v3.routing
groups = r.expert.reshape(12, 4) // 4
print("groups each token used (at most 2 of 4):", [sorted(set(g)) for g in groups.tolist()[:4]], "...")
progress.step("2. DeepSeek-V3 block and gradient check")

# %% [markdown]
# The bias decides *which* experts a token gets, never *how much* of them: the combine weights are the
# unbiased sigmoid scores of the chosen experts. Push expert 0's bias up and watch.

# %%
v3.eval()
before = v3.forward(x)
chosen_before = v3.routing.expert.reshape(12, 4).copy()
v3.gate.buffers["bias"][0] += 10.0
v3.forward(x)
chosen, w = v3.routing.expert.reshape(12, 4), v3.routing.weight.reshape(12, 4)
s = v3.routing.scores
print("tokens routed to expert 0 before / after:", int((chosen_before == 0).sum()), "/", int((chosen == 0).sum()))
print("weights are 2.5 s / sum s of the chosen, bias-free:",
      np.allclose(w, 2.5 * np.take_along_axis(s, chosen, 1) / np.take_along_axis(s, chosen, 1).sum(1, keepdims=True)))
v3.gate.buffers["bias"][0] -= 10.0
v3.train()
progress.step("2. the selection bias")

# %% [markdown]
# ## 3. Which conventions leave the router without a task gradient
# The router learns from the task loss only through the combine weights. Three conventions cut that path:
#
# - **top-1 with renormalisation** (Mixtral's or DeepSeek's `normalize` with K = 1, Shazeer's
#   `topk_then_softmax` with K = 1): the single weight is s / s = 1 whatever the logits (DeepSeek's
#   s / (s + 1e-20) leaves a gradient of order 1e-20, zero for any purpose);
# - **the selection itself** (top-k, the group limit, the bias): piecewise constant, so no gradient
#   reaches the bias or flows through *which* experts or groups were chosen; the bias is moved by its
#   update rule instead;
# - **a balance loss built from those weights**: Shazeer's importance over the combine weights
#   (`Importance(source="gates")`) sees the constant 1s of a renormalised top-1 router, i.e. hard counts,
#   and gives no gradient either (the layer does not count it as a way to train the router).
#
# Renormalising K >= 2 weights is fine: s_e / sum s still depends on every kept logit.
#
# Measure it: the norm of the router's weight gradient from a task loss alone, per convention.

# %%
conventions = {
    "softmax top-2\n(V-MoE, post 000)": dict(score="softmax", normalize=False, top_k=2),
    "softmax top-1\n(Switch)": dict(score="softmax", normalize=False, top_k=1),
    "softmax top-1\nrenormalised": dict(score="softmax", normalize=True, top_k=1),
    "sigmoid top-1": dict(score="sigmoid", normalize=False, top_k=1),
    "sigmoid top-1\nrenormalised": dict(score="sigmoid", normalize=True, top_k=1),
    "sigmoid top-4\nrenormalised (V3)": dict(score="sigmoid", normalize=True, top_k=4),
}
norms = {}
for name, kw in conventions.items():
    gate = ScoreGate(D, 16, seed=3, **kw)
    gate.forward(x)
    gate.backward({"weight": rng.standard_normal(12 * kw["top_k"])})  # a task loss's gradient of the weights
    norms[name] = float(np.linalg.norm(gate.grads["W"]))
    print(f"{name.replace(chr(10), ' '):<34} |dL/dW_router| = {norms[name]:.2e}")
assert norms["softmax top-1\nrenormalised"] < 1e-15 and norms["sigmoid top-1\nrenormalised"] < 1e-15
try:
    MoE(gate=ScoreGate(D, 16, top_k=1, normalize=True), experts=ExpertBank(16, D, O, 8, activation="swiglu"))
except ValueError as err:
    print("\nThe layer refuses the degenerate case unless a balance loss trains the router:\n ", str(err)[:120], "...")
progress.step("3. router gradient per convention")

# %%
fig, ax = plt.subplots(figsize=(11, 4.6))
names = list(norms)
values = [max(v, 1e-18) for v in norms.values()]
bars = ax.bar(range(len(names)), values, color=["tab:red" if v < 1e-15 else "tab:blue" for v in norms.values()])
ax.set_yscale("log")
ax.set_ylim(1e-18, 100)
ax.set_xticks(range(len(names)), names, fontsize=11)
ax.set_ylabel("|dL/dW| of the router\nfrom the task loss alone")
for bar, v in zip(bars, norms.values()):
    ax.text(bar.get_x() + bar.get_width() / 2, max(v, 1e-18) * 2, f"{v:.0e}" if v < 1e-15 else f"{v:.2f}",
            ha="center", fontsize=11)
ax.set_title("Top-1 with renormalised weights (s / s = 1) leaves the router with no task gradient,\n"
             "softmax or sigmoid alike")
fig.tight_layout()
savefig(fig, args, "walkthrough_modern_moe.png")
progress.step("3. figure")

# %% [markdown]
# ## Exercises
# Try each, then check the outcome stated.
#
# 1. Gradient-check the Mixtral block without `frozen`: `check_module(mixtral, x, tol=1e-6)`. Every
#    tensor fails with relative error 1.00 and "numeric gradients" near 1e4: the jitter is drawn anew
#    at every evaluation, so L jumps between the two sides of each central difference.
# 2. Limit each DeepSeek-V3 token to one group (`topk_groups=1`): the printed groups become one per
#    token (`[[1], [1], [3], [1]]`), and the block still passes its gradient check (~1e-9).
# 3. Build the V3 block with `normalize=False`: the combine weights become 2.5 s, not divided by the sum
#    of the chosen scores, so the last check of section 2 prints False; the gradient check still passes.
