"""Gates: map a batch to combine weights over experts (MATH.md §2, §4).

- ``SoftmaxGate`` is the dense gate of seeds 001-003: ``g = softmax(x W_g + b_g)``; every expert gets a
  weight, rows sum to 1.
- ``TopKGate`` keeps the K best experts per sample (seed 000; Shazeer et al. 2017, "Outrageously large
  neural networks"; Riquelme et al. 2021, "Scaling vision with sparse mixture of experts" (V-MoE), which
  seed 004 summarises), in either convention, with optional noise on the logits.
- ``ExpertChoiceGate`` lets each expert pick its C best samples (Zhou et al. 2022, "Mixture-of-experts
  with expert choice routing").

Sparse gates return a :class:`Routing`: the (sample, expert) assignments they chose, their combine weights
and a kept mask, plus the logits the balance losses need. Nothing hides in a side buffer: the MoE layer,
the capacity rule and the balance losses all read the same Routing. The routing's gradient goes back
through :func:`routing_backward`, which the gates' ``backward`` calls.
"""
from math import ceil
from typing import NamedTuple

from . import functional as F
from .backend import asarray, default_rng, get_array_module
from .layers import Module, init_weight, zeros_param
from .validation import check_positive_int

CONVENTIONS = ("softmax_then_topk", "topk_then_softmax")
NOISES = (None, "shazeer", "vmoe")


class SoftmaxGate(Module):
    """Dense softmax gate.

    Parameters
    ----------
    in_features : D. n_experts : E. seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (N, D) -> g (N, E); W (D, E), b (E,).

    Notes
    -----
    h = x W + b, g = softmax(h). dh = g * (dg - sum_e dg_e g_e); dW = xᵀ dh, db = sum_n dh, dx = dh Wᵀ.
    """

    def __init__(self, in_features, n_experts, seed=None, dtype="float64"):
        super().__init__(dtype)
        self.in_features = check_positive_int(in_features, "in_features")
        self.n_experts = check_positive_int(n_experts, "n_experts")
        self.params["W"] = init_weight(default_rng(seed), in_features, n_experts,
                                       (in_features, n_experts), "glorot", self.dtype)
        self.params["b"] = zeros_param(n_experts, self.dtype)
        self.zero_grad()

    def forward(self, x):
        self.x = x
        self.g = F.softmax(x @ self.params["W"] + self.params["b"])  # (N, E)
        return self.g

    def backward(self, dg):
        dh = F.softmax_backward(dg, self.g)  # (N, E)
        self.grads["W"] = self.x.T @ dh
        self.grads["b"] = dh.sum(axis=0)
        return dh @ self.params["W"].T  # (N, D)


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
    convention : "softmax_then_topk", "topk_then_softmax" or "expert_choice".

    Top-k gates list the assignments sample-major, m = n K + k is sample n's k-th choice (k = 0 the best),
    so ``expert.reshape(N, K)`` are the chosen experts and ``weight.reshape(N, K)`` their weights. Expert
    choice lists them expert-major.

    A gradient with respect to a routing is a dict with any of the keys "weight" (M,), "logits",
    "clean", "sigma" (N, E); :func:`routing_backward` turns it into gradients of the clean logits and
    the noise scale.
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


def expert_major_logits(x, W):
    """x W, (N, E), stored expert-major: the transpose of a C-ordered (E, N) array.

    Every reduction over a sample's E experts (softmax, logsumexp, the balance losses, their
    backward) then sweeps E contiguous vectors of length N instead of N rows of length E, which NumPy
    does about 20 times faster for the small E of an MoE. The values are those of ``x @ W``.
    """
    xp = get_array_module(x)
    return xp.ascontiguousarray((x @ W).T).T


def topk_indices(logits, top_k):
    """(N, K) column indices of the K largest entries of each row, largest first, lowest index on ties.

    K passes, each a max over the E experts and the first column attaining it (the largest E - e among
    the maxima); the winner is then set to -inf. These are reductions over E whole columns for
    expert-major logits (see :func:`expert_major_logits`), several times faster than a row-wise argmax.
    """
    xp = get_array_module(logits)
    N, E = logits.shape
    rows = xp.arange(N)
    idx = xp.empty((N, top_k), dtype=xp.intp)
    h = logits.copy(order="K")  # keeps the layout
    # E - e, in the narrowest integer type that holds E: bool * int8 needs no cast, so it runs ~1.5x faster
    rank = xp.arange(E, 0, -1, dtype=xp.int8 if E < 128 else xp.int16 if E < 32768 else xp.int32)
    for k in range(top_k):
        top = h.max(axis=1, keepdims=True)  # (N, 1)
        idx[:, k] = E - ((h == top) * rank).max(axis=1)  # the first e with h[n, e] = top[n]
        if k < top_k - 1:
            h[rows, idx[:, k]] = -xp.inf
    return idx


def route_topk(logits, top_k, convention, clean=None, sigma=None, eps=None):
    """Top-k routing of ``logits`` (N, E): each sample's K largest logits, best first.

    ``softmax_then_topk``: weight = softmax(logits) at the kept experts (no renormalisation).
    ``topk_then_softmax``: weight = softmax over the K kept logits (the non-kept set to -inf).
    ``clean``, ``sigma``, ``eps`` describe the noise that made ``logits`` (see :class:`Routing`).
    """
    xp = get_array_module(logits)
    N, E = logits.shape
    idx = topk_indices(logits, top_k)  # (N, K), best first
    probs = F.softmax(logits)  # (N, E)
    rows = xp.arange(N)[:, None]
    if convention == "softmax_then_topk":
        weight = probs[rows, idx]  # (N, K)
    else:
        weight = F.softmax(logits[rows, idx])  # (N, K)
    return Routing(sample=xp.repeat(xp.arange(N), top_k), expert=idx.reshape(-1), weight=weight.reshape(-1),
                   kept=xp.ones(N * top_k, dtype=bool), logits=logits,
                   clean=logits if clean is None else clean, sigma=sigma, eps=eps, probs=probs,
                   top_k=top_k, convention=convention)


def routing_backward(routing, grad):
    """Gradients of the clean logits and the noise scale from a gradient ``grad`` of ``routing``.

    Parameters
    ----------
    routing : a :class:`Routing`. grad : dict with any of "weight" (M,), "logits", "clean", "sigma" (N, E).

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
    Noise: h = clean + eps * sigma, so dclean = dh + grad["clean"], dsigma = eps dh + grad["sigma"].
    """
    r = routing
    xp = get_array_module(r.logits)
    N, E = r.logits.shape
    dh = grad.get("logits")
    if "weight" in grad:
        if r.convention == "topk_then_softmax":
            K = r.top_k
            dhk = F.softmax_backward(grad["weight"].reshape(N, K), r.weight.reshape(N, K))  # (N, K)
            dsel = xp.zeros_like(r.logits)
            dsel[xp.arange(N)[:, None], r.expert.reshape(N, K)] = dhk
        else:
            dpw = grad["weight"] * r.weight  # (M,) dp p at the assignments
            if r.top_k is not None:  # sample-major, K per sample
                s = dpw.reshape(N, r.top_k).sum(axis=1)
            else:
                s = xp.bincount(r.sample, weights=dpw, minlength=N).astype(dpw.dtype)
            dsel = r.probs * -s[:, None]  # (N, E), the layout of probs
            dsel[r.sample, r.expert] += dpw  # pairs are unique
        dh = dsel if dh is None else dh + dsel
    elif dh is None:
        dh = xp.zeros_like(r.logits)
    dclean = dh + grad["clean"] if "clean" in grad else dh
    if r.sigma is None:
        return dclean, None
    dsigma = dh * r.eps if r.eps is not None else xp.zeros_like(dh)
    return dclean, dsigma + grad["sigma"] if "sigma" in grad else dsigma


class TopKGate(Module):
    """Top-k gate with optional noise on the logits (MATH.md §2).

    Parameters
    ----------
    in_features : D. n_experts : E. top_k : K, 1 <= K <= E.
    convention : "softmax_then_topk" (seed 000, V-MoE: the kept softmax probabilities, not renormalised)
        or "topk_then_softmax" (Shazeer: a softmax over the K kept logits; with K = 1 the weight is always
        1 and the gate gets no gradient from the task loss, only from balance losses).
    noise : None, "shazeer" (learned scale softplus(x W_noise), W_noise starts at zero as in the paper)
        or "vmoe" (fixed scale noise_std / E). Noise is added in training mode only.
    noise_std : the V-MoE noise_std (sigma = noise_std / E).
    seed : int or numpy Generator; the weights are drawn from it, then the noise, forward after forward.
        The generator is ``self.rng``: reset it to replay a draw (gradient checks do).
    dtype : float32 or float64.

    Shapes: x (N, D) -> Routing with M = N K assignments; W (D, E), b (E,), W_noise (D, E).

    Notes
    -----
    clean = x W + b; sigma = softplus(x W_noise) or noise_std / E; h = clean + eps * sigma, eps ~ N(0, 1).
    Backward (see :func:`routing_backward` for dclean, dsigma): dW = xᵀ dclean, db = sum_n dclean,
    dW_noise = xᵀ (dsigma * sigmoid(x W_noise)), dx = dclean Wᵀ + (dsigma * sigmoid(x W_noise)) W_noiseᵀ.
    """

    def __init__(self, in_features, n_experts, top_k=2, convention="softmax_then_topk", noise=None,
                 noise_std=1.0, seed=None, dtype="float64"):
        super().__init__(dtype)
        D = self.in_features = check_positive_int(in_features, "in_features")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        self.top_k = check_positive_int(top_k, "top_k")
        if self.top_k > E:
            raise ValueError(f"top_k={top_k} must be between 1 and n_experts={E}")
        if convention not in CONVENTIONS:
            raise ValueError(f"gate={convention!r} must be one of {CONVENTIONS}")
        if noise not in NOISES:
            raise ValueError(f"noise={noise!r} must be one of {NOISES}")
        if not noise_std > 0:
            raise ValueError(f"noise_std={noise_std!r} must be > 0")
        self.convention, self.noise, self.noise_std = convention, noise, float(noise_std)
        self.rng = default_rng(seed)
        self.params["W"] = init_weight(self.rng, D, E, (D, E), "glorot", self.dtype)
        self.params["b"] = zeros_param(E, self.dtype)
        if noise == "shazeer":
            self.params["W_noise"] = zeros_param((D, E), self.dtype)
        self.zero_grad()

    def forward(self, x):
        """x (N, D) -> Routing."""
        xp = get_array_module(x)
        self.x = x
        clean = expert_major_logits(x, self.params["W"]) + self.params["b"]  # (N, E)
        sigma = eps = None
        if self.noise == "shazeer":
            self.noise_in = expert_major_logits(x, self.params["W_noise"])  # (N, E)
            sigma = F.softplus(self.noise_in)
        elif self.noise == "vmoe":
            sigma = xp.full_like(clean, self.noise_std / self.n_experts)
        logits = clean
        if sigma is not None and self.training:
            eps = asarray(self.rng.standard_normal(clean.shape[::-1]), dtype=self.dtype).T  # (N, E)
            logits = clean + eps * sigma
        self.routing = route_topk(logits, self.top_k, self.convention, clean, sigma, eps)
        return self.routing

    def backward(self, grad):
        """grad: dict, a gradient of the routing (see :class:`Routing`) -> dx (N, D)."""
        dclean, dsigma = routing_backward(self.routing, grad)
        self.grads["W"] = self.x.T @ dclean  # (D, E)
        self.grads["b"] = dclean.sum(axis=0)
        dx = dclean @ self.params["W"].T  # (N, D)
        if self.noise == "shazeer":
            dn = F.softplus_backward(dsigma, self.noise_in)  # (N, E)
            self.grads["W_noise"] = self.x.T @ dn
            dx += dn @ self.params["W_noise"].T
        return dx


def expert_choice_capacity(n_samples, n_experts, capacity_factor):
    """Samples each expert takes in expert-choice routing: min(N, ceil(N * capacity_factor / E))."""
    return min(n_samples, ceil(n_samples * capacity_factor / n_experts))


class ExpertChoiceGate(Module):
    """Expert-choice router: each expert takes its C highest-scoring samples (Zhou et al. 2022).

    Parameters
    ----------
    in_features : D. n_experts : E. capacity_factor : cf > 0, C = min(N, ceil(N cf / E)) samples per
    expert, so a sample is processed cf times on average. seed, dtype : as for TopKGate.

    Shapes: x (N, D) -> Routing with M = E C assignments (expert-major); W (D, E), b (E,).

    Notes
    -----
    S = softmax(x W + b) (N, E); expert e keeps the C samples with the largest S_{:,e} with combine
    weights S_{n,e}. Every expert gets exactly C samples (balanced by construction); a sample may get
    0..E experts. Backward: dS at the chosen pairs, dh = S * (dS - sum_e dS_e S_e), then as a linear layer.
    """

    def __init__(self, in_features, n_experts, capacity_factor=1.0, seed=None, dtype="float64"):
        super().__init__(dtype)
        D = self.in_features = check_positive_int(in_features, "in_features")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        if not capacity_factor > 0:
            raise ValueError(f"capacity_factor={capacity_factor!r} must be > 0")
        self.capacity_factor = float(capacity_factor)
        self.params["W"] = init_weight(default_rng(seed), D, E, (D, E), "glorot", self.dtype)
        self.params["b"] = zeros_param(E, self.dtype)
        self.zero_grad()

    def forward(self, x):
        """x (N, D) -> Routing."""
        xp = get_array_module(x)
        N, E = x.shape[0], self.n_experts
        self.x = x
        clean = expert_major_logits(x, self.params["W"]) + self.params["b"]  # (N, E)
        probs = F.softmax(clean)
        C = expert_choice_capacity(N, E, self.capacity_factor)
        chosen = xp.argsort(-probs, axis=0, kind="stable")[:C]  # (C, E), best first
        sample, expert = chosen.T.reshape(-1), xp.repeat(xp.arange(E), C)  # (E C,)
        self.routing = Routing(sample=sample, expert=expert, weight=probs[sample, expert],
                               kept=xp.ones(E * C, dtype=bool), logits=clean, clean=clean, sigma=None,
                               eps=None, probs=probs, top_k=None, convention="expert_choice")
        return self.routing

    def backward(self, grad):
        """grad: dict, a gradient of the routing -> dx (N, D)."""
        dclean, _ = routing_backward(self.routing, grad)
        self.grads["W"] = self.x.T @ dclean
        self.grads["b"] = dclean.sum(axis=0)
        return dclean @ self.params["W"].T
