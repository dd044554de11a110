"""The mixture-of-experts layer ``y = sum_e G_e(x) E_e(x)``, dense or sparse (MATH.md §2-4, §10).

One class, :class:`MoE`, builds every variant: the classic ones from short keyword arguments, today's by
composing a gate, an expert bank, a shared expert and balance losses, each configured on itself.
``x`` is (N, D), ``y`` is (N, O); the layer follows the Module contract, so it can sit inside
``Sequential``. After ``forward``, ``moe.aux_loss`` is the weighted sum of its balance losses (add it to
the task loss; ``backward`` already includes its gradient) and ``moe.diagnostics`` reports samples per
expert, importance and dropped assignments.

How to build each variant (D inputs, O outputs, E experts, H hidden units of each MLP expert)::

    MoE(D, O, E, hidden=H)                        # dense softmax gate, every expert on every sample
                                                  # (posts 001-003)
    MoE(D, O, 4, hidden=H, top_k=2)               # post 000: softmax, keep the top 2, no renormalising
    MoE(D, O, 4, hidden=H, top_k=2, balance={"seed000": 0.01})
                                                  # ... plus post 000's balance loss (zero gradient!)
    MoE(D, O, E, hidden=H, top_k=2, gate="topk_then_softmax", noise="shazeer",
        balance={"importance": 0.1, "load": 0.1}) # Shazeer et al. 2017: noisy top-k, learned noise
    MoE(D, O, E, hidden=H, top_k=2, noise="vmoe", capacity_factor=1.05, batch_priority=True,
        balance={"importance": 0.005, "load": 0.005})
                                                  # V-MoE / Sparse-MLP (post 004): noise std 1/E
    MoE(D, O, E, hidden=H, top_k=1, capacity_factor=1.25, balance={"switch": 0.01, "z_loss": 0.001})
                                                  # Switch Transformer: top-1 with capacity
    MoE(D, O, E, hidden=H, router="expert_choice", capacity_factor=2)
                                                  # expert choice: each expert takes ceil(2 N / E) samples
    MoE(gate=BaseGate(D, E), experts=ExpertBank(E, D, D, H), residual=True)
                                                  # BASE layer: balanced assignment, x + sigmoid(x w_e) E_e(x)
    MoE(gate=SinkhornGate(D, E, top_k=1), experts=...)   # S-BASE: Sinkhorn-balanced choice
    MoE(gate=HashGate(D, E, n_keys=V), experts=...)      # hash layer; forward(x, keys=token_ids)
    MoE(..., balance=[Importance(0.01, source="gates"), ZLoss(1e-3)])
                                                  # any list of numpy_moe.balance loss objects

Today's blocks are composed (MATH.md §10; numpy_moe.gates, numpy_moe.experts, numpy_moe.balance)::

    MoE(gate=ScoreGate(D, 8, top_k=2, score="softmax", normalize=True, jitter=0.01),
        experts=ExpertBank(8, D, O, H, activation="swiglu"))          # Mixtral
    MoE(gate=ScoreGate(D, 64, top_k=8, score="sigmoid", normalize=True, scale=2.5, n_groups=8,
                       topk_groups=4, group_score="top2", bias_update=1e-3),
        experts=ExpertBank(64, D, O, H, activation="swiglu"), shared=SharedExpert(D, O, H),
        balance=[SequenceBalance(1e-4)])                              # DeepSeek-V3
    MoE(gate=ScoreGate(D, 60, top_k=4, score="softmax", normalize=False),
        experts=ExpertBank(60, D, O, H, activation="swiglu"), shared=SharedExpert(D, O, 4 * H, gated=True),
        balance=[SequenceBalance(0.001 * 4, per_sequence=False)])     # Qwen2-MoE (HF's loss is K times it)

``forward(x, mask=None, seq_lengths=None, keys=None)``: ``mask`` (N,) bool marks the samples that count
(False: padding), which every balance statistic, the diagnostics and the selection bias's load then ignore
(BaseGate and SinkhornGate balance the counted samples alone; the padding takes its greedy choice);
``keys`` (N,) ints are the token ids a HashGate routes on; ``seq_lengths`` (ints summing to N) splits
the batch into sequences for SequenceBalance.
``backward(dy, routing_grad=None)`` adds a gradient of the routing from outside (a
numpy_moe.balance.MultiLayer loss over several layers).

Pitfall: ``top_k=1, gate="topk_then_softmax"`` gives every sample the weight softmax(one logit) = 1, so
the task loss sends the gate no gradient at all (only balance losses train it); use softmax_then_topk
for top-1 routing, as Switch does. The same holds for ``ScoreGate(top_k=1, normalize=True)`` (s / s = 1).
The layer refuses either when no balance loss gives the router a gradient.

Balance names map to losses as follows: "importance" is Importance over the full clean softmax for the
softmax_then_topk gate and expert choice (V-MoE) and over the top-k gates for topk_then_softmax
(Shazeer); "load" is ShazeerLoad with noise="shazeer" and VMoELoad with noise="vmoe" (it needs noise);
"switch" SwitchLoss, "z_loss" ZLoss, "seed000" Seed000Loss.

The routing of the last forward is ``moe.routing`` (a :class:`numpy_moe.gates.Routing`), so a model
built on the layer (an image classifier, an MLP-Mixer) can read which experts each sample used.
``dispatch="auto"`` (the default) picks, at every forward, the cheapest of three ways to run a top-k
gate (:func:`numpy_moe.dispatch.cheapest_dispatch`): sparse dispatch (each expert on its own rows, one
pass per expert); dense dispatch, every expert on every sample, when the batch is so small that the work
sparse dispatch saves costs less than its fixed cost (:func:`numpy_moe.dispatch.dense_is_cheaper`); or
padded dispatch, each expert's own rows padded with zero rows to the busiest expert's count C and run as
one (E, C, D) batch through the experts' batched products, when C E rows cost less than both (small
batches with many experts, as in GShard's and Switch's dispatch tensors, which pad to a capacity).
``dispatch="dense"`` runs a sparse gate the way post 000 does (every expert on every sample, then the
sparse weights blend the outputs): the same function, E / K times the work, kept for the benchmark and
for the test that the dispatches agree. All three give the same values up to rounding (tested);
``moe.dispatch_now`` says which one the last forward used.

This package holds the layer itself (here: routing, dispatch, combine and their backward) and
:mod:`numpy_moe.moe.compose` (how the layer is put together: the gate of the keyword forms, the checks on
a composed gate, experts and shared expert).
"""
import inspect

from .. import balance as B
from ..backend import default_rng, get_array_module, to_numpy
from ..dispatch import cheapest_dispatch, padded_backward, padded_forward
from ..experts import ExpertBank, SharedExpert
from ..gates import (CONVENTIONS, NOISES, BaseGate, ExpertChoiceGate, HashGate, ScoreGate, SinkhornGate, SoftmaxGate,
                     TopKGate)
from ..layers import Module
from ..routing import Capacity, combine_topk, layer_capacity, group_by_expert, renormalize_backward, scatter_add
from ..validation import check_bool, check_input, check_mask, check_positive_int, check_real, check_seq_lengths
from ..workers import run_blocks
from .compose import GATES, ROUTERS, check_gate_object, check_parts, keyword_gate, router_trains

_router_trains = router_trains  # its name before the layer became a package
DISPATCHES = ("auto", "sparse", "dense", "padded")
ROUTING_GRAD_KEYS = frozenset({"weight", "logits", "clean", "sigma", "scores"})  # what the gates differentiate
OVERLAP_FROM = 1 << 16  # experts' input-gradient values from which the combine runs beside the gate's backward
BALANCE_NAMES = B.NAMES


_TAKES_CHECKED = {}  # class -> whether its forward takes checked=True


def _checked(part):
    """{"checked": True} for a part whose forward takes it (numpy_moe's gates, ExpertBank, SharedExpert): the layer
    has checked x (validation.check_input), so the part only converts it to its dtype instead of checking it
    again (a finiteness pass over x, 0.3-0.7 ms a step at the benchmark's second configuration); {} for a
    subclass whose own forward does not take it."""
    cls = type(part)
    takes = _TAKES_CHECKED.get(cls)
    if takes is None:
        takes = _TAKES_CHECKED[cls] = "checked" in inspect.signature(cls.forward).parameters
    return {"checked": True} if takes else {}


class MoE(Module):
    """Mixture of experts: a gate, an ExpertBank, and for sparse gates a dispatch and balance losses.

    Parameters
    ----------
    in_features : D. out_features : O. n_experts : E. (Optional with ``gate`` and ``experts`` objects,
        which carry them; when given they must agree.)
    hidden : H for ReLU-MLP experts, None for linear experts (set it on the ExpertBank when composing).
    seed : int or numpy Generator (the gate is drawn first, then the experts; a noisy gate then draws
        its noise from the same generator). dtype : float32 or float64 (composed parts must have it).
    top_k : None (default) for the dense softmax gate; K (1 <= K <= E) for a top-k gate.
    gate : "softmax_then_topk" (post 000, V-MoE) or "topk_then_softmax" (Shazeer), top-k only; or a gate
        object (SoftmaxGate, TopKGate, ExpertChoiceGate, ScoreGate, BaseGate, SinkhornGate, HashGate)
        configured on itself, in which case
        top_k, noise, noise_std and router stay at their defaults.
    noise : None, "shazeer" (learned scale) or "vmoe" (std noise_std / E). Top-k only, training mode only.
    noise_std : V-MoE noise std before dividing by E.
    router : "topk" (default) or "expert_choice" (each expert picks its top C samples; needs
        capacity_factor and no top_k).
    capacity_factor : None (no limit) or cf > 0: top-k experts keep at most ceil(N K cf / E) assignments,
        expert choice takes min(N, ceil(N cf / E)) samples per expert (with a gate object, top-k gates
        only).
    batch_priority : with a capacity, serve samples with a larger max_e p[n, e] first (V-MoE BPR)
        instead of by position.
    capacity : None, or a :class:`numpy_moe.routing.Capacity` (or its ``to_dict()``) for top-k gates: the
        factor, the drop policy ("gshard", "batch_priority", "position", "logits", "probs"), a minimum capacity and
        renormalisation of the kept weights after dropping (fairseq, DeepSpeed). ``capacity_factor=cf,
        batch_priority=b`` is its short form; give one or the other.
    balance : None, a dict name -> weight (names in BALANCE_NAMES, see the module docstring), or a list of
        numpy_moe.balance loss objects.
    dispatch : "auto" (default: the cheapest of the three for the batch, see the module docstring),
        "sparse" (each expert runs on its own samples), "dense" (every expert on every sample, as post 000
        does) or "padded" (each expert on its own samples padded to the busiest expert's count, all in one
        batched product per layer; top-k routings only). Sparse gates only.
    experts : None (built from hidden) or an ExpertBank (linear, ReLU, SwiGLU or GeGLU experts).
    shared : None or a SharedExpert, always on, added to the routed output.
    residual : add the input to the output, y = x + ... (needs out_features = in_features): the BASE
        layer's x + sigmoid(x · w_e) E_e(x) with a BaseGate (Lewis et al. 2021).

    Shapes: x (N, D) -> y (N, O). Parameters gate.W (D, E), gate.b (E,), [gate.W_noise (D, E)],
    experts.* (see ExpertBank), [shared.*].

    Notes
    -----
    Dense: g = softmax(x W_g + b_g) (N, E), y_n = sum_e g_{n,e} E_e(x_n); dg_{n,e} = <dy_n, E_e(x_n)>,
    dE_e(x_n) = g_{n,e} dy_n, dx = gate.backward(dg) + experts.backward(dout).
    Sparse: y_n = sum over kept assignments m of n of w_m E_{e_m}(x_n) [+ shared(x_n)];
    dw_m = <dy_n, E_{e_m}(x_n)> (0 for dropped m), dE_{e_m}(x_n) = w_m dy_n; the gate gets dw plus the
    balance losses' gradients (computed on the counted samples only when a mask is given, zero at the
    padding); dx_n = (gate path) + sum_m dx_m from the experts [+ shared.backward(dy)]. An expert without
    samples gets zero gradient.
    """

    def __init__(self, in_features=None, out_features=None, n_experts=None, hidden=None, seed=None,
                 dtype="float64", *, top_k=None, gate="softmax_then_topk", noise=None, noise_std=1.0,
                 router="topk", capacity_factor=None, batch_priority=False, balance=None, dispatch="auto",
                 experts=None, shared=None, residual=False, capacity=None):
        super().__init__(dtype)
        if dispatch not in DISPATCHES:
            raise ValueError(f"dispatch={dispatch!r} must be one of {DISPATCHES}")
        if capacity_factor is not None:
            capacity_factor = check_real(capacity_factor, "capacity_factor", 0, low_open=True)
        noise_std = check_real(noise_std, "noise_std", 0, low_open=True)
        if experts is not None and not isinstance(experts, ExpertBank):
            raise TypeError(f"experts={experts!r} must be a numpy_moe.experts.ExpertBank")
        if experts is not None and hidden is not None:
            raise ValueError(f"hidden={hidden!r} is set on the ExpertBank when experts= is given: "
                             "ExpertBank(E, D, O, hidden=H, ...)")
        if shared is not None and not isinstance(shared, SharedExpert):
            raise TypeError(f"shared={shared!r} must be a numpy_moe.experts.SharedExpert")
        rng = default_rng(seed)
        if isinstance(gate, Module):
            check_gate_object(gate, top_k, noise, noise_std, router, capacity_factor)
            self.gate = gate
            convention, noise = getattr(gate, "convention", "scored"), getattr(gate, "noise", None)
        elif isinstance(gate, str):
            self.gate, convention = keyword_gate(gate, top_k, noise, noise_std, router, capacity_factor, balance,
                                                 in_features, n_experts, rng, self.dtype)
        else:
            raise TypeError(f"gate={gate!r} must be a convention name {CONVENTIONS} or a gate object {GATES}")
        D, E = self.gate.in_features, self.gate.n_experts
        for name, value, have in [("in_features", in_features, D), ("n_experts", n_experts, E)]:
            if value is not None and check_positive_int(value, name) != have:
                raise ValueError(f"{name}={value} but the gate has {have}")
        if experts is None:
            out_features = check_positive_int(out_features, "out_features")
            experts = ExpertBank(E, D, out_features, hidden, seed=rng, dtype=dtype)
        residual, batch_priority = check_bool(residual, "residual"), check_bool(batch_priority, "batch_priority")
        check_parts(self.gate, experts, shared, residual, out_features, self.dtype)
        self.residual = residual
        self.in_features, self.out_features, self.n_experts = D, experts.out_features, E
        self.experts, self.shared = experts, shared
        self.capacity_factor, self.batch_priority, self.dispatch = capacity_factor, batch_priority, dispatch
        self.capacity = layer_capacity(capacity, capacity_factor, batch_priority, getattr(self.gate, "top_k", None))
        self.dense = isinstance(self.gate, SoftmaxGate)
        if self.dense and balance:
            raise ValueError(f"balance={balance!r} needs a sparse gate: pass top_k=K or router='expert_choice'")
        self.losses = B.from_names(balance, convention, noise)
        if not self.dense and not router_trains(self.gate, self.losses):
            raise ValueError("gate: top_k=1 with renormalised weights (topk_then_softmax, or ScoreGate with "
                             "normalize=True) gives every sample the weight 1, so the router gets no gradient "
                             "from the task loss, and no balance loss here trains it; use softmax_then_topk / "
                             "normalize=False, top_k >= 2, or add a balance loss such as SwitchLoss or "
                             "SequenceBalance")
        self._aux = 0.0

    def get_config(self):
        """As Module.get_config, with a Capacity as its dict (JSON-able)."""
        config = super().get_config()
        if isinstance(config.get("capacity"), Capacity):
            config["capacity"] = config["capacity"].to_dict()
        return config

    @property
    def aux_loss(self):
        """Weighted sum of the balance losses of the last forward (0.0 without any)."""
        return self._aux

    def forward(self, x, mask=None, seq_lengths=None, keys=None):
        """x (N, D), N >= 1 -> y (N, O). mask: (N,) bool or None; seq_lengths: ints summing to N, or None;
        keys: (N,) ints, the samples' keys for a HashGate (refused for other gates)."""
        xp = get_array_module(x)
        x = check_input(x, self.in_features, self.dtype, min_rows=1)  # routing statistics need a sample
        N, E = x.shape[0], self.n_experts
        self.y_shape = (N, self.out_features)
        self.mask = None if mask is None else check_mask(mask, N)
        seq_lengths = None if seq_lengths is None else check_seq_lengths(seq_lengths, N)
        if keys is not None and not isinstance(self.gate, HashGate):
            raise ValueError(f"keys are read by a HashGate only; this layer's gate is a {type(self.gate).__name__}")
        if self.dense:
            self.g = self.gate.forward(x, **_checked(self.gate))  # (N, E)
            self.out = self.experts.forward(x, **_checked(self.experts))  # (E, N, O)
            return self._add_shared(x, xp.einsum("ne,eno->no", self.g, self.out))  # (N, O)
        if isinstance(self.gate, HashGate):
            r = self.gate.forward(x, keys=keys, **_checked(self.gate))
        elif isinstance(self.gate, (ScoreGate, BaseGate, SinkhornGate)):
            r = self.gate.forward(x, mask=self.mask, **_checked(self.gate))
        else:
            r = self.gate.forward(x, **_checked(self.gate))
        self.denominator = None
        gate_weight = r.weight  # (M,) before capacity: renormalising after dropping divides the weights
        if self.capacity is not None and r.top_k is not None:
            r, self.denominator = self.capacity.apply(r)
        r = self.routing = r._replace(seq_lengths=seq_lengths)
        if self.mask is None:
            self.counted, self.gate_weight = r, gate_weight
        else:
            self.counted, self.counted_index = B.select_samples(r, self.mask)
            self.gate_weight = gate_weight[self.counted_index]
        self._aux = sum(loss(self.counted) for loss in self.losses)
        mode = self.dispatch
        if r.top_k is None and mode == "padded":
            raise ValueError("dispatch='padded' needs a top-k routing (K experts per sample); this gate's has none "
                             "(expert choice): use dispatch='sparse' or 'dense'")
        if mode == "auto" and r.top_k is None:
            mode = "sparse"
        elif mode == "auto":
            # padded dispatch's cost grows with the busiest expert's count, which is at least N K / E when
            # nothing was dropped; count the rows only when padded dispatch can win at that bound
            bound = -(-N * r.top_k // E) if self.capacity is None else 0
            mode = cheapest_dispatch(N, r.top_k, self.experts, bound)
            if mode == "padded":
                longest = int(xp.bincount(r.expert[r.kept], minlength=E).max())  # E >= 1 entries
                mode = cheapest_dispatch(N, r.top_k, self.experts, longest)
        self.dispatch_now, self.dense_now = mode, mode == "dense"
        if mode == "padded":
            y, self.padded = padded_forward(self.experts, x, r)
            self.out = self.padded["out"]  # (E C, O)
            return self._add_shared(x, y)
        if self.dense_now:
            self.g = xp.zeros((N, E), dtype=self.dtype)
            self.g[r.sample, r.expert] = r.weight * r.kept  # (N, E), zero off the kept assignments
            self.out = self.experts.forward(x, **_checked(self.experts))  # (E, N, O)
            return self._add_shared(x, xp.einsum("ne,eno->no", self.g, self.out))
        groups = self.groups = group_by_expert(r, E)
        self.w = r.weight[groups.assignment][:, None]  # (G, 1)
        self.out = self.experts.forward_grouped(x, groups.offsets, rows=groups.sample)  # (G, O), gathers x[sample]
        if r.top_k is None:  # expert choice: a sample has 0..E experts
            y = scatter_add(xp.zeros((N, self.out_features), dtype=self.dtype), self.out, groups, self.w)
        else:
            y = combine_topk(self.out, groups, (r.weight * r.kept).reshape(N, r.top_k))  # (N, O)
        return self._add_shared(x, y)

    def _check_forwarded(self, what):
        if not self.__dict__.get("_ran_forward"):  # set by Module when a forward returned; False after one raised
            raise ValueError(f"{what} needs a forward pass first: call forward(x) before {what} (none has run, or "
                             "the last one raised)")

    def _add_shared(self, x, y):
        if self.shared is not None:
            y += self.shared.forward(x, **_checked(self.shared))
        if self.residual:
            y += x
        return y

    def backward(self, dy, routing_grad=None):
        """dy (N, O) -> dx (N, D); fills the gate's and the experts' grads, balance losses included.

        routing_grad : None or a dict, a gradient of ``self.routing`` from outside the layer (a
        numpy_moe.balance.MultiLayer loss), added to the gate's; its keys among ROUTING_GRAD_KEYS.
        """
        if routing_grad is not None and (not isinstance(routing_grad, dict) or set(routing_grad) - ROUTING_GRAD_KEYS):
            raise TypeError(f"routing_grad={routing_grad!r:.200} must be None or a dict with keys among "
                            f"{sorted(ROUTING_GRAD_KEYS)} (another key would be ignored)")
        if tuple(getattr(dy, "shape", ())) != self.y_shape:
            raise ValueError(f"dy has shape {tuple(getattr(dy, 'shape', ()))}; expected {self.y_shape}, the shape of "
                             "the last forward's output")
        xp = get_array_module(dy)
        dx_shared = None if self.shared is None else self.shared.backward(dy)
        if self.residual:  # y = x + ...: dx gets dy
            dx_shared = dy.copy() if dx_shared is None else dx_shared + dy
        if self.dense:
            dg = xp.einsum("no,eno->ne", dy, self.out)  # (N, E)
            dout = self.g.T[:, :, None] * dy[None]  # (E, N, O)
            dx = self.gate.backward(dg) + self.experts.backward(dout)
            return dx if dx_shared is None else dx + dx_shared
        r = self.routing
        padded = self.dispatch_now == "padded"
        if padded:
            dx_experts, dweight = padded_backward(self.experts, dy, self.padded, r.kept)  # (N, D), (M,)
            grad = {"weight": dweight}
        elif self.dense_now:
            dg = xp.einsum("no,eno->ne", dy, self.out)  # (N, E)
            grad = {"weight": dg[r.sample, r.expert] * r.kept}  # (M,)
            dx_experts = self.experts.backward(self.g.T[:, :, None] * dy[None])  # (N, D)
        else:
            g = self.groups  # the experts gather w dy[sample] and return <dy[sample], out> as well
            dx_experts, dw = self.experts.backward_grouped(dy, rows=g.sample, weight=self.w)  # (G, D), (G,)
            # dropped assignments keep 0; when none was dropped every entry is written
            dweight = (xp.empty if g.assignment.shape == r.weight.shape else xp.zeros)(r.weight.shape, dtype=self.dtype)
            dweight[g.assignment] = dw
            grad = {"weight": dweight}
        extra = [loss.backward() for loss in self.losses]
        if self.mask is not None:
            extra = [B.expand_grad(e, r, self.mask, self.counted_index) for e in extra]
        for part in extra + ([routing_grad] if routing_grad else []):
            for key, value in part.items():
                grad[key] = grad[key] + value if key in grad else value
        if self.denominator is not None:  # the weights were renormalised after dropping (MATH.md §4.4)
            grad["weight"] = renormalize_backward(grad["weight"], r, self.denominator)
        if self.dense_now or padded or r.top_k is None:
            dx = self.gate.backward(grad)  # (N, D)
            if dx_shared is not None:
                dx += dx_shared
            if self.dense_now or padded:
                return dx + dx_experts
            return scatter_add(dx, dx_experts, self.groups)
        # top-k: the gate's backward and the combine of the experts' input gradient are independent, so they
        # run at once on two threads where the experts do (workers.run_blocks), from OVERLAP_FROM values of
        # dx_experts (about 1 ms saved of 46 at the benchmark's second configuration); the sums are the same
        done = {}
        kept = r.kept.reshape(dy.shape[0], r.top_k).astype(self.dtype)

        def gate_part():
            done["gate"] = self.gate.backward(grad)  # (N, D)

        def combine_part():
            done["experts"] = combine_topk(dx_experts, self.groups, kept)  # (N, D)

        run_blocks([gate_part, combine_part], [dx_experts.size / 2] * 2, like=dy, serial_below=OVERLAP_FROM)
        dx = done["gate"]
        if dx_shared is not None:
            dx += dx_shared
        dx += done["experts"]
        return dx

    @property
    def diagnostics(self):
        """Routing statistics of the last forward over the counted samples (mask), as NumPy arrays / ints.

        samples_per_expert : (E,) kept assignments per expert, counting all K experts of every sample (the
            counts sum to N K minus the dropped ones; divide by that sum for each expert's share of the
            N K assignments, which is at most 1 / K); N each for the dense gate. Not the top-1 share
            (the fraction of samples whose largest weight is expert e) that estimators call ``expert_usage_``.

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
        r = self.counted
        return {"samples_per_expert": to_numpy(xp.bincount(r.expert[r.kept], minlength=E)),
                "importance": to_numpy(xp.bincount(r.expert, weights=self.gate_weight, minlength=E)),
                "dropped": int(r.kept.size - int(r.kept.sum()))}
