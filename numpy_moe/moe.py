"""The mixture-of-experts layer ``y = sum_e G_e(x) E_e(x)``, dense or sparse (MATH.md §2-4).

One class, :class:`MoE`, builds every variant from keyword arguments. ``x`` is (N, D), ``y`` is (N, O);
the layer follows the Module contract, so it can sit inside ``Sequential``. After ``forward``,
``moe.aux_loss`` is the weighted sum of its balance losses (add it to the task loss; ``backward`` already
includes its gradient) and ``moe.diagnostics`` reports samples per expert, importance and dropped
assignments.

How to build each variant (D inputs, O outputs, E experts, H hidden units of each MLP expert)::

    MoE(D, O, E, hidden=H)                        # dense softmax gate, every expert on every sample
                                                  # (seeds 001-003)
    MoE(D, O, 4, hidden=H, top_k=2)               # seed 000: softmax, keep the top 2, no renormalising
    MoE(D, O, 4, hidden=H, top_k=2, balance={"seed000": 0.01})
                                                  # ... plus seed 000's balance loss (zero gradient!)
    MoE(D, O, E, hidden=H, top_k=2, gate="topk_then_softmax", noise="shazeer",
        balance={"importance": 0.1, "load": 0.1}) # Shazeer et al. 2017: noisy top-k, learned noise
    MoE(D, O, E, hidden=H, top_k=2, noise="vmoe", capacity_factor=1.05, batch_priority=True,
        balance={"importance": 0.005, "load": 0.005})
                                                  # V-MoE / Sparse-MLP (seed 004): noise std 1/E
    MoE(D, O, E, hidden=H, top_k=1, capacity_factor=1.25, balance={"switch": 0.01, "z_loss": 0.001})
                                                  # Switch Transformer: top-1 with capacity
    MoE(D, O, E, hidden=H, router="expert_choice", capacity_factor=2)
                                                  # expert choice: each expert takes N * 2 / E samples
    MoE(..., balance=[Importance(0.01, source="gates"), ZLoss(1e-3)])
                                                  # any list of numpy_moe.balance loss objects

Pitfall: ``top_k=1, gate="topk_then_softmax"`` gives every sample the weight softmax(one logit) = 1, so
the task loss sends the gate no gradient at all (only balance losses train it); use softmax_then_topk
for top-1 routing, as Switch does.

Balance names map to losses as follows: "importance" is Importance over the full clean softmax for the
softmax_then_topk gate and expert choice (V-MoE) and over the top-k gates for topk_then_softmax
(Shazeer); "load" is ShazeerLoad with noise="shazeer" and VMoELoad with noise="vmoe" (it needs noise);
"switch" SwitchLoss, "z_loss" ZLoss, "seed000" Seed000Loss.

The routing of the last forward is ``moe.routing`` (a :class:`numpy_moe.gating.Routing`), so a model
built on the layer (an image classifier, an MLP-Mixer) can read which experts each sample used.
``dispatch="dense"`` runs a sparse gate the way seed 000 does (every expert on every sample, then the
sparse weights blend the outputs): the same function, E / K times the work, kept for the benchmark and
for the test that the two dispatches agree.
"""
from . import balance as B
from .backend import default_rng, get_array_module, to_numpy
from .experts import ExpertBank
from .gating import CONVENTIONS, NOISES, ExpertChoiceGate, SoftmaxGate, TopKGate
from .layers import Module
from .routing import apply_capacity, combine_topk, expert_capacity, group_by_expert, scatter_add
from .validation import check_input, check_positive_int, check_real

ROUTERS = ("topk", "expert_choice")
BALANCE_NAMES = ("importance", "load", "switch", "z_loss", "seed000")


def _balance_losses(balance, convention, noise):
    """A list of BalanceLoss objects from None, a dict name -> weight, or a list of loss objects."""
    if balance is None:
        return []
    if isinstance(balance, dict):
        losses = []
        for name, w in balance.items():
            if name == "importance":
                losses.append(B.Importance(w, "gates" if convention == "topk_then_softmax" else "softmax"))
            elif name == "load":
                if noise is None:
                    raise ValueError("balance 'load' needs a noisy gate: pass noise='shazeer' or 'vmoe'")
                losses.append(B.ShazeerLoad(w) if noise == "shazeer" else B.VMoELoad(w))
            elif name in ("switch", "z_loss", "seed000"):
                losses.append({"switch": B.SwitchLoss, "z_loss": B.ZLoss, "seed000": B.Seed000Loss}[name](w))
            else:
                raise ValueError(f"balance has unknown loss {name!r}; expected names from {BALANCE_NAMES}")
        return losses
    losses = list(balance)
    for loss in losses:
        if not isinstance(loss, B.BalanceLoss):
            raise TypeError(f"balance contains {loss!r}; expected numpy_moe.balance loss objects")
    return losses


class MoE(Module):
    """Mixture of experts: a gate, an ExpertBank, and for sparse gates a dispatch and balance losses.

    Parameters
    ----------
    in_features : D. out_features : O. n_experts : E.
    hidden : H for ReLU-MLP experts, None for linear experts.
    seed : int or numpy Generator (the gate is drawn first, then the experts; a noisy gate then draws
        its noise from the same generator). dtype : float32 or float64.
    top_k : None (default) for the dense softmax gate; K (1 <= K <= E) for a top-k gate.
    gate : "softmax_then_topk" (seed 000, V-MoE) or "topk_then_softmax" (Shazeer). Top-k only.
    noise : None, "shazeer" (learned scale) or "vmoe" (std noise_std / E). Top-k only, training mode only.
    noise_std : V-MoE noise std before dividing by E.
    router : "topk" (default) or "expert_choice" (each expert picks its top C samples; needs
        capacity_factor and no top_k).
    capacity_factor : None (no limit) or cf > 0: top-k experts keep at most ceil(N K cf / E) assignments,
        expert choice takes ceil(N cf / E) samples per expert.
    batch_priority : with a capacity, serve samples with a larger max_e p[n, e] first (V-MoE BPR)
        instead of by position.
    balance : None, a dict name -> weight (names in BALANCE_NAMES, see the module docstring), or a list of
        numpy_moe.balance loss objects.
    dispatch : "sparse" (default: each expert runs on its own samples) or "dense" (every expert on every
        sample, as seed 000 does). Sparse gates only.

    Shapes: x (N, D) -> y (N, O). Parameters gate.W (D, E), gate.b (E,), [gate.W_noise (D, E)],
    experts.W1/b1/W2/b2 or experts.W/b (see ExpertBank).

    Notes
    -----
    Dense: g = softmax(x W_g + b_g) (N, E), y_n = sum_e g_{n,e} E_e(x_n); dg_{n,e} = <dy_n, E_e(x_n)>,
    dE_e(x_n) = g_{n,e} dy_n, dx = gate.backward(dg) + experts.backward(dout).
    Sparse: y_n = sum over kept assignments m of n of w_m E_{e_m}(x_n); dw_m = <dy_n, E_{e_m}(x_n)>
    (0 for dropped m), dE_{e_m}(x_n) = w_m dy_n; the gate gets dw plus the balance losses' gradients;
    dx_n = (gate path) + sum_m dx_m from the experts. An expert without samples gets zero gradient.
    """

    def __init__(self, in_features, out_features, n_experts, hidden=None, seed=None, dtype="float64", *,
                 top_k=None, gate="softmax_then_topk", noise=None, noise_std=1.0, router="topk",
                 capacity_factor=None, batch_priority=False, balance=None, dispatch="sparse"):
        super().__init__(dtype)
        D = self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        if router not in ROUTERS:
            raise ValueError(f"router={router!r} must be one of {ROUTERS}")
        if gate not in CONVENTIONS:
            raise ValueError(f"gate={gate!r} must be one of {CONVENTIONS}")
        if noise not in NOISES:
            raise ValueError(f"noise={noise!r} must be one of {NOISES}")
        if dispatch not in ("sparse", "dense"):
            raise ValueError(f"dispatch={dispatch!r} must be 'sparse' or 'dense'")
        if capacity_factor is not None:
            capacity_factor = check_real(capacity_factor, "capacity_factor", 0, low_open=True)
        noise_std = check_real(noise_std, "noise_std", 0, low_open=True)
        self.dense = router == "topk" and top_k is None
        if self.dense and (noise is not None or capacity_factor is not None or balance):
            raise ValueError(f"noise={noise!r}, capacity_factor={capacity_factor!r} and balance={balance!r} "
                             "need a sparse gate: pass top_k=K or router='expert_choice'")
        if router == "expert_choice" and (top_k is not None or noise is not None or capacity_factor is None):
            raise ValueError(f"router='expert_choice' takes capacity_factor (got {capacity_factor!r}) and "
                             f"no top_k or noise (got top_k={top_k!r}, noise={noise!r})")
        self.capacity_factor, self.batch_priority, self.dispatch = capacity_factor, bool(batch_priority), dispatch
        rng = default_rng(seed)
        if self.dense:
            self.gate = SoftmaxGate(D, E, seed=rng, dtype=dtype)
        elif router == "expert_choice":
            self.gate = ExpertChoiceGate(D, E, capacity_factor, seed=rng, dtype=dtype)
        else:
            self.gate = TopKGate(D, E, top_k, gate, noise, noise_std, seed=rng, dtype=dtype)
        self.experts = ExpertBank(E, D, out_features, hidden, seed=rng, dtype=dtype)
        self.losses = _balance_losses(balance, gate if router == "topk" else "expert_choice", noise)
        self._aux = 0.0

    @property
    def aux_loss(self):
        """Weighted sum of the balance losses of the last forward (0.0 without any)."""
        return self._aux

    def forward(self, x):
        """x (N, D) -> y (N, O)."""
        xp = get_array_module(x)
        x = check_input(x, self.in_features, self.dtype)
        N, E = x.shape[0], self.n_experts
        self.y_shape = (N, self.out_features)
        if self.dense:
            self.g = self.gate.forward(x)  # (N, E)
            self.out = self.experts.forward(x)  # (E, N, O)
            return xp.einsum("ne,eno->no", self.g, self.out)  # (N, O)
        r = self.gate.forward(x)
        if self.capacity_factor is not None and r.top_k is not None:
            r = apply_capacity(r, expert_capacity(N, r.top_k, E, self.capacity_factor), self.batch_priority)
        self.routing = r
        self._aux = sum(loss(r) for loss in self.losses)
        if self.dispatch == "dense":
            self.g = xp.zeros((N, E), dtype=self.dtype)
            self.g[r.sample, r.expert] = r.weight * r.kept  # (N, E), zero off the kept assignments
            self.out = self.experts.forward(x)  # (E, N, O)
            return xp.einsum("ne,eno->no", self.g, self.out)
        groups = self.groups = group_by_expert(r, E)
        self.w = r.weight[groups.assignment][:, None]  # (G, 1)
        self.out = self.experts.forward_grouped(xp.take(x, groups.sample, axis=0), groups.offsets)  # (G, O)
        if r.top_k is None:  # expert choice: a sample has 0..E experts
            return scatter_add(xp.zeros((N, self.out_features), dtype=self.dtype), self.out, groups, self.w)
        return combine_topk(self.out, groups, (r.weight * r.kept).reshape(N, r.top_k))  # (N, O)

    def _check_forwarded(self, what):
        if not hasattr(self, "y_shape"):
            raise ValueError(f"{what} needs a forward pass first: call forward(x) before {what}")

    def backward(self, dy):
        """dy (N, O) -> dx (N, D); fills the gate's and the experts' grads, balance losses included."""
        self._check_forwarded("backward(dy)")
        if tuple(getattr(dy, "shape", ())) != self.y_shape:
            raise ValueError(f"dy has shape {tuple(getattr(dy, 'shape', ()))}; expected {self.y_shape}, the shape of "
                             "the last forward's output")
        xp = get_array_module(dy)
        if self.dense:
            dg = xp.einsum("no,eno->ne", dy, self.out)  # (N, E)
            dout = self.g.T[:, :, None] * dy[None]  # (E, N, O)
            return self.gate.backward(dg) + self.experts.backward(dout)
        r = self.routing
        if self.dispatch == "dense":
            dg = xp.einsum("no,eno->ne", dy, self.out)  # (N, E)
            grad = {"weight": dg[r.sample, r.expert] * r.kept}  # (M,)
            dx_experts = self.experts.backward(self.g.T[:, :, None] * dy[None])  # (N, D)
        else:
            g = self.groups
            dys = xp.take(dy, g.sample, axis=0)  # (G, O)
            dweight = xp.zeros(r.weight.shape, dtype=self.dtype)
            dweight[g.assignment] = xp.einsum("go,go->g", dys, self.out)  # dropped assignments keep 0
            grad = {"weight": dweight}
            dys *= self.w
            dx_experts = self.experts.backward_grouped(dys)  # (G, D)
        for loss in self.losses:
            for key, value in loss.backward().items():
                grad[key] = grad[key] + value if key in grad else value
        dx = self.gate.backward(grad)  # (N, D)
        if self.dispatch == "dense":
            return dx + dx_experts
        if r.top_k is None:
            return scatter_add(dx, dx_experts, self.groups)
        dx += combine_topk(dx_experts, self.groups, r.kept.reshape(dx.shape[0], r.top_k).astype(dx.dtype))
        return dx

    @property
    def diagnostics(self):
        """Routing statistics of the last forward, as NumPy arrays / ints.

        samples_per_expert : (E,) kept assignments per expert (N each for the dense gate).
        importance : (E,) sum over the batch of each expert's combine weights (before capacity).
        dropped : assignments dropped by the capacity limit.
        """
        self._check_forwarded("diagnostics")
        xp = get_array_module(self.out)
        E = self.n_experts
        if self.dense:
            N = self.g.shape[0]
            return {"samples_per_expert": to_numpy(xp.full(E, N)), "importance": to_numpy(self.g.sum(axis=0)),
                    "dropped": 0}
        r = self.routing
        return {"samples_per_expert": to_numpy(xp.bincount(r.expert[r.kept], minlength=E)),
                "importance": to_numpy(xp.bincount(r.expert, weights=r.weight, minlength=E)),
                "dropped": int(r.kept.size - int(r.kept.sum()))}
