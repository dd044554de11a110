"""How the sparse MoE layer runs its experts on a top-k routing: the cost model that picks one of three
dispatches, and padded dispatch (MATH.md §2.5).

- sparse: each expert on its own rows (``ExpertBank.forward_grouped``), one pass per expert;
- dense: every expert on every sample, the sparse weights then blend the outputs (post 000's way);
- padded: each expert's own rows, then zero rows up to C, the busiest expert's row count, as one (E, C, D)
  batch through the experts' batched products (``ExpertBank.forward`` on per-expert batches). This is the
  dispatch tensor of GShard (Lepikhin et al. 2020) and Switch (Fedus et al. 2021), whose C is a capacity;
  here C is the largest count, so no assignment is dropped by it. The zero rows get zero output gradient,
  so they add exactly zero to every weight gradient.

All three compute the same function (tests/test_moe_sparse.py checks them against each other). Which is
fastest depends on the batch: dense for tiny batches with few experts (it skips the per-expert Python
work), padded for small batches with many experts (the dense number of calls on C E rows instead of N E),
sparse for the rest.
"""
from .backend import combine_rows, get_array_module
from .routing import group_by_expert

# dispatch="auto": sparse dispatch costs about SPARSE_FIXED_US + SPARSE_PER_EXPERT_US * E microseconds more
# than dense dispatch before counting the products it saves, which run at about FLOPS_PER_US (measured by
# experiments/bench.py's batch-size sweep on the 2-core development machine)
SPARSE_FIXED_US, SPARSE_PER_EXPERT_US, FLOPS_PER_US = 330.0, 19.0, 4.5e4
# padded dispatch costs about PADDED_FIXED_US more than dense dispatch before counting its products (E C rows
# instead of dense dispatch's E N)
PADDED_FIXED_US = 70.0
# ... and about PADDED_ROW_US per padded row beyond its products (zeroing, placing each row and taking it
# back, the experts' element-wise passes on E C rows): 0.5 measured for 4 experts of 16 units, where it
# outweighs the products (the batch-size sweep's second shape)
PADDED_ROW_US = 0.5


def _weights_per_row(experts):
    """Multiply-adds of one row through one expert's weight matrices (D H + H O for a ReLU MLP)."""
    return sum(int(w.size) // experts.n_experts for key, w in experts.params.items() if key.startswith("W"))


def dense_is_cheaper(n_samples, top_k, experts):
    """True when running every expert on all ``n_samples`` (dense dispatch) is faster than sparse dispatch.

    The products dense dispatch adds are n (E - K) rows through each expert, forward and backward (three
    products per weight matrix, 2 flops per multiply-add); sparse dispatch's fixed cost is a constant
    plus a cost per expert (Python-level work: grouping, gathers, one pass per expert)."""
    E = experts.n_experts
    extra_flops = 6.0 * n_samples * (E - top_k) * _weights_per_row(experts)
    return extra_flops < (SPARSE_FIXED_US + SPARSE_PER_EXPERT_US * E) * FLOPS_PER_US


def cheapest_dispatch(n_samples, top_k, experts, longest):
    """"dense", "padded" or "sparse": the dispatch with the least estimated time for a top-k routing of
    ``n_samples`` whose busiest expert has ``longest`` kept rows.

    Products cost 6 flops per multiply-add of a row through an expert's weights (forward and backward) at
    FLOPS_PER_US; dense dispatch runs N rows through every expert, padded dispatch ``longest`` rows
    (zero rows after each expert's own) plus PADDED_FIXED_US and PADDED_ROW_US a row, sparse dispatch N K
    rows plus its fixed cost and a cost per expert (:func:`dense_is_cheaper`)."""
    E = experts.n_experts
    us = 6.0 * _weights_per_row(experts) / FLOPS_PER_US  # one row through one expert, forward and backward
    costs = {"sparse": SPARSE_FIXED_US + SPARSE_PER_EXPERT_US * E + us * n_samples * top_k,
             "dense": us * n_samples * E,
             "padded": PADDED_FIXED_US + (us + PADDED_ROW_US) * longest * E}
    return min(costs, key=costs.get)  # on a tie the first (as dense_is_cheaper, which it agrees with)


def padded_forward(experts, x, routing):
    """Padded dispatch of a top-k ``routing`` (capacity applied) of x (N, D) through ``experts``.

    Returns (y, state): y (N, O) = sum over each sample's kept assignments of weight * E_e(x_n); state
    holds what :func:`padded_backward` needs: the experts' padded output (E C, O), each assignment's padded
    row (N, K) (row 0 for a dropped one, whose weight is 0) and the weights (N, K).
    """
    xp = get_array_module(x)
    r, E = routing, experts.n_experts
    N, K = x.shape[0], r.top_k
    g = group_by_expert(r, E)
    C = max([1] + [hi - lo for lo, hi in zip(g.offsets[:-1], g.offsets[1:])])
    expert = r.expert[g.assignment]  # (G,) grouped by expert
    row = expert * C + (xp.arange(expert.shape[0]) - xp.asarray(g.offsets[:-1])[expert])  # (G,) its padded row
    X = xp.zeros((E * C, x.shape[1]), dtype=x.dtype)
    X[row] = x[g.sample]
    out = experts.forward(X.reshape(E, C, -1)).reshape(E * C, -1)  # (E C, O)
    index = xp.where(r.kept, row[g.slot], 0).reshape(N, K)
    weight = (r.weight * r.kept).reshape(N, K).astype(x.dtype, copy=False)
    return combine_rows(out, index, weight), {"out": out, "index": index, "weight": weight}


def padded_backward(experts, dy, state, kept):
    """dy (N, O) -> (dx (N, D) through the experts, dweight (M,)) for :func:`padded_forward`'s state; kept
    (M,) is the routing's kept mask. Fills the experts' gradients.

    dweight_m = <dy_n, E_e(x_n)> (0 for a dropped m); the experts' output gradient is weight_m dy_n at each
    kept assignment's padded row (the rows are distinct) and 0 at the zero rows; dx_n sums the input
    gradients at sample n's kept rows."""
    xp = get_array_module(dy)
    out, index, w = state["out"], state["index"], state["weight"]
    N, K = index.shape
    kept = kept.reshape(N, K)
    dweight = xp.einsum("no,nko->nk", dy, out[index]) * kept  # (N, K)
    dout = xp.zeros_like(out)  # (E C, O)
    dout[index[kept]] = (w[:, :, None] * dy[:, None, :])[kept]
    dX = experts.backward(dout.reshape(experts.n_experts, -1, out.shape[1]))  # (E, C, D)
    dx = combine_rows(dX.reshape(-1, dX.shape[2]), index, kept.astype(dy.dtype))  # (N, D)
    return dx, dweight.reshape(-1)
