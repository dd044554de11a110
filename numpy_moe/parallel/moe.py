"""The expert-parallel MoE layer: experts split over MPI ranks, tokens moved by all-to-all (MATH.md §2.6).

Each of the W ranks holds the whole (replicated) gate, E / W of the experts (rank r owns experts
r E/W ... (r+1) E/W - 1) and its own batch of samples (data parallelism). A forward pass:

1. every rank routes its own samples with the gate (capacity and balance-loss statistics are taken
   over all ranks together, see below);
2. **dispatch**: each rank sends every kept assignment's input row to the rank that owns its expert,
   with one all-to-all;
3. each rank runs its experts on the rows it received (all ranks' rows for expert e, rank 0's first);
4. **combine**: a second all-to-all sends the expert outputs back to the rank the sample lives on,
   which sums them with the gate weights.

The backward runs the two exchanges in reverse (output gradients to the experts, input gradients back)
and sums the gate's gradients over the ranks (Allreduce): the gate is data parallel, the experts' gradients
stay with the rank that owns them.

Two dispatch modes (GShard / DeepSpeed-MoE and MegaBlocks):

- ``mode="padded"``: every rank sends a fixed (E/W, C, D) block to every rank (``MPI_Alltoall``), rows
  beyond an expert's slots are zeros, and experts compute on all W C rows of their buffer (padding
  included, as GShard does; padding rows get zero gradient). Needs ``capacity_factor``.
- ``mode="dropless"``: the per-expert row counts are exchanged first (an Alltoall of E/W integers per
  rank pair), then exactly the kept rows move (``MPI_Alltoallv``). No capacity, no token is dropped.

Equal to :class:`numpy_moe.moe.MoE` with the same arguments and seed on the concatenated batch
``concatenate([x of rank 0, x of rank 1, ...])``, in every output, balance loss and gradient, up to the
order of floating-point sums: the capacity is ``C = ceil(N K cf / E)`` with N the total number of samples,
and the slots of each expert go by (choice k, position in the concatenated batch), computed from an
exclusive scan of the per-rank counts; the balance losses sum their per-expert statistics over the ranks
(:attr:`numpy_moe.balance.BalanceLoss.reduce`); the training noise is the single-process draw of the
concatenated batch, of which each rank keeps its own rows. Batch-prioritised capacity and expert-choice
routing need an order over the whole batch, so every rank gathers the few numbers per sample they sort
on (top probability and choices; the router probabilities) and applies the single-process rule.

Run it with ``mpiexec -n W python script.py``; wrap the script's body in
:func:`numpy_moe.parallel.abort_on_error` so that an exception on one rank ends all of them.
"""
import hashlib

from ..backend import default_rng, get_array_module, to_numpy
from ..experts import ExpertBank
from ..layers import Module
from ..gating import Routing, expert_choice_capacity
from ..moe import MoE
from ..routing import (capacity_mask, combine_topk, expert_capacity, group_by_expert, priority_positions,
                       scatter_add)
from ..validation import check_input, check_positive_int
from .comm import Comm

MODES = ("dropless", "padded")


class _GlobalNoise:
    """Stands in for the gate's generator during one forward: draws the noise of the whole concatenated
    batch, (E, N_total) as the single-process gate does, and hands the gate this rank's columns."""

    def __init__(self, rng, start, n_total):
        self.rng, self.start, self.n_total = rng, start, n_total

    def standard_normal(self, shape):
        E, N = shape
        return self.rng.standard_normal((E, self.n_total))[:, self.start:self.start + N]


class ExpertParallelMoE(Module):
    """A sparse MoE layer with its experts sharded over the MPI ranks (expert parallelism).

    Parameters
    ----------
    in_features, out_features, n_experts, hidden, seed, dtype, top_k, gate, noise, noise_std, router,
    batch_priority, balance :
        as for :class:`numpy_moe.moe.MoE`, with a sparse gate (``top_k`` or ``router="expert_choice"``).
        Every rank must pass the same values; the parameters are then those of ``MoE`` with the same
        seed, the gate on every rank and expert e on rank e // (E / W).
    capacity_factor : cf. Top-k: the capacity of the concatenated batch C = ceil(N_total K cf / E),
        required by ``mode="padded"``, refused by ``mode="dropless"``. Expert choice (both modes): each
        expert takes its C = min(N_total, ceil(N_total cf / E)) best samples of the concatenated batch.
    mode : "dropless" (counts, then Alltoallv) or "padded" (fixed (E/W, C, ·) blocks with Alltoall).

    Attributes
    ----------
    comm : the :class:`~numpy_moe.parallel.comm.Comm` over ``MPI.COMM_WORLD``. rank, world_size : its
    rank and W. n_local : E / W experts on this rank, ``first_expert`` the global index of the first.
    After a forward: ``routing`` (this rank's samples), ``capacity`` (C or None), ``send_counts`` (E,)
    kept assignments this rank sends to each expert, ``traffic`` {"forward", "backward"}: bytes this rank
    sent to other ranks in each pass (MATH.md §2.6).

    Shapes: x (N_r, D) -> y (N_r, O), N_r this rank's samples (0 is allowed). Parameters: gate.W (D, E),
    gate.b (E,), [gate.W_noise], experts.W1 (E/W, D, H), ... (this rank's experts only).

    Notes
    -----
    Forward and backward are those of :class:`~numpy_moe.moe.MoE` (MATH.md §2.4-2.5) with the rows of
    expert e moved to and from its rank; the all-to-all is a permutation of the rows of all ranks, so
    its backward is the inverse exchange (MATH.md §2.6). The gate's gradient is the sum over the ranks of
    the per-rank gradients, each rank's balance-loss gradient already scaled by the global statistics.
    """

    def __init__(self, in_features, out_features, n_experts, hidden=None, seed=None, dtype="float64", *,
                 top_k=None, gate="softmax_then_topk", noise=None, noise_std=1.0, router="topk",
                 capacity_factor=None, batch_priority=False, balance=None, mode="dropless"):
        super().__init__(dtype)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {MODES}")
        if router == "topk" and top_k is None:
            raise ValueError("a dense gate sends every sample to every expert: pass top_k=K or "
                             "router='expert_choice' (or use numpy_moe.moe.MoE)")
        if mode == "padded" and capacity_factor is None:
            raise ValueError("mode='padded' sends fixed blocks of C = ceil(N K capacity_factor / E) rows: "
                             "pass capacity_factor (got None)")
        if mode == "dropless" and router == "topk" and capacity_factor is not None:
            raise ValueError(f"mode='dropless' drops no token: pass capacity_factor=None "
                             f"(got {capacity_factor!r}) or use mode='padded'")
        self.comm = Comm()
        self.rank, self.world_size = self.comm.rank, self.comm.size
        E = check_positive_int(n_experts, "n_experts")
        W = self.world_size
        error = None
        if E % W:
            error = f"n_experts={E} must be divisible by the number of ranks ({W})"
        self.comm.check(error)
        config = (in_features, out_features, E, hidden, str(self.dtype), top_k, gate, noise, noise_std,
                  router, capacity_factor, batch_priority, repr(balance), mode)
        configs = self.comm.allgather(config)
        if any(c != configs[0] for c in configs):
            raise ValueError("every rank must build the layer with the same arguments; got "
                             + "; ".join(f"rank {r}: {c}" for r, c in enumerate(configs)))
        if seed is None:  # one fresh draw for all ranks: the gate is replicated, the experts are one set
            seed = self.comm.allgather(int(default_rng().integers(2 ** 63)) if self.rank == 0 else None)[0]
        self.seed = seed
        ref = MoE(in_features, out_features, E, hidden, seed, dtype, top_k=top_k, gate=gate, noise=noise,
                  noise_std=noise_std, router=router, capacity_factor=capacity_factor,
                  batch_priority=batch_priority, balance=balance)
        digest = hashlib.sha256(b"".join(to_numpy(p).tobytes() for _, p in ref.named_parameters())).hexdigest()
        if len(set(self.comm.allgather(digest))) > 1:
            raise ValueError(f"seed={seed!r} built different parameters on different ranks; pass the same int seed "
                             "on every rank (or None: rank 0 draws one for all)")
        self.in_features, self.out_features, self.n_experts = ref.in_features, ref.out_features, E
        self.top_k, self.capacity_factor, self.mode = top_k, capacity_factor, mode
        self.router, self.batch_priority = router, bool(batch_priority)
        self.n_local = E // W
        self.first_expert = self.rank * self.n_local
        self.gate = ref.gate  # replicated: the same parameters on every rank
        self.experts = ExpertBank(self.n_local, in_features, out_features, hidden, seed=0, dtype=dtype)
        for key, p in self.experts.params.items():  # this rank's slice of the single-process experts
            p[...] = ref.experts.params[key][self.first_expert:self.first_expert + self.n_local]
        self.losses = ref.losses
        for loss in self.losses:
            loss.reduce = self.comm.allreduce  # statistics over all ranks
        self._aux = 0.0
        self.traffic = {"forward": 0, "backward": 0}

    @property
    def aux_loss(self):
        """Weighted sum of the balance losses of the last forward, over all ranks (the same on every rank)."""
        return self._aux

    def _check(self, x):
        """Validate x on every rank together: the same error on every rank if any rank's x is bad.

        Returns this rank's x (as the layer's dtype), the start of its rows in the concatenated batch and
        the total number of samples.
        """
        error, dtype = None, str(getattr(x, "dtype", type(x).__name__))
        try:
            x = check_input(x, self.in_features, self.dtype)
        except (TypeError, ValueError) as e:
            error = e
        self.comm.check(error)
        info = self.comm.allgather((dtype, x.shape[0]))
        if any(d != info[0][0] for d, _ in info):
            raise ValueError("x has a different dtype on different ranks: "
                             + ", ".join(f"rank {r}: {d}" for r, (d, _) in enumerate(info))
                             + "; expected the same dtype on every rank")
        sizes = [n for _, n in info]
        return x, sum(sizes[:self.rank]), sum(sizes)

    def _capacity(self, r, C, start, n_total):
        """Keep each expert's first C assignments over the concatenated batch (MATH.md §2.6).

        The slot of this rank's assignment (n, k) to expert e is: assignments to e with an earlier choice
        on any rank, plus those with choice k on lower ranks (an exclusive scan of the per-rank counts),
        plus those with choice k from earlier samples of this rank: the single-process rule's order
        (choice, position in the concatenated batch). Batch priority orders samples by their top
        probability over the whole batch, which interleaves the ranks: every rank then gathers every
        sample's top probability and choices (N (K + 1) numbers) and applies the single-process rule.
        """
        xp = get_array_module(r.expert)
        E, K = self.n_experts, self.top_k
        M = r.expert.shape[0]
        if self.batch_priority:
            N = M // K
            top = r.probs.max(axis=1)  # (N,) max_e p[n, e] (as routing.apply_capacity)
            top_all = xp.concatenate(self.comm.allgather(top))
            expert_all = xp.concatenate(self.comm.allgather(r.expert))
            kept = capacity_mask(expert_all, priority_positions(top_all), K, E, C)
            return r._replace(kept=r.kept & kept[start * K:start * K + M])
        key = r.expert * K + xp.tile(xp.arange(K), M // K)  # (M,) the (expert, choice) of each assignment
        local = xp.bincount(key, minlength=E * K)  # (E K,)
        lower_ranks = self.comm.exscan(local)
        total = self.comm.allreduce(local).reshape(E, K)
        earlier_choices = (xp.cumsum(total, axis=1) - total).reshape(-1)  # (E K,)
        order = xp.argsort(key, kind="stable")  # sample-major, so earlier samples first within a key
        within = xp.empty(M, dtype=order.dtype)
        within[order] = xp.arange(M) - xp.searchsorted(key[order], key[order])
        slot = earlier_choices[key] + lower_ranks[key] + within
        return r._replace(kept=r.kept & (slot < C))

    def forward(self, x):
        """x (N_r, D) -> y (N_r, O); collective: every rank calls it together."""
        xp = get_array_module(x)
        sent = self.comm.bytes_sent
        x, start, n_total = self._check(x)
        N, E, K = x.shape[0], self.n_experts, self.top_k
        self.capacity = None
        if self.router == "expert_choice":
            r = self._expert_choice(x, start, n_total)
        else:
            rng = self.gate.rng
            if self.gate.noise is not None and self.training:
                self.gate.rng = _GlobalNoise(rng, start, n_total)
            try:
                r = self.gate.forward(x)
            finally:
                self.gate.rng = rng
            if self.capacity_factor is not None:
                self.capacity = expert_capacity(n_total, K, E, self.capacity_factor)
                r = self._capacity(r, self.capacity, start, n_total)
        self.routing = r
        self._aux = sum(loss(r) for loss in self.losses)
        g = self.groups = group_by_expert(r, E)
        self.send_counts = xp.diff(xp.asarray(g.offsets))  # (E,)
        self.w = r.weight[g.assignment][:, None]  # (G, 1)
        if self.mode == "padded":
            self.expert_sorted = r.expert[g.assignment]  # (G,)
            first = xp.asarray(g.offsets[:-1])[self.expert_sorted]  # (G,) first grouped row of its expert
            self.slot = xp.arange(g.assignment.shape[0]) - first  # (G,) row within its expert's block of C
            rows = self.world_size * self.capacity
            offsets = [i * rows for i in range(self.n_local + 1)]
        else:
            offsets = self._plan_dropless()
        xe = self._to_experts(xp.take(x, g.sample, axis=0))  # this rank's experts' rows
        out = self._from_experts(self.experts.forward_grouped(xe, offsets))  # (G, O), this rank's rows
        self.out = out
        self.traffic["forward"] = self.comm.bytes_sent - sent
        if K is None:  # expert choice: a sample has 0..E experts
            return scatter_add(xp.zeros((N, self.out_features), dtype=self.dtype), out, g, self.w)
        return combine_topk(out, g, (r.weight * r.kept).reshape(N, K))  # (N, O)

    def _expert_choice(self, x, start, n_total):
        """Expert choice over the concatenated batch: expert e takes its C best samples of all ranks.

        Every rank gathers the router probabilities of every sample (N E numbers), makes the
        single-process choice on the whole batch and keeps the assignments of its own samples, in the
        single-process order (expert-major, best first).
        """
        xp = get_array_module(x)
        N, E = x.shape[0], self.n_experts
        local = self.gate.forward(x)  # this rank's logits and probabilities (its own choice is replaced)
        probs = xp.concatenate(self.comm.allgather(local.probs))  # (N_total, E)
        C = self.capacity = expert_choice_capacity(n_total, E, self.capacity_factor)
        chosen = xp.argsort(-probs, axis=0, kind="stable")[:C]  # (C, E), as ExpertChoiceGate does
        sample, expert = chosen.T.reshape(-1), xp.repeat(xp.arange(E), C)
        mine = (sample >= start) & (sample < start + N)
        sample, expert = sample[mine] - start, expert[mine]
        r = Routing(sample=sample, expert=expert, weight=local.probs[sample, expert],
                    kept=xp.ones(sample.shape[0], dtype=bool), logits=local.logits, clean=local.clean,
                    sigma=None, eps=None, probs=local.probs, top_k=None, convention="expert_choice")
        self.gate.routing = r  # the gate's backward reads it
        return r

    def _plan_dropless(self):
        """Exchange the counts; plan the reordering of received rows to expert-major. Returns offsets."""
        xp = get_array_module(self.send_counts)
        W, El = self.world_size, self.n_local
        self.recv_counts = self.comm.alltoall(self.send_counts.reshape(W, El))  # (W, El): from rank s to e
        self.rows_out = self.send_counts.reshape(W, El).sum(axis=1)  # (W,) rows to each rank
        self.rows_in = self.recv_counts.sum(axis=1)  # (W,) rows from each rank
        # received rows come source rank by source rank, each expert by expert; experts need them
        # expert by expert, each source rank by source rank (rank 0's rows first, as in one process)
        start = (xp.cumsum(self.recv_counts.reshape(-1)) - self.recv_counts.reshape(-1)).reshape(W, El)
        self.perm = xp.concatenate([xp.arange(start[s, e], start[s, e] + self.recv_counts[s, e])
                                    for e in range(El) for s in range(W)]).astype(xp.intp)
        return [0] + xp.cumsum(self.recv_counts.sum(axis=0)).tolist()

    def _to_experts(self, rows):
        """(G, F) rows grouped by expert on this rank -> the rows of this rank's experts, from every rank."""
        xp = get_array_module(rows)
        W, El, F = self.world_size, self.n_local, rows.shape[1]
        if self.mode == "dropless":
            return self.comm.alltoallv(rows, self.rows_out, self.rows_in)[self.perm]
        C = self.capacity
        buf = xp.zeros((self.n_experts, C, F), dtype=rows.dtype)  # zero padding beyond each expert's rows
        buf[self.expert_sorted, self.slot] = rows
        recv = self.comm.alltoall(buf.reshape(W, El, C, F))  # (W, El, C, F): block s from rank s
        return recv.transpose(1, 0, 2, 3).reshape(El * W * C, F)  # expert-major, then source rank

    def _from_experts(self, rows):
        """The inverse of :meth:`_to_experts`: expert rows go back to their samples' ranks -> (G, F)."""
        xp = get_array_module(rows)
        W, El, F = self.world_size, self.n_local, rows.shape[1]
        if self.mode == "dropless":
            back = xp.empty_like(rows)
            back[self.perm] = rows
            return self.comm.alltoallv_inverse(back, self.rows_out, self.rows_in)
        C = self.capacity
        send = rows.reshape(El, W, C, F).transpose(1, 0, 2, 3)  # (W, El, C, F): block s to rank s
        return self.comm.alltoall(send).reshape(self.n_experts, C, F)[self.expert_sorted, self.slot]

    def backward(self, dy):
        """dy (N_r, O) -> dx (N_r, D); collective. Gate grads are summed over ranks, expert grads stay."""
        xp = get_array_module(dy)
        sent = self.comm.bytes_sent
        r, g = self.routing, self.groups
        N, K = r.logits.shape[0], self.top_k
        dys = xp.take(dy, g.sample, axis=0)  # (G, O)
        dweight = xp.zeros(r.weight.shape, dtype=self.dtype)
        dweight[g.assignment] = xp.einsum("go,go->g", dys, self.out)  # dropped assignments keep 0
        grad = {"weight": dweight}
        for loss in self.losses:
            for key, value in loss.backward().items():
                grad[key] = grad[key] + value if key in grad else value
        dys *= self.w
        dx_rows = self._from_experts(self.experts.backward_grouped(self._to_experts(dys)))  # (G, D)
        dx = self.gate.backward(grad)  # (N, D)
        for key, value in self.gate.grads.items():
            self.gate.grads[key] = self.comm.allreduce(value)
        if K is None:
            dx = scatter_add(dx, dx_rows, g)
        else:
            dx += combine_topk(dx_rows, g, r.kept.reshape(N, K).astype(dx.dtype))
        self.traffic["backward"] = self.comm.bytes_sent - sent
        return dx
