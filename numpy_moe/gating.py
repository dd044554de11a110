"""Gates: map a batch to combine weights over experts (MATH.md §2).

``SoftmaxGate`` is the dense gate of seeds 001-003: ``g = softmax(x W_g + b_g)``; every expert gets a
weight, rows sum to 1.
"""
from . import functional as F
from .backend import default_rng, get_array_module
from .layers import Module, init_weight
from .validation import check_positive_int


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
        self.params["b"] = get_array_module().zeros(n_experts, dtype=self.dtype)
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
