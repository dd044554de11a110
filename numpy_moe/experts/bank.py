"""ExpertBank: E experts of identical shape with stacked weights, and their dense pass (MATH.md §1, §10).

Linear experts ``E_e(x) = x W_e + b_e``, one-hidden-layer ReLU MLP experts
``E_e(x) = relu(x W1_e + b1_e) W2_e + b2_e``, or gated-linear experts (Shazeer 2020, "GLU variants
improve transformer"; the experts of Mixtral, Qwen2-MoE and DeepSeek)
``E_e(x) = (act(x W_gate_e) ⊙ (x W_up_e)) W_down_e`` with act = SiLU (SwiGLU) or GELU (GeGLU), biases
off by default as in those models, or gpt-oss's clamped SwiGLU (with biases, MATH.md §10.1).
The weights of all experts are stored stacked,
W1 of shape (E, D, H), so the dense case (every expert on every sample, as posts 000-002 do) is one
batched matmul per layer; there is no Python list of expert objects on the hot path.

Two forward/backward pairs serve the two ways an MoE layer uses its experts:

- ``forward(x) -> (E, N, O)`` / ``backward(dout) -> dx``: every expert on every sample (dense MoE); with
  x of shape (E, C, D), expert e on its own C rows x[e] (the sparse layer's padded dispatch).
- ``forward_grouped(x, offsets) -> (M, O)`` / ``backward_grouped(dout) -> dx``: rows of ``x`` are grouped
  by expert (rows ``offsets[e]:offsets[e+1]`` go to expert e), each expert runs only on its own rows;
  this is what sparse dispatch calls. An expert with no rows gets exactly zero gradient. The grouped
  pass loops over experts only for the matrix products; every element-wise step (activation, gating
  product, their backward) runs once over all M rows, so many small experts (E = 64, K = 8) cost no more
  per row than a few large ones.

This module holds the bank (its parameters) and the dense pair; the grouped pair is
:mod:`numpy_moe.experts.grouped`, the gated-linear experts' passes :mod:`numpy_moe.experts.gated`.
"""
from .. import functional as F
from ..backend import asarray, default_rng, sum_rows
from ..layers import Module, init_weight, zeros_param
from ..validation import check_input, check_positive_int, check_real, to_dtype
from .gated import GatedLinearPasses
from .grouped import GroupedPasses


class ExpertBank(GroupedPasses, GatedLinearPasses, Module):
    """E linear (``hidden=None``), ReLU-MLP or gated-linear (SwiGLU, GeGLU) experts with stacked weights.

    Parameters
    ----------
    n_experts : E. in_features : D. out_features : O. hidden : H, or None for linear experts.
    seed : int or numpy Generator. dtype : float32 or float64.
    activation : "relu" (one hidden ReLU layer), "swiglu" (act = SiLU), "geglu" (act = exact GELU) or
        "gptoss_swiglu" (gpt-oss: A = g σ(alpha g) ⊙ (u + 1), g = min(G, limit), u = clip(U, -limit, limit));
        the gated-linear ones need ``hidden``.
    bias : None (the default of the kind: True for linear, ReLU and gpt-oss experts, False for the other
        gated-linear ones, as in Mixtral, Qwen and DeepSeek), True or False.
    alpha, limit : gptoss_swiglu only (None: gpt-oss's 1.702 and 7.0, ``swiglu_alpha``, ``swiglu_limit``).

    Parameters held: linear W (E, D, O), b (E, O); ReLU MLP W1 (E, D, H), b1 (E, H), W2 (E, H, O),
    b2 (E, O); gated-linear W_gate (E, D, H), W_up (E, D, H), W_down (E, H, O), and with bias b_gate,
    b_up (E, H), b_down (E, O).

    Notes
    -----
    MLP expert e on rows X_e: A = X_e W1_e + b1_e, Z = relu(A), Y = Z W2_e + b2_e.
    Backward: dW2_e = Zᵀ dY, db2_e = sum dY, dZ = dY W2_eᵀ, dA = dZ * [A > 0],
    dW1_e = X_eᵀ dA, db1_e = sum dA, dX_e = dA W1_eᵀ.
    Gated-linear expert: G = X W_gate, U = X W_up, A = act(G) ⊙ U, Y = A W_down (MATH.md §10.1).
    Backward: dW_down = Aᵀ dY, dA = dY W_downᵀ, dU = dA ⊙ act(G), dG = dA ⊙ U ⊙ act'(G),
    dW_gate = Xᵀ dG, dW_up = Xᵀ dU, dX = dG W_gateᵀ + dU W_upᵀ; act'(g) = s (1 + g (1 - s)) with
    s = sigmoid(g) for SiLU, Φ(g) + g φ(g) for GELU. gpt-oss (transformers models/gpt_oss/modeling_gpt_oss.py
    ``GptOssExperts._apply_gate``; openai/gpt-oss gpt_oss/torch/model.py ``swiglu``): act(G) = g σ(α g),
    g = min(G, limit), act' = σ(α g) (1 + α g (1 - σ(α g))) [G <= limit]; U enters as clip(U, ±limit) + 1,
    whose derivative is [|U| <= limit] (the clamps pass no gradient outside their range).
    """

    ACTIVATIONS = ("relu", "swiglu", "geglu", "gptoss_swiglu")

    def __init__(self, n_experts, in_features, out_features, hidden=None, seed=None, dtype="float64",
                 activation="relu", bias=None, alpha=None, limit=None):
        super().__init__(dtype)
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        D = self.in_features = check_positive_int(in_features, "in_features")
        O = self.out_features = check_positive_int(out_features, "out_features")
        self.hidden = None if hidden is None else check_positive_int(hidden, "hidden")
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation={activation!r} must be one of {self.ACTIVATIONS}")
        self.glu = activation != "relu"
        if self.glu and self.hidden is None:
            raise ValueError(f"activation={activation!r} needs hidden=H (a gated-linear expert has a hidden layer)")
        if bias not in (None, True, False):
            raise ValueError(f"bias={bias!r} must be None, True or False")
        self.activation = activation
        self.bias = (not self.glu or activation == "gptoss_swiglu") if bias is None else bias
        if activation == "gptoss_swiglu":
            self.alpha = 1.702 if alpha is None else check_real(alpha, "alpha", 0, low_open=True)
            self.limit = 7.0 if limit is None else check_real(limit, "limit", 0, low_open=True)
        elif alpha is not None or limit is not None:
            raise ValueError(f"alpha={alpha!r}, limit={limit!r} belong to activation='gptoss_swiglu', not "
                             f"{activation!r}")
        rng = default_rng(seed)
        if self.hidden is None:
            self.params["W"] = init_weight(rng, D, O, (E, D, O), "glorot", self.dtype)
            if self.bias:
                self.params["b"] = zeros_param((E, O), self.dtype)
        elif not self.glu:
            H = self.hidden
            self.params["W1"] = init_weight(rng, D, H, (E, D, H), "he", self.dtype)
            if self.bias:
                self.params["b1"] = zeros_param((E, H), self.dtype)
            self.params["W2"] = init_weight(rng, H, O, (E, H, O), "glorot", self.dtype)
            if self.bias:
                self.params["b2"] = zeros_param((E, O), self.dtype)
        else:
            H = self.hidden
            for name, fan_in, fan_out, shape in [("gate", D, H, (E, D, H)), ("up", D, H, (E, D, H)),
                                                  ("down", H, O, (E, H, O))]:
                self.params["W_" + name] = init_weight(rng, fan_in, fan_out, shape, "glorot", self.dtype)
                if self.bias:
                    self.params["b_" + name] = zeros_param((E, shape[2]), self.dtype)
        self.zero_grad()

    @property
    def _layers(self):
        """(weight, bias or None) key pairs of the linear / ReLU experts, first layer first."""
        keys = [("W", "b")] if self.hidden is None else [("W1", "b1"), ("W2", "b2")]
        return [(w, b if self.bias else None) for w, b in keys]

    def _add_bias(self, h, key, e=None):
        """h += the bias ``key`` (of expert e, or of every expert along h's first axis); no-op without bias."""
        if key is not None and key in self.params:
            h += self.params[key][e] if e is not None else self.params[key][:, None, :]
        return h

    # dense: every expert on every sample ------------------------------------------------------
    def forward(self, x, *, checked=False):
        """x (N, D) -> out (E, N, O), out[e] = E_e(x); or x (E, C, D), a batch per expert (the sparse layer's
        padded dispatch) -> out (E, C, O), out[e] = E_e(x[e])."""
        x = to_dtype(x, self.dtype) if checked else self._check_x(x)  # MoE checked x
        if self.glu:
            return self._glu_forward(x)
        self.x = x
        h = x
        self.acts = []
        for i, (w, b) in enumerate(self._layers):
            if i:
                self.acts.append(h)  # pre-activation (E, N, H)
                h = F.relu(h)
            h = self._add_bias(h @ self.params[w], b)  # (E, N, ·)
        return h

    def _check_x(self, x):
        """x (N, D) or (E, C, D) checked as validation.check_input checks a batch, cast to the experts' dtype."""
        x = asarray(x)
        E, D = self.n_experts, self.in_features
        if x.ndim == 3 and x.shape[0] == E and x.shape[2] == D:
            return check_input(x.reshape(-1, D), D, self.dtype).reshape(x.shape)
        if x.ndim != 2:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, {D}) or, a batch per expert, (E={E}, C, {D})")
        return check_input(x, D, self.dtype)

    def backward(self, dout):
        """dout (E, N, O) -> dx (N, D), summed over the experts; after a forward of per-expert batches x
        (E, C, D): dout (E, C, O) -> dx (E, C, D), each expert's own. Writes every grad."""
        if self.glu:
            return self._glu_backward(dout)
        E, N, _ = dout.shape
        d = dout
        for i, (w, b) in reversed(list(enumerate(self._layers))):
            inp = self.x if i == 0 else F.relu(self.acts[i - 1])
            if b is not None:
                self.grads[b] = sum_rows(d)  # (E, ·)
            if i == 0 and self.x.ndim == 3:  # a batch per expert
                self.grads[w] = self.x.transpose(0, 2, 1) @ d  # (E, D, ·)
                return d @ self.params[w].transpose(0, 2, 1)  # (E, C, D)
            if i == 0:
                d_cols = d.transpose(1, 0, 2).reshape(N, E * d.shape[2])  # (N, E*·); no -1: N may be 0
                self.grads[w] = (self.x.T @ d_cols).reshape(self.in_features, E, d.shape[2]).transpose(1, 0, 2)
                W = self.params[w]  # (E, D, H)
                return d_cols @ W.transpose(0, 2, 1).reshape(-1, W.shape[1])
            self.grads[w] = inp.transpose(0, 2, 1) @ d  # (E, H, O)
            d = F.relu_backward(d @ self.params[w].transpose(0, 2, 1), self.acts[i - 1])  # (E, N, H)
