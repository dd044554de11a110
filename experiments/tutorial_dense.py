"""Walk-through of post 001: a dense mixture of experts, built, checked by finite differences and trained.

Run it as a script (``python -m experiments tutorial_dense``) or open it in an editor that understands
``# %%`` cells (VS Code, PyCharm, Spyder, Jupytext) and run it cell by cell.
"""
# %% [markdown]
# A mixture of experts (MoE) layer holds E small networks, the *experts*, and a *gate* that decides,
# for each input, how much to trust each expert:
#
#     g = softmax(x W_g + b_g)            (N, E)   one weight per expert, each row sums to 1
#     y = sum_e g[:, e] * E_e(x)           (N, O)   the weighted blend of the experts' outputs
#
# Post 001 builds exactly this in PyTorch with linear experts (input 8, output 64, 4 experts) and lets
# autograd differentiate it. Here every derivative is written by hand, so we check it.

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
from numpy_moe import plotting
from numpy_moe.gradcheck import check_module, numerical_gradient, rel_error
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam
from numpy_moe.train import fit, predict

args = parse_args(sys.argv[1:], __doc__, notebook=True)
rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. Build the layer and check its shapes
# The experts' weights are stacked: W has shape (E, D, O), so all four experts run as one batched matmul.

# %%
moe = MoE(in_features=8, out_features=64, n_experts=4, seed=0)
x = rng.standard_normal((2, 8))  # a batch of 2, as in the post
y = moe.forward(x)
print("output shape:", y.shape)  # (2, 64)
print("expert weights W:", moe.experts.params["W"].shape)  # (4, 8, 64)
g = moe.gate.forward(x)
print("gate rows sum to", g.sum(axis=1))  # [1. 1.]

# The layer computes nothing more than the formula above: redo it with a Python loop over experts.
W, b = moe.experts.params["W"], moe.experts.params["b"]
by_hand = sum(g[:, [e]] * (x @ W[e] + b[e]) for e in range(4))
print("largest difference from the formula:", np.abs(by_hand - y).max())
assert np.allclose(by_hand, y, rtol=1e-12, atol=1e-12), "forward does not match the formula"

# %% [markdown]
# ## 2. Check the gradient numerically
# For a scalar loss L, the backward pass must return dL/dx and fill dL/dθ for every parameter θ.
# Central differences give an independent estimate: dL/dθ_i ≈ (L(θ + h e_i) - L(θ - h e_i)) / 2h.
# With h = 1e-6 in float64 the estimate is good to about 1e-9 relative, so a hand-derived gradient
# must agree below 1e-7. First by hand for one tensor, then for all of them with `check_module`.

# %%
R = rng.standard_normal(y.shape)  # L = sum(R * y): dL/dy = R


def loss(_):
    return float((R * moe.forward(x)).sum())


moe.forward(x)
moe.backward(R)
analytic = moe.gate.grads["W"].copy()
numeric = numerical_gradient(loss, moe.gate.params["W"])
print(f"gate.W: relative error {rel_error(analytic, numeric):.2e}")

errors = check_module(moe, x, tol=1e-7, verbose=True)  # raises with this table if any tensor fails

# %% [markdown]
# ## 3. Train it: experts that specialise
# A target made of three linear pieces over x in [-3, 3]. One linear model cannot fit it; a mixture of
# three linear experts can, if the gate learns to hand each piece to one expert.

# %%
def target(x):
    return np.where(x < -1, -2 * x - 3, np.where(x < 1, x, 4 - 3 * x))


n = 200 if args.quick else 1000
x_train = rng.uniform(-3, 3, (n, 1))
y_train = target(x_train) + 0.05 * rng.standard_normal((n, 1))
x_grid = np.linspace(-3, 3, 400)[:, None]

epochs = 20 if args.quick else 300
progress = Progress(2 * epochs, what="tutorial_dense")  # a line every 2 s: epoch, loss, time left
model = MoE(1, 1, n_experts=3, seed=1)
history = fit(model, x_train, y_train, loss="mse", optimizer=Adam(0.05), epochs=epochs, batch_size=64, seed=0,
              callback=progress.fit_callback("3 experts"))
single = MoE(1, 1, n_experts=1, seed=1)  # one expert: plain linear regression
fit(single, x_train, y_train, loss="mse", optimizer=Adam(0.05), epochs=epochs, batch_size=64, seed=0,
    callback=progress.fit_callback("1 expert"))
mse_moe = float(((predict(model, x_grid) - target(x_grid)) ** 2).mean())
mse_one = float(((predict(single, x_grid) - target(x_grid)) ** 2).mean())
print(f"MSE against the noiseless target: 3 experts {mse_moe:.4f}, 1 linear model {mse_one:.4f}")

# %% [markdown]
# Look at what each expert learned: expert e alone predicts x W[e] + b[e] (dashed, in its gate's colour),
# and the gate below says where the layer listens to it.

# %%
W, b = model.experts.params["W"], model.experts.params["b"]  # (3, 1, 1), (3, 1)


def experts(x):
    """(M, 3) each expert's own prediction x W[e] + b[e]."""
    return np.einsum("md,edo->meo", x, W)[:, :, 0] + b[:, 0]


fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 7.5), sharex=True, height_ratios=[2, 1])
plotting.plot_regression_fit(ax1, ax2, lambda x: predict(model, x), model.gate.forward, x_train, y_train[:, 0],
                             experts=experts, title="A dense MoE fits three linear pieces:\n"
                                                    "the gate hands each piece to one expert")
ax1.plot(x_grid, predict(single, x_grid), color="0.4", ls=":", lw=2, label="one linear model")
ax1.set_ylabel("y")
handles, labels = ax1.get_legend_handles_labels()
labels = [f"MoE, 3 linear experts (MSE {mse_moe:.3f}, seed 1)" if t == "prediction"
          else f"one linear model (MSE {mse_one:.3f})" if t == "one linear model" else t for t in labels]
ax1.legend(handles, labels, loc="lower left", fontsize=10)
ax2.set_ylabel("gate weight g_e(x)")
savefig(fig, args, "tutorial_dense.png")

# %% [markdown]
# ## Exercises
# Try each, then check the outcome stated (the numbers are those of the full run, seed as in the cells).
#
# 1. Break the backward on purpose: before `check_module` in section 2, scale the gradient the gate
#    receives by 1.1 with `moe.gate.backward = lambda dg, f=moe.gate.backward: f(1.1 * dg)`. The check
#    raises: `gate.W` and `gate.b` fail with relative error 0.091 (= 0.1 / 1.1), `input` with about 0.06
#    (only its gate part is wrong), while `experts.W` and `experts.b` still pass at ~1e-10.
# 2. Train two experts instead of three (`model = MoE(1, 1, n_experts=2, seed=1)`; draw
#    `model.n_experts` gate curves in the figure): two lines cannot make three pieces, and the MSE against
#    the noiseless target rises from 0.0015 to about 0.020. Four experts give 0.0017: no better than three.
# 3. Is the fit luck? Train the three experts from `seed=2` to `seed=6`: the MSE stays between 0.0014 and
#    0.0062 in every case, against 1.128 for the single linear model.
