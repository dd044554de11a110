"""SharedExpert: an always-on expert added to the routed output (DeepSeek-MoE, Qwen2-MoE; MATH.md §10).

DeepSeek-MoE's shared experts (several, fused into one MLP of their summed width) or Qwen2-MoE's shared
expert scaled by sigmoid(x w).
"""
from .. import functional as F
from ..backend import default_rng
from ..layers import Module, init_weight
from ..validation import check_bool, check_input, check_positive_int, to_dtype
from .bank import ExpertBank


class SharedExpert(Module):
    """An always-on expert added to the routed output: DeepSeek-MoE's shared experts, Qwen2-MoE's gated one.

    Parameters
    ----------
    in_features : D. out_features : O. hidden : H, the width of the shared MLP (DeepSeek's n_shared
        shared experts of width H_e are one MLP of width n_shared H_e: the sum of their outputs is that
        MLP's output). activation, bias : as for ExpertBank ("swiglu" and no bias by default).
    gated : False (DeepSeek-MoE: y_s = E_s(x)) or True (Qwen2-MoE: y_s = sigmoid(x w) E_s(x), w (D, 1),
        ``shared_expert_gate``). seed, dtype : as for ExpertBank.

    Shapes: x (N, D) -> y_s (N, O); parameters mlp.* (an ExpertBank of one expert) and w (D, 1) if gated.

    Notes
    -----
    Gated: a = x w (N, 1), g = sigmoid(a), y_s = g ⊙ E_s(x). Backward: dg = sum_o dy_s ⊙ E_s(x),
    da = dg g (1 - g), dw = xᵀ da, dE_s = g dy_s, dx = mlp.backward(dE_s) + da wᵀ.
    (modeling_qwen2_moe.py, ``Qwen2MoeSparseMoeBlock.forward``; DeepSeekMoE, Dai et al. 2024, shared expert isolation.)
    """

    def __init__(self, in_features, out_features, hidden, activation="swiglu", gated=False, bias=None, seed=None,
                 dtype="float64"):
        super().__init__(dtype)
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        rng = default_rng(seed)
        self.mlp = ExpertBank(1, in_features, out_features, hidden, seed=rng, dtype=dtype, activation=activation,
                              bias=bias)
        self.gated = check_bool(gated, "gated")
        if self.gated:
            self.params["w"] = init_weight(rng, in_features, 1, (in_features, 1), "glorot", self.dtype)
        self.zero_grad()

    def forward(self, x, *, checked=False):
        """x (N, D) -> (N, O), of the expert's dtype. checked : True when x has passed validation.check_input for
        this expert already (as MoE passes it): it is then only converted to the expert's dtype."""
        x = self.x = to_dtype(x, self.dtype) if checked else check_input(x, self.in_features, self.dtype)
        self.y = self.mlp.forward(x, checked=True)[0]  # (N, O); x is checked above
        if not self.gated:
            return self.y
        self.g = F.sigmoid(x @ self.params["w"])  # (N, 1)
        return self.g * self.y

    def backward(self, dy):
        """dy (N, O) -> dx (N, D)."""
        if not self.gated:
            return self.mlp.backward(dy[None])
        da = F.sigmoid_backward((dy * self.y).sum(axis=1, keepdims=True), self.g)  # (N, 1)
        self.grads["w"] = self.x.T @ da  # (D, 1)
        return self.mlp.backward((self.g * dy)[None]) + da @ self.params["w"].T
