"""The mixture-of-experts layer ``y = sum_e g_e(x) E_e(x)`` (seeds 001, 002; MATH.md §2).

The dense layer runs every expert on every sample with one batched matmul per expert layer and
blends the outputs with the gate's weights.
"""
from .backend import default_rng, get_array_module
from .experts import ExpertBank
from .gating import SoftmaxGate
from .layers import Module
from .validation import check_input, check_positive_int


class MoE(Module):
    """Dense softmax-gated mixture of experts.

    Parameters
    ----------
    in_features : D. out_features : O. n_experts : E.
    hidden : H for ReLU-MLP experts, None for linear experts.
    seed : int or numpy Generator (the gate is drawn first, then the experts). dtype : float32 or float64.

    Shapes: x (N, D) -> y (N, O).

    Notes
    -----
    g = softmax(x W_g + b_g) (N, E), out_e = E_e(x) (E, N, O), y_n = sum_e g_{n,e} out_{e,n}.
    Backward: dg_{n,e} = <dy_n, out_{e,n}>, dout_{e,n} = g_{n,e} dy_n, dx = gate.backward(dg) +
    experts.backward(dout).
    """

    def __init__(self, in_features, out_features, n_experts, hidden=None, seed=None, dtype="float64"):
        super().__init__(dtype)
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        self.n_experts = check_positive_int(n_experts, "n_experts")
        rng = default_rng(seed)
        self.gate = SoftmaxGate(in_features, n_experts, seed=rng, dtype=dtype)
        self.experts = ExpertBank(n_experts, in_features, out_features, hidden, seed=rng, dtype=dtype)

    def forward(self, x):
        xp = get_array_module(x)
        x = check_input(x, self.in_features, self.dtype)
        self.g = self.gate.forward(x)  # (N, E)
        self.out = self.experts.forward(x)  # (E, N, O)
        return xp.einsum("ne,eno->no", self.g, self.out)  # (N, O)

    def backward(self, dy):
        xp = get_array_module(dy)
        dg = xp.einsum("no,eno->ne", dy, self.out)  # (N, E)
        dout = self.g.T[:, :, None] * dy[None]  # (E, N, O)
        return self.gate.backward(dg) + self.experts.backward(dout)
