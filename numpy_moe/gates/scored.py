"""The router of today's MoE: softmax or sigmoid scores, group-limited top-k, a selection bias balanced
without a loss, renormalised and scaled weights, input jitter (MATH.md §10).

One class, :class:`ScoreGate`, covers the routers of Mixtral, Qwen2/3-MoE, DeepSeek-V2 and DeepSeek-V3:

| model        | ScoreGate arguments                                                                        |
|--------------|--------------------------------------------------------------------------------------------|
| Mixtral      | score="softmax", normalize=True (a softmax over the K kept logits); jitter in training     |
| Qwen2-MoE    | score="softmax", normalize=norm_topk_prob (False in Qwen1.5-MoE, True in Qwen3-MoE)        |
| DeepSeek-V2  | score="softmax", normalize=False, scale=routed_scaling_factor, n_groups, topk_groups,      |
|              | group_score="max" (device-limited routing)                                                 |
| DeepSeek-V3  | score="sigmoid", normalize=True, scale=routed_scaling_factor, n_groups, topk_groups,       |
|              | group_score="top2", bias_update=u (auxiliary-loss-free balancing)                          |

Sources: DeepSeek-V3 technical report (2024) §2.1.1-2.1.2 and its reference code
(deepseek-ai/DeepSeek-V3, inference/model.py, ``Gate.forward``); HuggingFace transformers
``modeling_deepseek_v3.py`` (``DeepseekV3TopkRouter``, ``DeepseekV3MoE.route_tokens_to_experts``),
``modeling_mixtral.py`` (``MixtralSparseMoeBlock.forward``), ``modeling_qwen2_moe.py``
(``Qwen2MoeSparseMoeBlock.forward``); DeepSeek-V2 (2024, device-limited routing) and its ``modeling_deepseek.py``
(``MoEGate.forward``, ``topk_method="group_limited_greedy"``); Wang et al. 2024, "Auxiliary-loss-free
load balancing strategy for mixture-of-experts", Algorithm 1; torchtitan ``_update_expert_bias`` for the
mean-centred update.
"""
from .. import functional as F
from ..backend import asarray, default_rng, get_array_module
from ..layers import Module, init_weight, zeros_param
from ..validation import check_bool, check_input, check_positive_int, check_real, to_dtype
from .base import Routing, expert_major_logits, topk_indices, weight_grad

SCORES = ("softmax", "sigmoid")
GROUP_SCORES = ("max", "top2")


class ScoreGate(Module):
    """Top-k router over softmax or sigmoid scores, optionally group-limited and bias-balanced.

    Parameters
    ----------
    in_features : D. n_experts : E. top_k : K.
    score : "softmax" (s = softmax(x W)) or "sigmoid" (s = sigmoid(x W), DeepSeek-V3).
    normalize : divide the K kept scores by their sum plus ``norm_eps`` (``norm_topk_prob``).
    scale : the routed scaling factor, > 0; multiplies every combine weight.
    n_groups : experts are split into n_groups consecutive groups of E / n_groups (must divide E).
    topk_groups : each sample keeps its topk_groups best groups and picks its K experts among them
        (None: all groups, no limit). K must not exceed topk_groups * E / n_groups.
    group_score : "max" (DeepSeek-V2: the group's best score) or "top2" (DeepSeek-V3: the sum of the
        group's two best scores; needs groups of at least 2 experts).
    bias_update : u >= 0, the auxiliary-loss-free bias's update rate (0: the bias stays as it is).
    bias_centered : subtract the update's mean, so the biases keep summing to zero (torchtitan).
    jitter : eps in [0, 1): in training the router sees x * U(1 - eps, 1 + eps) (Switch Transformer;
        Mixtral's ``router_jitter_noise``). The experts see x unchanged, as in Switch; HF's Mixtral feeds
        the jittered x to its experts too (MATH.md §10.2).
    norm_eps : added to the sum of the kept scores before dividing (1e-20 as in DeepSeek-V3).
    seed : int or numpy Generator; the weight is drawn from it, then the jitter, forward after forward.
    dtype : float32 or float64.

    Shapes: x (N, D) -> Routing with M = N K assignments; W (D, E); buffer ``bias`` (E,).

    Notes
    -----
    h = x̃ W (x̃ = x, or x ⊙ U(1 - eps, 1 + eps) with jitter), s = softmax(h) or sigmoid(h) (N, E).
    Selection on c = s + bias: group score per (n, g) = max_{e in g} c or the sum of the two largest;
    the topk_groups best groups stay, the other experts are set to -inf; the K largest c are chosen.
    Weights use s, never the bias: w_k = scale s_{e_k} / (sum_j s_{e_j} + norm_eps) or scale s_{e_k}.
    Backward (selection fixed): with S = sum_j s_{e_j} + norm_eps, ds_{e_k} = scale (dw_k / S -
    sum_j dw_j s_{e_j} / S²) (normalised) or scale dw_k; dh = ds ⊙ s (1 - s) (sigmoid) or the softmax
    rule; dW = x̃ᵀ dh, dx = (dh Wᵀ) ⊙ U. The bias gets no gradient: ``end_step`` updates it from the
    last training forward's load L_e (assignments per expert, padding excluded),
    bias_e += u sign(mean(L) - L_e) (Wang et al. 2024, Algorithm 1), minus the mean update if centred.
    """

    def __init__(self, in_features, n_experts, top_k=2, score="sigmoid", normalize=True, scale=1.0,
                 n_groups=1, topk_groups=None, group_score="top2", bias_update=0.0, bias_centered=False,
                 jitter=0.0, norm_eps=1e-20, seed=None, dtype="float64"):
        super().__init__(dtype)
        D = self.in_features = check_positive_int(in_features, "in_features")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        K = self.top_k = check_positive_int(top_k, "top_k")
        if score not in SCORES:
            raise ValueError(f"score={score!r} must be one of {SCORES}")
        if group_score not in GROUP_SCORES:
            raise ValueError(f"group_score={group_score!r} must be one of {GROUP_SCORES}")
        G = self.n_groups = check_positive_int(n_groups, "n_groups")
        if E % G:
            raise ValueError(f"n_groups={G} must divide n_experts={E} (groups of equal size)")
        T = self.topk_groups = G if topk_groups is None else check_positive_int(topk_groups, "topk_groups")
        if T > G:
            raise ValueError(f"topk_groups={T} must be at most n_groups={G}")
        if K > T * (E // G):
            raise ValueError(f"top_k={K} must be at most the {T * (E // G)} experts of the topk_groups={T} "
                             f"kept groups of {E // G} (n_experts={E}, n_groups={G})")
        if G > 1 and group_score == "top2" and E // G < 2:
            raise ValueError(f"group_score='top2' needs groups of at least 2 experts; n_experts={E}, "
                             f"n_groups={G} gives groups of 1 (use group_score='max')")
        scale = check_real(scale, "scale", 0, low_open=True)  # finite: an infinite one gave inf or NaN weights
        bias_update = check_real(bias_update, "bias_update", 0)
        jitter = check_real(jitter, "jitter", 0, 1, high_open=True)
        norm_eps = check_real(norm_eps, "norm_eps", 0)
        self.score, self.normalize, self.group_score = score, check_bool(normalize, "normalize"), group_score
        self.scale, self.bias_update = scale, bias_update
        self.bias_centered = check_bool(bias_centered, "bias_centered")
        self.jitter, self.norm_eps = jitter, norm_eps
        self.rng = default_rng(seed)
        self.params["W"] = init_weight(self.rng, D, E, (D, E), "glorot", self.dtype)
        self.buffers["bias"] = zeros_param(E, self.dtype)  # not a parameter: no gradient, end_step moves it
        self.load = None
        self.zero_grad()

    def select(self, c):
        """(N, K) experts chosen on the selection scores ``c`` (N, E), best first: group-limited top-k."""
        xp = get_array_module(c)
        N, E = c.shape
        G, T = self.n_groups, self.topk_groups
        if T < G:
            cg = c.reshape(N, G, E // G)
            group = cg.max(axis=2) if self.group_score == "max" else xp.sort(cg, axis=2)[:, :, -2:].sum(axis=2)
            keep = xp.zeros((N, G), dtype=bool)
            keep[xp.arange(N)[:, None], topk_indices(group, T)] = True
            c = xp.where(keep[:, :, None], cg, -xp.inf).reshape(N, E)
        return topk_indices(c, self.top_k)

    def forward(self, x, mask=None, *, checked=False):
        """x (N, D) -> Routing. ``mask`` (N,) bool: samples that count in the load (None: all)."""
        x = to_dtype(x, self.dtype) if checked else check_input(x, self.in_features, self.dtype)  # MoE checked x
        xp = get_array_module(x)
        N, E, K = x.shape[0], self.n_experts, self.top_k
        self.u = None
        if self.training and self.jitter > 0:
            self.u = asarray(self.rng.uniform(1 - self.jitter, 1 + self.jitter, x.shape), dtype=self.dtype)
            x = x * self.u
        self.x = x
        h = expert_major_logits(x, self.params["W"])  # (N, E)
        s = F.sigmoid(h) if self.score == "sigmoid" else F.softmax(h)
        idx = self.select(s + self.buffers["bias"])  # (N, K); the bias moves the choice only
        rows = xp.arange(N)[:, None]
        self.s_kept = s[rows, idx]  # (N, K)
        w = self.s_kept
        if self.normalize:
            self.denom = self.s_kept.sum(axis=1, keepdims=True) + self.norm_eps  # (N, 1)
            w = w / self.denom
        w = self.scale * w
        if self.training:
            chosen = idx if mask is None else idx[mask]
            self.load = xp.bincount(chosen.reshape(-1), minlength=E).astype(self.dtype)  # (E,)
        probs = s if self.score == "softmax" else F.softmax(h)
        self.routing = Routing(sample=xp.repeat(xp.arange(N), K), expert=idx.reshape(-1), weight=w.reshape(-1),
                               kept=xp.ones(N * K, dtype=bool), logits=h, clean=h, sigma=None, eps=None,
                               probs=probs, top_k=K, convention="scored", scores=s)
        return self.routing

    def backward(self, grad):
        """grad: dict, a gradient of the routing (keys "weight", "scores", "logits", "clean") -> dx (N, D)."""
        xp = get_array_module(self.x)
        r = self.routing
        N, K = r.logits.shape[0], self.top_k
        ds = grad["scores"].copy() if "scores" in grad else xp.zeros_like(r.logits)
        if "weight" in grad:
            dw = self.scale * grad["weight"].reshape(N, K)
            if self.normalize:
                dw = (dw - (dw * self.s_kept).sum(axis=1, keepdims=True) / self.denom) / self.denom
            ds[xp.arange(N)[:, None], r.expert.reshape(N, K)] += dw  # experts of a row are distinct
        s = r.scores
        dh = ds * s * (1 - s) if self.score == "sigmoid" else F.softmax_backward(ds, s)
        for key in ("logits", "clean"):  # the same logits: no noise
            if key in grad:
                dh = dh + grad[key]
        self.grads["W"] = weight_grad(self.x, dh)  # (D, E)
        dx = dh @ self.params["W"].T  # (N, D)
        return dx if self.u is None else dx * self.u

    def end_step(self):
        """After an optimiser step in training: bias_e += u sign(mean(load) - load_e) (Wang et al. 2024)."""
        xp = get_array_module(self.buffers["bias"])
        if self.training and self.bias_update > 0 and self.load is not None:
            delta = self.bias_update * xp.sign(self.load.mean() - self.load)  # (E,)
            if self.bias_centered:
                delta -= delta.mean()
            self.buffers["bias"] += delta
        self.load = None  # one update per training forward
        super().end_step()
