"""Sinkhorn routing: balance the token-expert scores with Sinkhorn iterations, route on the balanced plan,
weight with the unbalanced scores (S-BASE, Clark et al. 2022, "Unified scaling laws for routed language
models"; Megatron-core's ``sinkhorn`` and ``TopKRouter.sinkhorn_load_balancing``; MATH.md §10.11)."""
import warnings
from typing import NamedTuple

from .. import functional as F
from ..backend import asarray, default_rng, get_array_module, is_floating_dtype
from ..layers import Module, init_weight
from ..validation import check_input, check_positive_int, check_real, to_dtype
from .base import Routing, expert_major_logits, fixed_selection_backward, topk_indices, weight_grad

SINKHORN_EPS = 1e-8  # Megatron-core's eps in the two divisions
MAX_EXP = 80.0  # larger logits are shifted down before exp (exp(80) ~ 5.5e34 fits float32)


class SinkhornResult(NamedTuple):
    """What :func:`sinkhorn` returns: plan (N, E) = diag(row_scale) exp(logits - max) diag(col_scale),
    row_scale d0 (N,), col_scale d1 (E,), the iterations run, and whether the stopping rule was met."""
    plan: object
    row_scale: object
    col_scale: object
    iterations: int
    converged: bool


def sinkhorn(logits, tol=1e-4, max_iter=1000):
    """Balance exp(logits) (N, E) to rows summing to 1/N and columns to 1/E -> :class:`SinkhornResult`.

    Parameters
    ----------
    logits : (N, E). tol : stop when the mean absolute change of the column scaling d1 is <= tol
    (Megatron-core's criterion and default, 1e-4). max_iter : the most iterations; reaching it without
    convergence warns (RuntimeWarning) and returns the last iterate with ``converged`` False.

    Notes
    -----
    Megatron-core (``megatron/core/transformer/moe/moe_utils.py``, ``sinkhorn``): c = exp(logits),
    d0 = 1_N, d1 = 1_E, then repeat d0 = 1 / (N (c d1 + eps)), d1 = 1 / (E (d0ᵀ c + eps)),
    error = mean |d1 - d1_old| until error <= tol; the plan is P = diag(d0) c diag(d1). Computed as
    Megatron does, except that logits above :data:`MAX_EXP` are first shifted down by (max - MAX_EXP) so
    exp cannot overflow (a constant factor in c moves into d0; only eps's relative size changes).
    Because of eps the iteration has no exact fixed point: (d0, d1) drifts slowly along (a d0, d1 / a),
    so the error stops falling at a floor of order eps / (c d1) (about 3e-8 for unit-variance logits); a
    tol below the floor never converges and takes the max_iter fallback. The stated tolerance on the marginals:
    after the last d1 update the columns sum to 1/E (exactly, up to eps); the rows sum to (1/N)(1 + delta_n)
    with |delta_n| <= sum_e |d1_e - d1old_e| / min_e d1old_e (row n's sum uses the d1 of the step before),
    so when converged |N rowsum_n - 1| <= E tol / (min_e d1_e - E tol) (plus an eps term).

    Far-apart logits. When exp underflows to 0 on a whole row or column (a sample whose every logit lies
    more than ~745 (float64) or ~104 (float32) below the largest, an expert every sample ranks that far
    down), no scaling of that c can give it mass: the row would be routed by the top-k tie rule whatever
    its logits, the column would get no sample while the columns' sums still "converged". The plan is
    unchanged (for eps -> 0) by scaling c's rows and columns, so then c = exp(h - a_n - b_e) instead, with
    a_n = max_e h_{n,e} and b_e = max_n (h_{n,e} - a_n) <= 0: every entry is <= 1 and every row and column
    holds a 1 (only eps's relative size changes, as for the shift above). A row or column that is -inf
    throughout has no plan (ValueError). Ordinary logits never take this branch.
    """
    logits = _check_logits(asarray(logits))  # a public function: NaN logits gave a NaN plan
    tol = check_real(tol, "tol", 0, low_open=True)  # tol=inf returned exp(logits), unscaled, as converged
    max_iter = check_positive_int(max_iter, "max_iter")  # 2.7 ran 3 iterations, True one
    xp = get_array_module(logits)
    N, E = logits.shape
    c = xp.exp(logits - max(0.0, float(logits.max()) - MAX_EXP))
    if not (bool((c.max(axis=1) > 0).all()) and bool((c.max(axis=0) > 0).all())):
        c = _rescaled_exp(logits)
    d0, d1 = xp.ones(N, dtype=c.dtype), xp.ones(E, dtype=c.dtype)
    error, it = float("inf"), 0
    while error > tol and it < max_iter:
        d0 = (1.0 / N) / (c @ d1 + SINKHORN_EPS)
        d1_new = (1.0 / E) / (d0 @ c + SINKHORN_EPS)
        error = float(xp.abs(d1_new - d1).mean())
        d1, it = d1_new, it + 1
    converged = error <= tol
    if not converged:
        warnings.warn(f"sinkhorn did not converge in max_iter={max_iter} iterations (mean change of d1 "
                      f"{error:.2e} > tol={tol:.0e}); routing on the last iterate", RuntimeWarning, stacklevel=2)
    return SinkhornResult(d0[:, None] * c * d1, d0, d1, it, converged)


def _check_logits(logits):
    """logits (N, E), a 2-D float array whose entries are finite or -inf (an excluded sample-expert pair, see
    :func:`sinkhorn`); TypeError / ValueError otherwise."""
    if logits.ndim != 2:
        raise ValueError(f"logits has ndim={logits.ndim} (shape {tuple(logits.shape)}); expected a 2-D array (N, E)")
    if not is_floating_dtype(logits.dtype):
        raise TypeError(f"logits has dtype {logits.dtype}; expected a floating dtype (float32 or float64)")
    xp = get_array_module(logits)
    if bool(xp.isnan(logits).any()) or bool((logits == xp.inf).any()):
        raise ValueError("logits contains NaN or inf (+inf); expected finite values, or -inf for a sample-expert "
                         "pair that is excluded")
    return logits


def _rescaled_exp(logits):
    """exp(h - a_n - b_e) (N, E) with a_n = max_e h_{n,e}, b_e = max_n (h_{n,e} - a_n): a row and column scaling
    of exp(h) whose every row and column holds a 1 (see :func:`sinkhorn`); ValueError for a row or column
    that is -inf throughout."""
    xp = get_array_module(logits)
    for axis, what in ((1, "sample (row)"), (0, "expert (column)")):
        dead = xp.flatnonzero(~(logits > -xp.inf).any(axis=axis))
        if dead.size:
            raise ValueError(f"sinkhorn: the logits of {int(dead.size)} {what}(s), the first {int(dead[0])}, are -inf "
                             "throughout: no plan can give it mass")
    z = logits - logits.max(axis=1, keepdims=True)
    return xp.exp(z - z.max(axis=0, keepdims=True))


class SinkhornGate(Module):
    """Top-k on a Sinkhorn-balanced plan in training, plain top-k in evaluation (S-BASE, Megatron-core).

    Parameters
    ----------
    in_features : D. n_experts : E. top_k : K.
    tol, max_iter : the Sinkhorn stopping rule (see :func:`sinkhorn`); tol > 0, max_iter >= 1.
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (N, D) -> Routing with M = N K assignments (sample-major); W (D, E).

    Notes
    -----
    h = x W (N, E); s = sigmoid(h) for K = 1, softmax(h) for K > 1 (Megatron's ``_sinkhorn_activation``).
    Training: P = sinkhorn(h) (no gradient), the experts are the K largest P_{n,:}; evaluation: the K
    largest s_{n,:}. The weights are always the unbalanced s at the chosen experts, so the balancing moves
    the choice, never the weights. Backward with the choice fixed: ds at the chosen pairs = dweight, then
    the sigmoid or softmax rule, dW = xᵀ dh, dx = dh Wᵀ. After a training forward ``sinkhorn_iterations``
    and ``sinkhorn_converged`` report the iterations.
    """

    convention = "sinkhorn"

    def __init__(self, in_features, n_experts, top_k=1, tol=1e-4, max_iter=1000, seed=None, dtype="float64"):
        super().__init__(dtype)
        D = self.in_features = check_positive_int(in_features, "in_features")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        K = self.top_k = check_positive_int(top_k, "top_k")
        if K > E:
            raise ValueError(f"top_k={K} must be at most n_experts={E}")
        self.tol = check_real(tol, "tol", 0, low_open=True)
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.score = "sigmoid" if K == 1 else "softmax"
        self.params["W"] = init_weight(default_rng(seed), D, E, (D, E), "glorot", self.dtype)
        self.sinkhorn_iterations, self.sinkhorn_converged = 0, None
        self.zero_grad()

    def forward(self, x, mask=None, *, checked=False):
        """x (N, D) -> Routing. ``mask`` (N,) bool: the samples that count; Sinkhorn balances those alone,
        the others (padding) take their plain top-k."""
        x = to_dtype(x, self.dtype) if checked else check_input(x, self.in_features, self.dtype)  # MoE checked x
        xp = get_array_module(x)
        N, K = x.shape[0], self.top_k
        self.x = x
        h = expert_major_logits(x, self.params["W"])  # (N, E)
        s = F.sigmoid(h) if self.score == "sigmoid" else F.softmax(h)
        idx = topk_indices(s, K)
        if self.training:
            rows = slice(None) if mask is None else xp.flatnonzero(mask)
            result = sinkhorn(h[rows], self.tol, self.max_iter)
            self.sinkhorn_iterations, self.sinkhorn_converged = result.iterations, result.converged
            idx[rows] = topk_indices(result.plan, K)
        sample, expert = xp.repeat(xp.arange(N), K), idx.reshape(-1)
        self.routing = Routing(sample=sample, expert=expert, weight=s[sample, expert],
                               kept=xp.ones(N * K, dtype=bool), logits=h, clean=h, sigma=None, eps=None,
                               probs=s if self.score == "softmax" else F.softmax(h), top_k=K,
                               convention="sinkhorn", scores=s)
        return self.routing

    def backward(self, grad):
        """grad: dict, a gradient of the routing -> dx (N, D)."""
        dh = fixed_selection_backward(self.routing, grad, self.score)
        self.grads["W"] = weight_grad(self.x, dh)
        return dh @ self.params["W"].T
