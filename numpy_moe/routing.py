"""Sparse dispatch and combine, expert capacity with dropping (MATH.md §2, §4).

A gate's :class:`~numpy_moe.gates.Routing` lists M (sample, expert) assignments. Sparse dispatch runs
each expert only on its own samples, at a cost proportional to the number of kept assignments (N K for
top-k) rather than N E:

1. :func:`group_by_expert` sorts the kept assignments by expert once (a stable argsort of the expert ids)
   into a :class:`Groups`: rows ``offsets[e]:offsets[e+1]`` of the grouped batch belong to expert e.
2. ``x[groups.sample]`` gathers the rows in one take; ``ExpertBank.forward_grouped`` runs expert e on its
   block (one GEMM per expert layer).
3. The weighted expert outputs go back to their samples: for top-k, :func:`combine_topk` gathers each
   sample's K rows and sums them with their weights in one pass (a sparse-matrix product with K entries
   per row, :func:`~numpy_moe.backend.combine_rows`); for expert choice (0..E experts per
   sample), :func:`scatter_add` adds each expert's block with ``y[idx] += v``, exact without
   ``np.add.at`` because a sample occurs at most once within one expert's block.

The backward uses the same grouping: gather dy rows, run the experts' grouped backward, scatter-add dx.

:func:`apply_capacity` limits each expert to C = ceil(N K capacity_factor / E) assignments (GShard,
Switch, V-MoE): all first choices are served before any second choice, and within one rank samples go
by position or, with batch-prioritised routing (V-MoE), by descending max_e p[n, e]. A dropped
assignment contributes zero to its sample's output. :class:`Capacity` configures the layer's rule: that
order or DeepSpeed's (by position only, or by the assignment's logit / probability), a minimum capacity,
and renormalising the kept weights after dropping (fairseq, DeepSpeed; MATH.md §4.4).
"""
import math
from functools import partial
from typing import NamedTuple

from .backend import combine_rows, get_array_module, to_numpy
from .gates.expert_choice import capacity_ceil
from .validation import check_positive_int, check_real
from .workers import n_threads, run_blocks


def expert_capacity(n_samples, top_k, n_experts, capacity_factor):
    """C = ceil(N K capacity_factor / E), the most assignments one expert accepts (the product read as the
    decimal factor means it: :func:`~numpy_moe.gates.expert_choice.capacity_ceil`)."""
    n_samples = check_positive_int(n_samples, "n_samples", minimum=0)  # public: n_experts=0 divided by zero,
    top_k, n_experts = check_positive_int(top_k, "top_k"), check_positive_int(n_experts, "n_experts")  # 2.7 ran
    capacity_factor = check_real(capacity_factor, "capacity_factor", 0, low_open=True)
    capacity = n_samples * top_k * capacity_factor / n_experts
    # a finite factor near 1e308 overflows the product to inf, which no int holds: the capacity is then
    # N K, which no expert can exceed either (it gets at most every assignment)
    return n_samples * top_k if math.isinf(capacity) else capacity_ceil(capacity)


def apply_capacity(routing, capacity, batch_priority=False):
    """Drop the top-k assignments beyond each expert's ``capacity``; returns a new Routing.

    Parameters
    ----------
    routing : a top-k Routing (assignments sample-major, M = N K).
    capacity : C, the most assignments an expert keeps.
    batch_priority : False: within a rank, earlier samples first; True: samples with a larger top
        probability max_e p[n, e] first (V-MoE's batch-prioritised routing).

    Returns
    -------
    The routing with ``kept`` False for dropped assignments.

    Notes
    -----
    Priority key of assignment (n, k): (k, position of n) (see :func:`capacity_mask`).
    """
    xp = get_array_module(routing.expert)
    N, E = routing.logits.shape
    K = routing.top_k
    position = xp.arange(N)
    if batch_priority:
        top = routing.probs.max(axis=1)  # max_e p[n, e], (N,): a gate's first choice need not be its argmax
        position = priority_positions(top)
    return routing._replace(kept=capacity_mask(routing.expert, position, K, E, capacity) & routing.kept)


def priority_positions(top):
    """Batch-prioritised order: position[n] = rank of sample n by descending top probability (stable)."""
    xp = get_array_module(top)
    N = top.shape[0]
    position = xp.empty(N, dtype=xp.intp)
    position[xp.argsort(-top, kind="stable")] = xp.arange(N)
    return position


def capacity_mask(expert, position, top_k, n_experts, capacity):
    """(M,) True for the assignments that get one of their expert's ``capacity`` slots.

    expert : (M,) the experts of a top-k routing, sample-major (M = N K). position : (N,) each sample's
    place in the priority order (a permutation of 0..N-1). Priority key of assignment (n, k):
    (k, position[n]), so every first choice precedes every second choice. One argsort of
    (expert, k, position) puts each expert's assignments in priority order; an assignment is kept when
    its slot within its expert's block is < capacity.
    """
    xp = get_array_module(expert)
    N, K, E = position.shape[0], top_k, n_experts
    M = N * K
    rank = xp.tile(xp.arange(K), N)  # (M,)
    order = xp.argsort((expert * K + rank) * N + position[xp.repeat(xp.arange(N), K)])  # unique keys
    e_sorted = expert[order]
    start = xp.searchsorted(e_sorted, xp.arange(E))  # (E,) first slot of each expert
    kept = xp.empty(M, dtype=bool)
    kept[order] = xp.arange(M) - start[e_sorted] < capacity
    return kept


POLICIES = ("gshard", "batch_priority", "position", "logits", "probs")


class Capacity:
    """How a top-k layer limits each expert's assignments: the capacity, the drop order, renormalisation.

    Parameters
    ----------
    factor : cf > 0; C = max(ceil(N K cf / E), min_capacity) assignments per expert.
    policy : the order in which an expert serves its assignments (the first C are kept):
        "gshard" (every first choice before any second choice, then by position: GShard, fairseq
        ``top2gating``, Switch, DeepSpeed ``top2gating``); "batch_priority" (as gshard, but within a choice
        rank samples with a larger max_e p[n, e] first: V-MoE, fairseq ``batch_prioritized_routing``);
        "position" (by token position only, first and later choices alike: DeepSpeed ``topkgating``
        ``drop_policy='position'``, and ``top1gating``); "logits" (by the router logit of the assignment,
        largest first, ties by position: DeepSpeed ``topkgating`` ``drop_policy='probs'``, which ranks by
        ``topk(logits)`` values in the revision whose hand-written masks DeepSpeed's tests hold, commit
        27d3016; tests/test_golden.py reproduces them); "probs" (by the assignment's softmax probability,
        largest first: the later revision 0c691a5 of ``topkgating``, which takes ``topk(softmax(logits))``).
    min_capacity : C is at least this (DeepSpeed's ``min_capacity``; 0 = no floor).
    renormalize : False, or True to divide each sample's weights by the sum of its KEPT weights after
        dropping, the denominator clamped at the dtype's eps (fairseq ``top2gating`` with
        ``normalize_gate_prob_before_dropping=False``, DeepSpeed ``top2gating`` / ``topkgating``); a sample
        whose second choice was dropped then puts weight 1 on its first. A dropped assignment keeps its
        gate weight, as without renormalising. Use it with an unnormalised gate (MATH.md §4.4 has the
        backward).

    ``MoE(capacity_factor=cf, batch_priority=b)`` is short for ``MoE(capacity=Capacity(cf, "batch_priority"
    if b else "gshard"))``. ``to_dict()`` / ``Capacity(**d)`` round-trip it (io saves the dict).
    """

    def __init__(self, factor, policy="gshard", min_capacity=0, renormalize=False):
        self.factor = check_real(factor, "factor", 0, low_open=True)
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r} must be one of {POLICIES}")
        min_capacity = check_positive_int(min_capacity, "min_capacity", minimum=0)  # np.int64 too, stored as int
        if renormalize not in (True, False):
            raise TypeError(f"renormalize={renormalize!r} must be True or False")
        self.policy, self.min_capacity, self.renormalize = policy, min_capacity, bool(renormalize)

    def to_dict(self):
        return {"factor": self.factor, "policy": self.policy, "min_capacity": self.min_capacity,
                "renormalize": self.renormalize}

    def __repr__(self):
        return "Capacity(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"

    def __eq__(self, other):
        return isinstance(other, Capacity) and self.to_dict() == other.to_dict()

    def slots(self, n_samples, top_k, n_experts):
        """C = max(ceil(N K factor / E), min_capacity)."""
        return max(expert_capacity(n_samples, top_k, n_experts, self.factor), self.min_capacity)

    def apply(self, routing):
        """Drop the assignments beyond each expert's C in this policy's order; renormalise if asked.

        Returns the new Routing (``kept`` False for a dropped assignment; with ``renormalize`` a kept
        assignment's ``weight`` is w / max(sum of the sample's kept w, eps), a dropped one's stays w) and the
        denominators (N, 1) or None, which :func:`renormalize_backward` needs.
        """
        N, E = routing.logits.shape
        K = routing.top_k
        C = self.slots(N, K, E)
        if self.policy in ("gshard", "batch_priority"):
            r = apply_capacity(routing, C, self.policy == "batch_priority")
        else:
            source = {"logits": routing.logits, "probs": routing.probs}.get(self.policy)
            score = None if source is None else source[routing.sample, routing.expert]  # (M,)
            kept = ordered_keep(routing.expert, score, N, K, E, C)
            r = routing._replace(kept=kept & routing.kept)
        if not self.renormalize:
            return r, None
        return renormalize_kept(r)


def layer_capacity(capacity, capacity_factor, batch_priority, top_k):
    """The MoE layer's Capacity (None: no limit) from ``capacity`` (a Capacity, its dict or None) or its short
    form ``capacity_factor`` / ``batch_priority``; ``top_k`` is the gate's (None: a capacity_factor belongs
    to the expert-choice gate, and a Capacity is refused)."""
    if capacity is None:
        if capacity_factor is None or top_k is None:
            return None
        return Capacity(capacity_factor, "batch_priority" if batch_priority else "gshard")
    if capacity_factor is not None or batch_priority:
        raise ValueError(f"capacity={capacity!r} and capacity_factor={capacity_factor!r} / "
                         f"batch_priority={batch_priority!r}: give the Capacity or its short form, not both")
    if isinstance(capacity, dict):
        capacity = Capacity(**capacity)
    if not isinstance(capacity, Capacity):
        raise TypeError(f"capacity={capacity!r} must be None, a numpy_moe.routing.Capacity or its to_dict()")
    if top_k is None:
        raise ValueError(f"capacity={capacity!r} needs a top-k gate (an ExpertChoiceGate carries its own "
                         "capacity_factor)")
    return capacity


def ordered_keep(expert, score, n_samples, top_k, n_experts, capacity):
    """(M,) True for the top-k assignments kept when each expert serves its assignments by position
    (``score`` None) or by descending ``score`` (M,), ties by position (DeepSpeed ``topkgating``)."""
    xp = get_array_module(expert)
    M = n_samples * top_k
    token = xp.repeat(xp.arange(n_samples), top_k)  # (M,)
    key = token if score is None else -score
    order = xp.lexsort((token, key, expert))  # by expert, then key, then token
    start = xp.searchsorted(expert[order], xp.arange(n_experts))  # (E,)
    kept = xp.empty(M, dtype=bool)
    kept[order] = xp.arange(M) - start[expert[order]] < capacity
    return kept


def renormalize_kept(routing):
    """w'_m = w_m / d_n for a kept assignment, d_n = max(sum of sample n's kept w, eps); a dropped one keeps
    w'_m = w_m, as without renormalising (the combine ignores it; a loss that reads the weights, such as
    Importance over the gates, sees the gate's value). Returns (the routing with w', d (N, 1))."""
    xp = get_array_module(routing.weight)
    N, K = routing.logits.shape[0], routing.top_k
    w = routing.weight.reshape(N, K)
    kept = routing.kept.reshape(N, K)
    s = (w * kept).sum(axis=1, keepdims=True)  # (N, 1)
    d = xp.maximum(s, xp.finfo(w.dtype).eps)
    return routing._replace(weight=xp.where(kept, w / d, w).reshape(-1)), d


def renormalize_backward(dweight, routing, d):
    """dw from dw' for :func:`renormalize_kept` (MATH.md §4.4): for a kept m, dw_m = (dw'_m - [s_n > eps]
    sum over n's kept j of dw'_j w'_j) / d_n (the denominator is constant where it was clamped); for a
    dropped m, dw_m = dw'_m. ``routing`` holds w'."""
    xp = get_array_module(dweight)
    N, K = d.shape[0], routing.top_k
    kept = routing.kept.reshape(N, K)
    dw = dweight.reshape(N, K)
    inner = (dw * routing.weight.reshape(N, K) * kept).sum(axis=1, keepdims=True)  # (N, 1), kept j only
    active = d > xp.finfo(d.dtype).eps  # the unclamped denominators; s = d there
    return xp.where(kept, (dw - active * inner) / d, dw).reshape(-1)


class Groups(NamedTuple):
    """Kept assignments grouped by expert.

    assignment : (G,) indices into the routing's assignments, sorted by expert (stable).
    sample : (G,) the sample of each grouped row.
    offsets : list of E + 1 Python ints; expert e owns rows offsets[e]:offsets[e+1].
    slot : (M,) the grouped row of each assignment (0 for a dropped one), the inverse of ``assignment``.
    """
    assignment: object
    sample: object
    offsets: list
    slot: object


def group_by_expert(routing, n_experts):
    """Sort the kept assignments of ``routing`` by expert (one stable argsort) -> :class:`Groups`.

    The sort keys are the expert indices in 16 bits (a radix sort) while E < 32768; the block offsets are
    found in the sorted keys by a binary search (E + 1 of them) rather than counted by a pass over all of
    them; and when every assignment was kept (no capacity drop) the kept subset is not gathered first.
    """
    xp = get_array_module(routing.expert)
    keys = routing.expert.astype(xp.int16 if n_experts < 32768 else xp.int32)
    if bool(routing.kept.all()):
        a = xp.argsort(keys, kind="stable")  # (G,) with G = M
        keys = keys[a]
    else:
        a = xp.flatnonzero(routing.kept)  # (G,)
        keys = keys[a]
        order = xp.argsort(keys, kind="stable")
        a, keys = a[order], keys[order]
    offsets = to_numpy(xp.searchsorted(keys, xp.arange(n_experts + 1, dtype=keys.dtype))).tolist()  # E + 1
    # every slot is written when nothing was dropped; dropped assignments keep slot 0
    slot = (xp.empty if a.shape == routing.expert.shape else xp.zeros)(routing.expert.shape, dtype=a.dtype)
    slot[a] = xp.arange(a.shape[0])
    return Groups(assignment=a, sample=routing.sample[a], offsets=offsets, slot=slot)


COMBINE_SPLIT = 1 << 16  # output values from which combine_topk splits its rows over the threads


def combine_topk(values, groups, weight):
    """y_n = sum_k weight[n, k] values[slot of (n, k)], for a top-k routing: (N, F).

    values : (G, F) in group order. weight : (N, K), zero where an assignment was dropped.
    Top-k assignments are sample-major with exactly K per sample, so sample n's rows are
    ``groups.slot.reshape(N, K)[n]``: a gather of rows with a weighted sum over K
    (:func:`~numpy_moe.backend.combine_rows`), where a scatter would need NumPy's much slower
    row-wise fancy indexing. From COMBINE_SPLIT output values on, blocks of rows run on the threads of
    :mod:`numpy_moe.workers`, each into its own rows of the output (each row's sum is the same as in one
    block, so the result does not depend on the split).
    """
    xp = get_array_module(values)
    index = groups.slot.reshape(weight.shape)
    N, F = weight.shape[0], values.shape[1]
    threads = n_threads() if xp.__name__ == "numpy" and N * F >= COMBINE_SPLIT else 1
    if threads < 2:
        return combine_rows(values, index, weight)
    out = xp.empty((N, F), dtype=values.dtype)
    bounds = [N * t // threads for t in range(threads + 1)]

    def part(lo, hi):
        out[lo:hi] = 0
        combine_rows(values, index[lo:hi], weight[lo:hi], out=out[lo:hi])

    run_blocks([partial(part, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])], like=values)
    return out


def scatter_add(target, values, groups, weight=None):
    """target[groups.sample] += weight * values, in place; returns target.

    values : (G, F) in group order. weight : (G, 1) or None (1). target : (N, F).
    Exact without ``np.add.at`` because a sample occurs at most once within an expert's block; the
    weighting happens block by block, while the block is in cache.
    """
    o = groups.offsets
    for lo, hi in zip(o[:-1], o[1:]):
        if hi > lo:
            target[groups.sample[lo:hi]] += values[lo:hi] if weight is None else values[lo:hi] * weight[lo:hi]
    return target


def combine_weights(routing):
    """The (N, E) combine-weight matrix of a routing: W[n, e] = the weight of assignment (n, e) if it was
    kept, 0 where sample n was not routed to expert e or its assignment was dropped.

    Parameters
    ----------
    routing : a :class:`~numpy_moe.gates.Routing` of any gate (top-k, expert choice, scored, BASE, Sinkhorn,
        hash), for example ``moe.routing`` after a forward (capacity applied, weights renormalised if the
        layer's Capacity says so).

    Returns
    -------
    W : (N, E) array of the routing's dtype. Without a shared expert or residual, the layer's output is
    ``y[n] = sum_e W[n, e] E_e(x[n])`` (MATH.md §2): the dense form of the sparse dispatch, and the dense
    gate's ``g`` for a sparse gate.

    Notes
    -----
    A (sample, expert) pair occurs at most once in a routing, so one scatter ``W[sample, expert] = weight *
    kept`` is exact. Memory is N E: use it to inspect or compare a routing, not inside the sparse layer.
    """
    if not all(hasattr(routing, a) for a in ("sample", "expert", "weight", "kept", "logits")):
        raise TypeError(f"routing={type(routing).__name__} must be a numpy_moe.gates.Routing (the result of a "
                        "sparse gate's forward, or moe.routing)")
    xp = get_array_module(routing.weight)
    W = xp.zeros(routing.logits.shape, dtype=routing.weight.dtype)  # (N, E)
    W[routing.sample, routing.expert] = routing.weight * routing.kept
    return W
