"""Walk-through: the sparse top-2 layer by hand (route, group, gather, run, scatter), its gradient, traps and cost.

Run it as a script (``python -m experiments walkthrough_sparse`` or ``python experiments/walkthrough_sparse.py``)
or cell by cell (``# %%`` cells in VS Code, PyCharm, Spyder, Jupytext; a kernel started in the repository
root or in ``experiments/``). MATH.md §2 (top-k gates) and §4 (capacity) derive the formulas used here.
"""
# %% [markdown]
# # The sparse top-k layer, by hand
#
# A dense mixture runs every expert on every sample. The layer of post 000 (and of Shazeer et al. 2017,
# GShard, Switch, V-MoE, Mixtral) keeps only the K best experts of each sample:
#
#     h = x W_g + b_g                          (N, E)  the router's logits
#     p = softmax(h)                           (N, E)
#     T_n = the K largest logits of sample n   K of the E experts, best first
#     G[n, e] = p[n, e] if e in T_n, else 0    (N, E)  "softmax_then_topk" (post 000, V-MoE): not renormalised
#     y_n = sum over e in T_n of G[n, e] E_e(x_n)
#
# As a formula this is the dense layer with most weights zero. The point of the sparse layer is never to
# compute the experts whose weight is zero: group the samples by expert, gather each expert's rows, run
# the expert on them only, and scatter the weighted outputs back. This walk-through builds each step in
# plain NumPy, checks it against `MoE.forward` and against finite differences, and then measures three
# consequences: a top-1 router that gets no gradient from the task, the assignments a capacity limit
# drops, and total against active parameters.

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
from numpy_moe.gradcheck import check_module, numerical_gradient, rel_error
from numpy_moe.moe import MoE
from numpy_moe.plotting import EXPERT_COLORS
from numpy_moe.routing import combine_weights

args = parse_args(sys.argv[1:], __doc__, notebook=True)
rng = np.random.default_rng(0)
N, D, O, E, H, K = 10, 6, 3, 4, 8, 2  # samples, input, output, experts, expert hidden width, top-k
progress = Progress(8, what="walkthrough_sparse")  # one step per cell: elapsed time, time left
np.set_printoptions(precision=3, suppress=True)

# %% [markdown]
# ## 1. The layer
# Post 000's layer in small: top-2 of 4 ReLU-MLP experts (D -> H -> O), float64. The parameters are moved
# off their initial values (as after some training), so that the gate's bias is not zero.

# %%
moe = MoE(D, O, n_experts=E, hidden=H, top_k=K, seed=0)  # gate="softmax_then_topk" is the default
for _, p in moe.named_parameters():
    p += 0.3 * rng.standard_normal(p.shape)
P = {name: p.copy() for name, p in moe.named_parameters()}  # our own copy, for the hand-built layer
print({name: p.shape for name, p in P.items()})
x = rng.standard_normal((N, D))
progress.step("1. the layer")

# %% [markdown]
# ## 2. Route: logits, softmax, top-k mask
# `np.argsort(-h, kind="stable")` lists each row's experts from the largest logit down, the lower index
# first on a tie (the package's rule); its first K columns are the chosen experts. The package's gate
# returns a `Routing`, its N K (sample, expert) assignments listed sample by sample
# (`routing.expert.reshape(N, K)` are the chosen experts, `routing.weight.reshape(N, K)` their weights);
# `numpy_moe.routing.combine_weights(routing)` turns it into the (N, E) matrix G.

# %%
def softmax(h):
    z = np.exp(h - h.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def route(P, x):
    """(p, top, mask): the softmax (N, E), the chosen experts best first (N, K), the top-k mask (N, E)."""
    h = x @ P["gate.W"] + P["gate.b"]
    top = np.argsort(-h, axis=1, kind="stable")[:, :K]
    mask = np.zeros(h.shape, dtype=bool)
    mask[np.arange(len(x))[:, None], top] = True
    return softmax(h), top, mask


p, top, mask = route(P, x)
G = np.where(mask, p, 0.0)  # (N, E), the combine weights
r = moe.gate.forward(x)  # the package's gate: a Routing of N K (sample, expert) assignments
assert np.array_equal(top, r.expert.reshape(N, K))
print("max |G by hand - combine_weights(routing)|:", np.abs(G - combine_weights(r)).max())
for n in range(4):
    print(f"sample {n}: experts {top[n]} with weights {G[n, top[n]]}, sum {G[n].sum():.3f} (< 1: not renormalised)")

progress.step("2. route")

# %% [markdown]
# ## 3. Group, gather, run, scatter
# For each expert e: the samples routed to it (group), their rows of x (gather), the expert on those rows
# only (one matrix product per layer), and the weighted outputs added back to their samples (scatter).
# A sample occurs at most once in an expert's group, so `y[rows] += ...` is exact (no `np.add.at`).

# %%
def expert(P, e, xe):
    """Expert e, a ReLU MLP, on its rows xe (n_e, D): (a, z, out)."""
    a = xe @ P["experts.W1"][e] + P["experts.b1"][e]  # (n_e, H)
    z = np.maximum(a, 0)
    return a, z, z @ P["experts.W2"][e] + P["experts.b2"][e]  # (n_e, O)


def forward_by_hand(P, x, mask=None):
    """y (N, O); ``mask`` fixes the routing (None: route x)."""
    p, _, routed = route(P, x)
    mask = routed if mask is None else mask
    G = np.where(mask, p, 0.0)
    y = np.zeros((len(x), O))
    for e in range(E):
        rows = np.flatnonzero(mask[:, e])  # group: the samples routed to expert e
        _, _, out = expert(P, e, x[rows])  # gather, then the expert on its rows only
        y[rows] += G[rows, e, None] * out  # weighted scatter
    return y


for e in range(E):
    print(f"expert {e} runs on samples {np.flatnonzero(mask[:, e]).tolist()}")
y_hand, y_moe = forward_by_hand(P, x), moe.forward(x)
difference = np.abs(y_hand - y_moe).max()
print(f"max |y by hand - MoE.forward(x)| = {difference:.1e}")
assert difference < 1e-12
dense = np.einsum("ne,eno->no", G, moe.experts.forward(x))  # every expert on every sample, weights 0 off T_n
print(f"max |dense formula - MoE.forward(x)| = {np.abs(dense - y_moe).max():.1e}; expert rows computed: "
      f"sparse {mask.sum()} (= N K), dense {N * E} (= N E)")
progress.step("3. dispatch by hand")

# %% [markdown]
# ## 4. The gradient, with the routing held fixed
# The choice of T_n is piecewise constant in the parameters: away from ties it does not move under a small
# perturbation, and the gradient is that of the layer with the mask fixed. With dy = dL/dy:
#
#     dG[n, e] = dy_n · E_e(x_n)                 for e in T_n (G is a constant 0 elsewhere)
#     d out_e  = G[rows, e] dy[rows]             expert e's backward runs on its own rows only
#     dp = dG * mask,  dh = p * (dp - sum_e dp p),  dW_g = xᵀ dh,  db_g = sum_n dh,  dx += dh W_gᵀ
#
# and dx also gets each expert's input gradient, scattered back to the expert's rows.

# %%
def backward_by_hand(P, x, mask, dy):
    """Gradients of L = sum(dy * y) for the layer with routing ``mask``: {name: array, "input": dx}."""
    p, _, _ = route(P, x)
    G = np.where(mask, p, 0.0)
    grads = {name: np.zeros_like(v) for name, v in P.items()}
    dG, dx = np.zeros_like(G), np.zeros_like(x)
    for e in range(E):
        rows = np.flatnonzero(mask[:, e])
        a, z, out = expert(P, e, x[rows])
        dG[rows, e] = (dy[rows] * out).sum(axis=1)
        dout = G[rows, e, None] * dy[rows]  # (n_e, O)
        grads["experts.W2"][e], grads["experts.b2"][e] = z.T @ dout, dout.sum(axis=0)
        da = (dout @ P["experts.W2"][e].T) * (a > 0)  # (n_e, H)
        grads["experts.W1"][e], grads["experts.b1"][e] = x[rows].T @ da, da.sum(axis=0)
        dx[rows] += da @ P["experts.W1"][e].T
    dp = dG * mask
    dh = p * (dp - (dp * p).sum(axis=1, keepdims=True))  # the softmax's backward
    grads["gate.W"], grads["gate.b"] = x.T @ dh, dh.sum(axis=0)
    grads["input"] = dx + dh @ P["gate.W"].T
    return grads


h = x @ P["gate.W"] + P["gate.b"]
sorted_h = -np.sort(-h, axis=1)
print(f"smallest gap between a sample's K-th and (K+1)-th logit: {(sorted_h[:, K - 1] - sorted_h[:, K]).min():.3f} "
      "(far above the step h = 1e-6: no perturbation changes the routing)")
R = np.random.default_rng(1).standard_normal((N, O))  # L = sum(R * y), so dy = R
analytic = backward_by_hand(P, x, mask, R)
worst = 0.0
for name, grad in analytic.items():
    target = x if name == "input" else P[name]
    numeric = numerical_gradient(lambda _: float((R * forward_by_hand(P, x, mask)).sum()), target)
    worst = max(worst, rel_error(grad, numeric))
    print(f"{name:<12} {str(grad.shape):<12} relative error {rel_error(grad, numeric):.1e}")
assert worst < 1e-7  # the house pass mark for one layer (MATH.md §8)
moe.forward(x)
dx_moe = moe.backward(R)
same = max([rel_error(analytic["input"], dx_moe)] + [rel_error(analytic[n], g) for n, g in moe.named_grads()])
print(f"worst relative error against finite differences {worst:.1e}; hand-built against MoE.backward {same:.1e}")
assert same < 1e-12
errors = check_module(moe, x)  # the package's own check of the whole layer (the routing does not move)
print(f"check_module(moe, x): worst of {len(errors)} tensors {max(errors.values()):.1e}")
progress.step("4. gradient check")

# %% [markdown]
# ## 5. Top-1 with renormalised weights: a router without a task gradient
# The router learns from the task only through the weights G. Shazeer's `topk_then_softmax` takes a
# softmax over the K kept logits; with K = 1 that is exp(h) / exp(h) = 1 for every sample, whatever the
# logits, so dL/dW_g = 0 from the task: the router never learns which expert suits which sample. Only a
# balance loss moves it, and a balance loss carries no task information. `softmax_then_topk` keeps
# p[n, e], which depends on every logit. Measure ‖dL/dW_g‖ from the task loss alone and with a Switch
# loss. Each layer is built with the loss, and its weight is set to 0 for the task-only gradient: `MoE`
# refuses to build the top-1 `topk_then_softmax` router without a loss that trains it.

# %%
dy = np.random.default_rng(2).standard_normal((N, O))
norms = {}
for convention in ("softmax_then_topk", "topk_then_softmax"):
    for k in (1, 2):
        layer = MoE(D, O, n_experts=E, hidden=H, top_k=k, gate=convention, balance={"switch": 0.01}, seed=0)
        for label, weight in (("task only", 0.0), ("task + Switch loss 0.01", 0.01)):
            layer.losses[0].weight = weight
            layer.forward(x)
            layer.backward(dy)
            norms[convention, k, label] = float(np.linalg.norm(layer.gate.grads["W"]))
        print(f"{convention:<18} top-{k}: |dL/dW_g| task only {norms[convention, k, 'task only']:.2e}, "
              f"task + Switch loss {norms[convention, k, 'task + Switch loss 0.01']:.2e}")
assert norms["topk_then_softmax", 1, "task only"] == 0.0 and norms["softmax_then_topk", 1, "task only"] > 1e-3
try:
    MoE(D, O, n_experts=E, hidden=H, top_k=1, gate="topk_then_softmax")
except ValueError as err:
    print("\nMoE refuses that router without a loss that trains it:\n ", str(err)[:150], "...")
progress.step("5. top-1 router gradient")

# %% [markdown]
# ## 6. Capacity: the assignments an expert cannot take
# On an accelerator every expert gets a fixed buffer of C = ceil(N K cf / E) rows (GShard, Switch, V-MoE);
# an assignment beyond its expert's C is dropped and contributes nothing to its sample's output. Every
# first choice is served before any second choice, so an expert chosen by load_e assignments drops exactly
# max(0, load_e - C) of them, and nothing is dropped once cf >= cf* = max_e load_e E / (N K). Two routers
# on the same inputs: the layer's own (about balanced) and one whose bias favours expert 0, as a router
# drifts without a balance loss.

# %%
n_cap = 128 if args.quick else 1024
x_cap = rng.standard_normal((n_cap, D))
factors = np.arange(0.25, 2.26, 0.25 if args.quick else 0.0625)
routers = {"the layer's router": np.zeros(E), "a skewed router: bias + (1.5, 0.5, 0, 0)": np.array([1.5, 0.5, 0, 0])}
dropped, loads = {}, {}
for name, shift in routers.items():
    fractions = []
    for cf in factors:
        layer = MoE(D, O, n_experts=E, hidden=H, top_k=K, capacity_factor=float(cf), seed=0)
        layer.gate.params["b"] += shift
        layer.forward(x_cap)
        r = layer.routing
        load = np.bincount(r.expert, minlength=E)  # assignments per expert before the limit
        lost = np.bincount(r.expert[~r.kept], minlength=E)
        C = int(np.ceil(n_cap * K * cf / E))
        assert np.array_equal(lost, np.maximum(0, load - C))  # exactly the overflow of each expert
        assert lost.sum() == layer.diagnostics["dropped"]
        W = combine_weights(r)  # a dropped assignment has weight 0: a sample whose two choices were dropped gets y = 0
        assert (W != 0).sum() == r.kept.sum()
        fractions.append(np.append(lost / load, lost.sum() / (n_cap * K)))  # per expert, then all
    dropped[name], loads[name] = np.array(fractions), load
    star = load.max() * E / (n_cap * K)
    at_one = dropped[name][np.argmin(abs(factors - 1.0)), -1]
    print(f"{name}: load shares {np.round(load / load.sum(), 3)}, dropped at cf = 1: {at_one:.1%}, "
          f"nothing dropped from cf* = {star:.2f}")
progress.step("6. capacity")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
for ax, (name, frac) in zip(axes, dropped.items()):
    load = loads[name]
    for e in range(E):
        ax.plot(factors, frac[:, e], color=EXPERT_COLORS[e], lw=1.8,
                label=f"expert {e} ({load[e] / load.sum():.0%} of assignments)")
    ax.plot(factors, frac[:, -1], color="k", lw=2.6, ls="--", label="all assignments")
    star = load.max() * E / (n_cap * K)
    ax.axvline(star, color="0.4", ls=":", lw=1.5)
    ax.text(star + 0.03, 0.45, f"cf* = {star:.2f}", color="0.2")
    ax.set_title(name)
    ax.set_xlabel("capacity factor cf")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=9.5)
axes[0].set_ylabel("fraction of assignments dropped")
axes[0].set_ylim(-0.02, 1.0)
fig.suptitle(f"Top-{K} of {E} experts, N = {n_cap}, C = ceil(N K cf / E): nothing is dropped from\n"
             "cf* = max load x E / (N K) on; a skewed router needs a larger cf")
fig.tight_layout()
savefig(fig, args, "walkthrough_sparse.png")
progress.step("6. figure")

# %% [markdown]
# ## 7. Total against active parameters
# Memory holds every expert; each sample runs through the gate and K experts only. So E can grow at a
# constant cost per sample: the total parameters grow with E, the active ones do not.

# %%
def parameter_counts(layer):
    """(total, active per sample): every parameter, and the gate's plus K experts' worth."""
    gate = sum(p.size for _, p in layer.gate.named_parameters())
    experts = sum(p.size for _, p in layer.experts.named_parameters())
    return gate + experts, gate + layer.gate.top_k * experts // layer.n_experts


total, active = parameter_counts(moe)
print(f"this walk-through's layer: {total} parameters, {active} active per sample "
      f"(gate {D * E + E}, and {K} experts of {D * H + H + H * O + O})")
print(f"\n{'experts':>8} {'total':>10} {'active':>8} {'total / active':>15}   (D = O = 64, H = 256, top-2)")
for n_experts in (4, 8, 16, 64):
    total, active = parameter_counts(MoE(64, 64, n_experts=n_experts, hidden=256, top_k=2, seed=0))
    print(f"{n_experts:>8} {total:>10,} {active:>8,} {total / active:>15.1f}")
progress.step("7. parameters")

# %% [markdown]
# ## Exercises
# Try each, then check the outcome stated (run the cells again from the top).
#
# 1. In `backward_by_hand`, drop the softmax's correction term: `dh = p * dp` instead of
#    `dh = p * (dp - (dp * p).sum(axis=1, keepdims=True))`. Cell 4 now fails: `gate.W`, `gate.b` and
#    `input` have relative errors of about 0.7, 0.95 and 0.8, while the four expert tensors still pass
#    (~1e-10), since the experts' gradients never go through the gate.
# 2. Put sample 0 on a tie between its 2nd and 3rd choice: with ``h = x @ P["gate.W"] + P["gate.b"]``,
#    ``k2, k3 = np.argsort(-h[0], kind="stable")[1:3]`` and ``v = P["gate.W"][:, k2] - P["gate.W"][:, k3]``,
#    move ``x[0] -= (h[0, k2] - h[0, k3] - 1e-8) * v / (v @ v)`` (the gap becomes 1e-8, below the check's
#    step h = 1e-6), then run ``check_module(moe, x)``. It raises: the routing flips inside the finite
#    difference, so `input`, `gate.W` and `gate.b` show numeric "gradients" near 3e5 (a jump divided by 2h)
#    and relative error 1.0; the experts' tensors pass, since moving an expert's weights never changes the
#    routing.
# 3. Predict the capacity figure from the printed load shares (full run, N = 1024): with N K / E a whole
#    number, cf = 1 gives C = N K / E, so the fraction dropped is sum_e max(0, share_e - 1 / E): for the
#    skewed router (0.446 - 0.25) + (0.293 - 0.25) = 23.9%, the printed value. Its cf* is the largest
#    share times E, 0.446 x 4 = 1.78, where its dashed curve reaches zero.
