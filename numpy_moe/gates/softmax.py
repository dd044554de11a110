"""Softmax gates (MATH.md §2): the dense softmax gate and the top-k gate in both conventions.

- ``SoftmaxGate`` is the dense gate of posts 001-003: ``g = softmax(x W_g + b_g)``; every expert gets a
  weight, rows sum to 1.
- ``TopKGate`` keeps the K best experts per sample (post 000; Shazeer et al. 2017, "Outrageously large
  neural networks"; Riquelme et al. 2021, "Scaling vision with sparse mixture of experts" (V-MoE), which
  post 004 summarises), in either convention, with optional noise on the logits.
"""
from .. import functional as F
from ..backend import asarray, default_rng, get_array_module, sum_rows
from ..layers import Module, init_weight, zeros_param
from ..validation import check_input, check_positive_int, check_real, to_dtype
from ..workers import n_threads, run_blocks
from .base import Routing, expert_major_logits, pick_pairs, routing_backward, topk_indices, weight_grad

CONVENTIONS = ("softmax_then_topk", "topk_then_softmax")
NOISES = (None, "shazeer", "vmoe")
SPLIT_ROUTE = 1 << 17  # logits (N E) from which a noiseless TopKGate routes blocks of rows on the threads


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

    def forward(self, x, *, checked=False):
        x = to_dtype(x, self.dtype) if checked else check_input(x, self.in_features, self.dtype)  # MoE checked x
        self.x = x
        self.g = F.softmax(x @ self.params["W"] + self.params["b"])  # (N, E)
        return self.g

    def backward(self, dg):
        dh = F.softmax_backward(dg, self.g)  # (N, E)
        self.grads["W"] = weight_grad(self.x, dh)
        self.grads["b"] = sum_rows(dh)
        return dh @ self.params["W"].T  # (N, D)


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
        weight = pick_pairs(probs, rows, idx)  # (N, K)
    else:
        weight = F.softmax(logits[rows, idx])  # (N, K)
    return Routing(sample=xp.repeat(xp.arange(N), top_k), expert=idx.reshape(-1), weight=weight.reshape(-1),
                   kept=xp.ones(N * top_k, dtype=bool), logits=logits,
                   clean=logits if clean is None else clean, sigma=sigma, eps=eps, probs=probs,
                   top_k=top_k, convention=convention, scores=probs)


def route_topk_blocks(x, W, b, top_k, convention, blocks):
    """``route_topk(expert_major_logits(x, W, b), top_k, convention)`` computed for ``blocks`` blocks of
    rows at once on the threads of :mod:`numpy_moe.workers`.

    Every step is row-wise (a sample's logits, its softmax over E, its top K), so each block writes its
    own samples' entries of the expert-major logits and probabilities. Given the same logits, the softmax
    and top K are those of one pass, bit for bit; the logits themselves are a block's product x[lo:hi] W,
    whose rows equal the whole product's unless BLAS picks another kernel for the block's number of rows
    (then every row can differ in its last bits: float32, D = 33, E = 8, N = 16384 in 7 blocks, up to
    2.2e-7 relative, with BLAS on one thread; tests/test_gating.py checks shapes where they agree). On two
    threads, at N = 16384, D = 64, E = 16, float32: 1.6-1.9 against 1.9-2.4 ms.
    """
    xp = get_array_module(x)
    N, E = x.shape[0], W.shape[1]
    dtype = xp.result_type(x, W, b)
    logits_t, probs_t = xp.empty((E, N), dtype=dtype), xp.empty((E, N), dtype=dtype)  # expert-major storage
    idx, weight = xp.empty((N, top_k), dtype=xp.intp), xp.empty((N, top_k), dtype=dtype)

    def block(lo, hi):
        h, p = logits_t[:, lo:hi], probs_t[:, lo:hi]  # (E, rows)
        xp.add((x[lo:hi] @ W).T, b[:, None], out=h)
        idx[lo:hi] = topk_indices(h.T, top_k)
        xp.subtract(h, h.max(axis=0), out=p)  # the softmax over E, as F.softmax does it
        xp.exp(p, out=p)
        p /= p.sum(axis=0)
        flat = idx[lo:hi] * N + xp.arange(lo, hi)[:, None]  # (rows, K) into the flat (E, N) storage
        if convention == "softmax_then_topk":
            weight[lo:hi] = xp.take(probs_t.reshape(-1), flat)
        else:
            weight[lo:hi] = F.softmax(xp.take(logits_t.reshape(-1), flat))

    bounds = [N * i // blocks for i in range(blocks + 1)]
    run_blocks([lambda lo=lo, hi=hi: block(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])], like=x)
    logits, probs = logits_t.T, probs_t.T
    return Routing(sample=xp.repeat(xp.arange(N), top_k), expert=idx.reshape(-1), weight=weight.reshape(-1),
                   kept=xp.ones(N * top_k, dtype=bool), logits=logits, clean=logits, sigma=None, eps=None,
                   probs=probs, top_k=top_k, convention=convention, scores=probs)


class TopKGate(Module):
    """Top-k gate with optional noise on the logits (MATH.md §2).

    Parameters
    ----------
    in_features : D. n_experts : E. top_k : K, 1 <= K <= E.
    convention : "softmax_then_topk" (post 000, V-MoE: the kept softmax probabilities, not renormalised)
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
            raise ValueError(f"convention={convention!r} must be one of {CONVENTIONS}")
        if noise not in NOISES:
            raise ValueError(f"noise={noise!r} must be one of {NOISES}")
        self.convention, self.noise = convention, noise
        self.noise_std = check_real(noise_std, "noise_std", 0, low_open=True)  # inf made every noisy logit NaN
        self.rng = default_rng(seed)
        self.params["W"] = init_weight(self.rng, D, E, (D, E), "glorot", self.dtype)
        self.params["b"] = zeros_param(E, self.dtype)
        if noise == "shazeer":
            self.params["W_noise"] = zeros_param((D, E), self.dtype)
        self.zero_grad()

    def forward(self, x, *, checked=False):
        """x (N, D) -> Routing."""
        x = to_dtype(x, self.dtype) if checked else check_input(x, self.in_features, self.dtype)  # MoE checked x
        xp = get_array_module(x)
        self.x = x
        threads = n_threads() if xp.__name__ == "numpy" and x.shape[0] * self.n_experts >= SPLIT_ROUTE else 1
        if self.noise is None and threads > 1:
            self.routing = route_topk_blocks(x, self.params["W"], self.params["b"], self.top_k, self.convention,
                                             threads)
            return self.routing
        clean = expert_major_logits(x, self.params["W"], self.params["b"])  # (N, E)
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
        self.grads["W"] = weight_grad(self.x, dclean)  # (D, E)
        self.grads["b"] = sum_rows(dclean)
        dx = dclean @ self.params["W"].T  # (N, D)
        if self.noise == "shazeer":
            dn = F.softplus_backward(dsigma, self.noise_in)  # (N, E)
            self.grads["W_noise"] = self.x.T @ dn
            dx += dn @ self.params["W_noise"].T
        return dx
