"""What every gate shares: the :class:`Routing` a sparse gate returns, :func:`routing_backward`, and the
top-k selection (MATH.md §2, §10).

A sparse gate returns a Routing: the (sample, expert) assignments it chose, their combine weights and a
kept mask, plus the logits and scores the balance losses need. Nothing hides in a side buffer: the MoE
layer, the capacity rule and the balance losses all read the same Routing. A gradient with respect to a
routing is a dict (see :class:`Routing`); :func:`routing_backward` turns it into the gradient of the
logits for the softmax gates, and :class:`~numpy_moe.gates.scored.ScoreGate` has its own.
"""
from typing import NamedTuple

from .. import functional as F
from ..backend import get_array_module


class Routing(NamedTuple):
    """The routing a sparse gate chose for a batch of N samples: M (sample, expert) assignments.

    Attributes
    ----------
    sample, expert : (M,) ints, the sample and the expert of each assignment; a pair occurs at most once.
    weight : (M,) combine weights G_{sample, expert}.
    kept : (M,) bool; False where a capacity limit dropped the assignment (gates return all True).
    logits : (N, E) the logits routed on (noisy in training mode).
    clean : (N, E) the logits without noise (the same array as ``logits`` without noise).
    sigma : (N, E) noise standard deviation, or None for a gate without noise.
    eps : (N, E) the standard normal draw (logits = clean + eps * sigma), or None when no noise was added.
    probs : (N, E) softmax(logits).
    top_k : K, or None for expert choice.
    convention : "softmax_then_topk", "topk_then_softmax", "expert_choice", "scored" (ScoreGate), "base"
        (BaseGate), "sinkhorn" (SinkhornGate) or "hash" (HashGate).
    scores : (N, E) the scores the gate weights with: softmax(logits) (the same array as ``probs``) for
        the softmax gates, softmax or sigmoid of the logits for ScoreGate and SinkhornGate, sigmoid for
        BaseGate, uniform 1 / E for HashGate (whose weights are 1).
    seq_lengths : None, or the lengths of the sequences the N samples form, in order (they sum to N);
        the sequence-wise balance loss reads it.

    Top-k gates list the assignments sample-major, m = n K + k is sample n's k-th choice (k = 0 the best),
    so ``expert.reshape(N, K)`` are the chosen experts and ``weight.reshape(N, K)`` their weights. Expert
    choice lists them expert-major.

    A gradient with respect to a routing is a dict with any of the keys "weight" (M,), "logits",
    "clean", "sigma", "scores" (N, E); the gate's backward turns it into gradients of its parameters.
    """
    sample: object
    expert: object
    weight: object
    kept: object
    logits: object
    clean: object
    sigma: object
    eps: object
    probs: object
    top_k: object
    convention: str
    scores: object = None
    seq_lengths: object = None


def expert_major_logits(x, W, b=None):
    """x W [+ b], (N, E), stored expert-major: the transpose of a C-ordered (E, N) array.

    Every reduction over a sample's E experts (softmax, logsumexp, the balance losses, their
    backward) then sweeps E contiguous vectors of length N instead of N rows of length E, which NumPy
    does about 20 times faster for the small E of an MoE. The values are those of ``x @ W``: it is
    computed as x W and one transposing copy, which measured as fast as the single product (Wᵀ xᵀ)ᵀ on two
    BLAS threads and faster on one (1.05 against 1.45 ms at N = 16384, D = 64, E = 16, float32, medians
    of 300 interleaved calls). A bias ``b`` (E,) is added in that copy, the same sums as ``x @ W + b``.
    """
    xp = get_array_module(x)
    if b is None:
        return xp.ascontiguousarray((x @ W).T).T
    out = xp.empty((W.shape[1], x.shape[0]), dtype=xp.result_type(x, W, b))
    xp.add((x @ W).T, b[:, None], out=out)
    return out.T


def weight_grad(x, d):
    """xᵀ d, (D, E), C-ordered: the gradient of a gate's weight W from x (N, D) and d = dL/d(x W) (N, E).

    For an expert-major d (see :func:`expert_major_logits`) it is computed as (dᵀ x)ᵀ, a product of two
    C-ordered arrays (E, N) (N, D), about 20 % faster on one BLAS thread than xᵀ d at N = 16384, D = 64,
    E = 16 (744 against 951 µs), where the sparse layer runs the gate's backward beside its combine. The
    values are those of xᵀ d up to the order in which BLAS sums over N.
    """
    if d.ndim == 2 and d.T.flags.c_contiguous and not d.flags.c_contiguous:
        return (d.T @ x).T.copy()
    return x.T @ d


FLAT_PAIRS = 1024  # pairs from which pick_pairs / add_at_pairs go through the flat storage


def pick_pairs(a, rows, cols):
    """``a[rows, cols]`` for an (N, E) array; through its flat storage when ``a`` is expert-major (see
    :func:`expert_major_logits`) and the pairs are many (1024 or more), where one take is about twice as
    fast as NumPy's two-index gather; below that the index arithmetic costs more than it saves."""
    xp = get_array_module(a)
    if a.ndim == 2 and a.T.flags.c_contiguous and getattr(cols, "size", 0) >= FLAT_PAIRS:
        return xp.take(a.T.reshape(-1), cols * a.shape[0] + rows)
    return a[rows, cols]


def add_at_pairs(a, rows, cols, values):
    """``a[rows, cols] += values`` in place for (row, col) pairs that are all different (as in a routing),
    through the flat storage when ``a`` is expert-major and the pairs are many (see :func:`pick_pairs`)."""
    xp = get_array_module(a)
    if a.ndim == 2 and a.T.flags.c_contiguous and getattr(cols, "size", 0) >= FLAT_PAIRS:
        flat, index = a.T.reshape(-1), cols * a.shape[0] + rows
        flat[index] = xp.take(flat, index) + values
    else:
        a[rows, cols] += values
    return a


SMALL_TOPK = 4096  # N E up to which topk_indices sorts each row (NumPy's per-call cost dominates there)


def topk_indices(logits, top_k):
    """(N, K) column indices of the K largest entries of each row, largest first, lowest index on ties.

    K passes, each a max over the E experts and the first column attaining it (the largest E - e among
    the maxima); the winner is then set to -inf. These are reductions over E whole columns for
    expert-major logits (see :func:`expert_major_logits`), several times faster than a row-wise argmax.
    Small finite batches on NumPy (N E <= SMALL_TOPK) take one stable argsort of -logits instead: the same
    order (largest first, lower index first among equal values) in one call rather than 3 K.

    A NaN anywhere raises ValueError (NaN has no rank: the passes would return the index E, out of range).
    A row whose remaining maximum is -inf (fewer than K entries above -inf) takes the stable argsort too,
    where the passes would pick an already chosen column again; the checks cost one comparison per row in
    the first and the last pass.
    """
    xp = get_array_module(logits)
    N, E = logits.shape
    if logits.size <= SMALL_TOPK and xp.__name__ == "numpy" and bool(xp.isfinite(logits).all()):
        return xp.argsort(-logits, axis=1, kind="stable")[:, :top_k].astype(xp.intp, copy=False)
    rows = xp.arange(N)
    idx = xp.empty((N, top_k), dtype=xp.intp)
    h = logits.copy(order="K")  # keeps the layout
    # E - e, in the narrowest integer type that holds E: bool * int8 needs no cast, so it runs ~1.5x faster
    rank = xp.arange(E, 0, -1, dtype=xp.int8 if E < 128 else xp.int16 if E < 32768 else xp.int32)
    for k in range(top_k):
        top = h.max(axis=1, keepdims=True)  # (N, 1)
        # a NaN shows in the first max (max propagates it), a row with fewer than K values above -inf in the
        # last (maxima only fall): checked there alone, about 5 us per check at N = 16384
        if (k == 0 or k == top_k - 1) and not bool((top > -xp.inf).all()):
            return _topk_nonfinite(logits, top_k)
        idx[:, k] = E - ((h == top) * rank).max(axis=1)  # the first e with h[n, e] = top[n]
        if k < top_k - 1:
            h[rows, idx[:, k]] = -xp.inf
    return idx


def _topk_nonfinite(logits, top_k):
    """:func:`topk_indices` of logits holding -inf or NaN: a stable argsort of -logits, or ValueError for NaN."""
    xp = get_array_module(logits)
    nan_rows = xp.flatnonzero(xp.isnan(logits).any(axis=1))
    if nan_rows.size:
        raise ValueError(f"the scores to rank (N, E) = {tuple(logits.shape)} hold NaN in {int(nan_rows.size)} row(s), "
                         f"the first row {int(nan_rows[0])}: top-k needs comparable values (the router's weights "
                         "or input hold NaN, or its logits overflowed)")
    return xp.argsort(-logits, axis=1, kind="stable")[:, :top_k].astype(xp.intp, copy=False)


def routing_backward(routing, grad):
    """Gradients of the clean logits and the noise scale from a gradient ``grad`` of a softmax routing.

    Parameters
    ----------
    routing : a :class:`Routing` of a softmax gate (TopKGate, ExpertChoiceGate).
    grad : dict with any of "weight" (M,), "logits", "clean", "sigma", "scores" (N, E).

    Returns
    -------
    dclean : (N, E). dsigma : (N, E), or None when the routing has no noise.

    Notes
    -----
    softmax_then_topk and expert choice: weight_m = p_{n_m, e_m} with p = softmax(h), so
    dp_{n,e} = dweight at the assignment (n, e) (0 elsewhere) and dh = p * (dp - sum_e dp_e p_e). As dp is
    sparse, s_n = sum_e dp_{n,e} p_{n,e} = sum over n's assignments of dweight_m weight_m, and
    dh = -p s + (weight_m dweight_m at the assignments): one pass over (N, E) instead of five.
    topk_then_softmax: weight = softmax(h at the K kept), so the softmax backward runs over the K kept
    logits and the others get 0. With K = 1 the weight is identically 1 and dh = 0 (the pitfall).
    "scores" are p itself: dh += p * (dscores - sum_e dscores_e p_e).
    Noise: h = clean + eps * sigma, so dclean = dh + grad["clean"], dsigma = eps dh + grad["sigma"].
    """
    r = routing
    xp = get_array_module(r.logits)
    N, E = r.logits.shape
    dh = grad.get("logits")
    if "scores" in grad:
        ds = F.softmax_backward(grad["scores"], r.probs)
        dh = ds if dh is None else dh + ds
    if "weight" in grad:
        if r.convention == "topk_then_softmax":
            K = r.top_k
            dhk = F.softmax_backward(grad["weight"].reshape(N, K), r.weight.reshape(N, K))  # (N, K)
            dsel = xp.zeros_like(r.logits)
            dsel[xp.arange(N)[:, None], r.expert.reshape(N, K)] = dhk
        else:
            dpw = grad["weight"] * r.weight  # (M,) dp p at the assignments
            if r.top_k is not None:  # sample-major, K per sample
                s = dpw.reshape(N, r.top_k) @ xp.ones(r.top_k, dtype=dpw.dtype)  # a row sum over K, as a GEMV
            else:
                s = xp.bincount(r.sample, weights=dpw, minlength=N).astype(dpw.dtype)
            dsel = r.probs * -s[:, None]  # (N, E), the layout of probs
            add_at_pairs(dsel, r.sample, r.expert, dpw)
        dh = dsel if dh is None else dh + dsel
    elif dh is None:
        dh = xp.zeros_like(r.logits)
    dclean = dh + grad["clean"] if "clean" in grad else dh
    if r.sigma is None:
        return dclean, None
    dsigma = dh * r.eps if r.eps is not None else xp.zeros_like(dh)
    return dclean, dsigma + grad["sigma"] if "sigma" in grad else dsigma


def fixed_selection_backward(routing, grad, score):
    """dh (N, E) for a gate whose weight is a score of its chosen expert, the choice held fixed.

    Used by the BASE, Sinkhorn and hash gates: weight_m = s_{n_m, e_m} with s = sigmoid(h) or
    softmax(h) (``score``), and the selection (an assignment, a Sinkhorn plan's top-k, a hash) does not
    move under a small change of h. ds = grad["scores"] + dweight at the assignments (pairs unique);
    dh = ds s (1 - s) (sigmoid) or s (ds - sum_e ds_e s_e) (softmax); grad["logits"] and grad["clean"]
    (the same logits: no noise) add to dh.
    """
    r = routing
    xp = get_array_module(r.logits)
    ds = grad["scores"].copy() if "scores" in grad else xp.zeros_like(r.logits)
    if "weight" in grad:
        ds[r.sample, r.expert] += grad["weight"]
    s = r.scores
    dh = ds * s * (1 - s) if score == "sigmoid" else F.softmax_backward(ds, s)
    for key in ("logits", "clean"):
        if key in grad:
            dh = dh + grad[key]
    return dh
