"""Expert-choice routing: each expert picks its C best samples (Zhou et al. 2022, "Mixture-of-experts
with expert choice routing"; MATH.md §4.3)."""
from math import ceil, isinf

from .. import functional as F
from ..backend import default_rng, get_array_module, sum_rows
from ..layers import Module, init_weight, zeros_param
from ..validation import check_input, check_positive_int, check_real, to_dtype
from .base import Routing, expert_major_logits, routing_backward, weight_grad


def capacity_ceil(x):
    """ceil(x) for a capacity x = N K cf / E computed in floating point, read as the decimal factor means it:
    within 1e-9 (relative) of an integer, x is that integer. 1.1 is stored as 1.1000000000000000888, so
    100 * 2 * 1.1 / 4 evaluates to 55.00000000000001, whose plain ceil is 56 where N K cf / E = 55. The
    tolerance is relative to x itself, so a positive x below 1e-9 (a tiny factor) is 1 slot, as ceil says,
    not 0."""
    r = round(x)
    return int(r) if abs(x - r) <= 1e-9 * abs(x) else ceil(x)


def expert_choice_capacity(n_samples, n_experts, capacity_factor):
    """Samples each expert takes in expert-choice routing: min(N, ceil(N * capacity_factor / E))."""
    capacity = n_samples * capacity_factor / n_experts
    return n_samples if isinf(capacity) else min(n_samples, capacity_ceil(capacity))  # inf: a factor near 1e308


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
        # finite: an infinite factor failed in the first forward with "cannot convert float infinity to integer"
        self.capacity_factor = check_real(capacity_factor, "capacity_factor", 0, low_open=True)
        self.params["W"] = init_weight(default_rng(seed), D, E, (D, E), "glorot", self.dtype)
        self.params["b"] = zeros_param(E, self.dtype)
        self.zero_grad()

    def forward(self, x, *, checked=False):
        """x (N, D) -> Routing."""
        x = to_dtype(x, self.dtype) if checked else check_input(x, self.in_features, self.dtype)  # MoE checked x
        xp = get_array_module(x)
        N, E = x.shape[0], self.n_experts
        self.x = x
        clean = expert_major_logits(x, self.params["W"], self.params["b"])  # (N, E)
        probs = F.softmax(clean)
        if bool(xp.isnan(probs).any()):  # argsort would rank NaN last and route on the rest without a word
            raise ValueError(f"ExpertChoiceGate: the router's probabilities hold NaN in "
                             f"{int(xp.isnan(probs).any(axis=1).sum())} of {N} rows (its weights or input hold NaN, "
                             "or its logits overflowed); experts cannot rank the samples")
        C = expert_choice_capacity(N, E, self.capacity_factor)
        chosen = xp.argsort(-probs, axis=0, kind="stable")[:C]  # (C, E), best first
        sample, expert = chosen.T.reshape(-1), xp.repeat(xp.arange(E), C)  # (E C,)
        self.routing = Routing(sample=sample, expert=expert, weight=probs[sample, expert],
                               kept=xp.ones(E * C, dtype=bool), logits=clean, clean=clean, sigma=None,
                               eps=None, probs=probs, top_k=None, convention="expert_choice",
                               scores=probs)
        return self.routing

    def backward(self, grad):
        """grad: dict, a gradient of the routing -> dx (N, D)."""
        dclean, _ = routing_backward(self.routing, grad)
        self.grads["W"] = weight_grad(self.x, dclean)
        self.grads["b"] = sum_rows(dclean)
        return dclean @ self.params["W"].T
