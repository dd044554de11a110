"""DeepSpeed's capacity rule for top-k routing, with its two drop policies (sharded_moe.py ``topkgating``).

GShard's order serves every first choice before any second choice (:func:`numpy_moe.routing.capacity_mask`).
DeepSpeed's ``topkgating`` orders each expert's assignments differently (the layer does the same with
``numpy_moe.routing.Capacity(policy="position" | "logits")``; this module is the standalone rule, with
DeepSpeed's buffer slots, that tests/test_golden.py checks against DeepSpeed's own masks):

- ``drop_policy='position'``: by token position only, first and later choices alike;
- ``drop_policy='probs'``: by the assignment's score, largest first; the score DeepSpeed ranks by is the
  router *logit* of the assignment (``top_gate`` of ``topk(logits)``), not its softmax probability, which
  orders tokens differently across rows (tests/test_golden.py reproduces DeepSpeed's hand-written masks).

Each expert keeps its first ``capacity`` assignments in that order; a kept assignment's slot in the
expert's buffer is its rank among the expert's kept assignments in token order (DeepSpeed recomputes
``locations = cumsum(mask, dim=0) - 1`` after dropping). DeepSpeed's capacity is
``ceil(S / E * capacity_factor * k)``, at least ``min_capacity``.
"""
import math

from ..backend import get_array_module

POLICIES = ("position", "probs")


def deepspeed_capacity(n_tokens, n_experts, top_k, capacity_factor=1.0, min_capacity=1):
    """ceil(S / E * capacity_factor * k), at least min_capacity (sharded_moe.py ``_capacity``)."""
    return max(math.ceil(n_tokens / n_experts * capacity_factor * top_k), min_capacity)


def deepspeed_keep(expert, score, n_experts, capacity, policy="position"):
    """Which top-k assignments DeepSpeed's ``topkgating`` keeps, and their slots.

    Parameters
    ----------
    expert : (N, K) the chosen experts of each token. score : (N, K) what the "probs" policy ranks by
        (DeepSpeed: the router logits of the chosen experts).
    n_experts : E. capacity : C, the slots per expert. policy : "position" or "probs".

    Returns
    -------
    kept : (N, K) bool. slot : (N, K) int, the kept assignment's place in its expert's buffer (-1 if dropped).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy={policy!r} must be one of {POLICIES}")
    xp = get_array_module(expert)
    N, K = expert.shape
    token = xp.repeat(xp.arange(N), K)  # (M,)
    e = expert.reshape(-1)
    key = token if policy == "position" else -score.reshape(-1)  # ties: token order
    order = xp.lexsort((token, key, e))  # by expert, then key, then token
    start = xp.searchsorted(e[order], xp.arange(n_experts))  # (E,)
    kept = xp.empty(N * K, dtype=bool)
    kept[order] = xp.arange(N * K) - start[e[order]] < capacity
    slot = xp.full(N * K, -1)
    by_token = xp.lexsort((token, e))  # each expert's assignments in token order
    kept_sorted = kept[by_token]
    cum = xp.cumsum(kept_sorted)  # kept assignments up to here, over all experts
    first = xp.searchsorted(e[by_token], xp.arange(n_experts))  # (E,) start of each expert's block
    before = xp.concatenate([xp.zeros(1, dtype=cum.dtype), cum])[first]  # (E,) kept before each block
    slot[by_token] = xp.where(kept_sorted, cum - 1 - before[e[by_token]], -1)
    return kept.reshape(N, K), slot.reshape(N, K)
