"""BASE layers: the exact balanced assignment of tokens to experts (Lewis et al. 2021, "BASE layers:
simplifying training of large, sparse models"; MATH.md §10.10).

In training every expert gets the same number of tokens, the assignment that maximises the total
token-expert affinity h_{n,e} = x_n · w_e, solved exactly by ``scipy.optimize.linear_sum_assignment``
on the host (a CuPy array is copied there and the answer copied back). In evaluation each token goes to
its best expert (greedy top-1), as in the paper. The layer's output is x + sigmoid(x · w_e) E_e(x):
the combine weight is sigmoid(h_{n,e}) (this gate) and the residual is ``MoE(..., residual=True)``.
"""
from .. import functional as F
from ..backend import asarray, default_rng, get_array_module, linear_sum_assignment, to_numpy
from ..layers import Module, init_weight
from ..validation import check_input, check_positive_int, to_dtype
from .base import Routing, expert_major_logits, fixed_selection_backward, topk_indices, weight_grad


def balanced_assignment(scores):
    """(N,) the expert of each row of ``scores`` (N, E): the most balanced assignment of largest total score.

    Parameters
    ----------
    scores : (N, E) affinities, any backend (copied to the host for the solver).

    Returns
    -------
    expert : (N,) ints on the backend of ``scores``. Every expert gets floor(N / E) or ceil(N / E)
    rows (exactly N / E when E divides N), and among those assignments the sum of
    scores[n, expert[n]] is the largest.

    Notes
    -----
    Expert e gets f = floor(N / E) "mandatory" slot columns and, when r = N mod E > 0, one "optional"
    column; a mandatory column's value is the score plus a bonus B > N (max - min) of the scores, so any
    assignment that leaves a mandatory slot empty scores less than every assignment that fills all E f of
    them. ``linear_sum_assignment(value, maximize=True)`` on the (N, E f [+ E]) matrix then returns the
    best assignment with every load in {f, f + 1}. Ties: the solver is deterministic, so equal inputs
    give equal outputs; which of several optimal assignments it returns is the solver's choice. Scores so
    large that score + B would overflow (|score| near 1e308 / N) are divided by their largest magnitude
    first, which leaves the best assignment unchanged.
    """
    host = to_numpy(scores).astype("float64")
    hp = get_array_module(host)  # NumPy: the assignment runs on the host
    if host.ndim != 2 or host.shape[0] == 0 or not hp.isfinite(host).all():
        raise ValueError(f"scores must be a finite (N, E) array with N >= 1; got shape {host.shape}")
    N, E = host.shape
    f, r = divmod(N, E)
    bonus = N * float(host.max() - host.min()) + 1.0
    if not bonus + float(hp.abs(host).max()) < float("inf"):  # scores near 1e308: scale them (same assignment)
        host = host / float(hp.abs(host).max())
        bonus = N * float(host.max() - host.min()) + 1.0
    cols = [hp.repeat(host + bonus, f, axis=1).reshape(N, E, f)]  # expert-major: column e f + j
    if r:
        cols.append(host[:, :, None])
    value = hp.concatenate(cols, axis=2).reshape(N, -1)  # (N, E (f + [1]))
    rows, chosen = linear_sum_assignment(value, maximize=True)  # rows = 0..N-1 (N <= columns)
    expert = chosen // (f + (1 if r else 0))
    return asarray(expert[hp.argsort(rows)])


class BaseGate(Module):
    """BASE-layer router: balanced assignment in training, greedy top-1 in evaluation (Lewis et al. 2021).

    Parameters
    ----------
    in_features : D. n_experts : E. seed : int or numpy Generator (the expert embeddings).
    dtype : float32 or float64.

    Shapes: x (N, D) -> Routing with M = N assignments (top_k = 1, sample-major); W (D, E), the expert
    embeddings w_e as columns.

    Notes
    -----
    h = x W (N, E). Training: a = :func:`balanced_assignment` (h), each expert gets N / E tokens (floor
    or ceil when E does not divide N: every token is routed, none dropped); with a mask, over the
    counted tokens only (padding goes greedy). Evaluation: a_n = argmax_e
    h_{n,e} (lowest index on ties). Weight w_n = sigmoid(h_{n, a_n}); with ``MoE(residual=True)`` the
    layer computes x_n + w_n E_{a_n}(x_n) as in the paper. Backward with the assignment fixed:
    dh_{n, a_n} = dw_n w_n (1 - w_n), dW = xᵀ dh, dx = dh Wᵀ. The routing's ``probs`` are softmax(h) (for
    the balance losses and the capacity's batch priority), ``scores`` sigmoid(h).
    """

    convention = "base"

    def __init__(self, in_features, n_experts, seed=None, dtype="float64"):
        super().__init__(dtype)
        D = self.in_features = check_positive_int(in_features, "in_features")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        self.top_k = 1
        self.params["W"] = init_weight(default_rng(seed), D, E, (D, E), "glorot", self.dtype)
        self.zero_grad()

    def forward(self, x, mask=None, *, checked=False):
        """x (N, D) -> Routing (one expert per sample). ``mask`` (N,) bool: the samples that count; the
        balanced assignment is over those alone, the others (padding) take their greedy choice."""
        x = to_dtype(x, self.dtype) if checked else check_input(x, self.in_features, self.dtype)  # MoE checked x
        xp = get_array_module(x)
        N = x.shape[0]
        self.x = x
        h = expert_major_logits(x, self.params["W"])  # (N, E)
        expert = topk_indices(h, 1)[:, 0]
        if self.training:
            if mask is None:
                expert = balanced_assignment(h)
            else:
                counted = xp.flatnonzero(mask)
                expert[counted] = balanced_assignment(h[counted])
        s = F.sigmoid(h)
        sample = xp.arange(N)
        self.routing = Routing(sample=sample, expert=expert, weight=s[sample, expert], kept=xp.ones(N, dtype=bool),
                               logits=h, clean=h, sigma=None, eps=None, probs=F.softmax(h), top_k=1,
                               convention="base", scores=s)
        return self.routing

    def backward(self, grad):
        """grad: dict, a gradient of the routing -> dx (N, D)."""
        dh = fixed_selection_backward(self.routing, grad, "sigmoid")
        self.grads["W"] = weight_grad(self.x, dh)
        return dh @ self.params["W"].T
