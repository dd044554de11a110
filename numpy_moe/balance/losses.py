"""Load-balancing (auxiliary) losses of a sparse gate's routing (MATH.md §3, §10.6).

Each loss is an object with a ``weight``; ``loss(routing)`` returns the weighted value (a float) and
caches what ``loss.backward()`` needs; ``backward()`` returns the gradient with respect to the routing
as a dict with any of the keys "weight" (M,), "logits", "clean", "sigma", "scores" (N, E) (see
:class:`numpy_moe.gates.Routing`), which the gate turns into parameter and input gradients.

Every statistic a loss takes over the batch is a sum over samples (divided by N for a mean), and
goes through ``loss.total``: the identity in one process. An expert-parallel layer
(:mod:`numpy_moe.parallel`) sets ``loss.reduce`` to a sum over the ranks, so the statistics, the
value and the factor each sample's gradient is scaled by are those of the concatenated batch
(MATH.md §2.6).

| class           | value                                                         | source               |
|-----------------|---------------------------------------------------------------|----------------------|
| Seed000Loss     | w std(c / sum c), c = hard counts of selections (ddof=1)      | post 000             |
| Importance      | w CV²(Imp), Imp_e = sum_n G_{n,e}                             | Shazeer 2017, V-MoE  |
| ShazeerLoad     | w CV²(sum_n Φ((clean - kth_excluding(h, K, e)) / sigma))      | Shazeer 2017         |
| VMoELoad        | w CV²(mean_n Φ((clean - T_n) / sigma)), T_n the K-th h of row | V-MoE (post 004)     |
| SwitchLoss      | w E sum_e f_e P_e                                             | Switch Transformer   |
| ZLoss           | w mean_n logsumexp(h_n)²                                      | ST-MoE               |
| SequenceBalance | w mean_seq sum_e f_e P_e, f_e = E/(K T) count_e, P_e = mean s' | DeepSeek-V2/V3      |

The post-000 loss counts hard selections, so it is piecewise constant in every parameter: its
gradient is exactly zero and adding it to the training loss changes nothing (the post's bug; its
``backward`` returns an empty gradient, and tests/test_balance.py proves the zero by finite differences).
"""
from itertools import accumulate

from .. import functional as F
from ..backend import get_array_module, ndtr
from ..gates.base import topk_indices
from ..layers import Module
from ..validation import check_bool, check_real


class BalanceLoss(Module):
    """Base: stores the weight; subclasses implement ``__call__(routing) -> float`` and ``backward()``.

    A loss is a Module without parameters, so a layer's list of losses is part of its configuration and
    numpy_moe.io saves it like any nested module.
    """

    name = "balance"
    reduce = None  # None, or a function summing an array over the ranks (set by numpy_moe.parallel)

    def __init__(self, weight=0.01):
        super().__init__()
        self.weight = check_real(weight, f"{self.name} weight", 0)

    def total(self, a):
        """``a``, a per-expert (or scalar) sum over this batch, summed over the ranks if distributed."""
        return a if self.reduce is None else self.reduce(a)

    def n_total(self, routing):
        """N, the routing's number of samples, over all ranks if distributed."""
        N = routing.logits.shape[0]
        if self.reduce is None:
            return N
        return int(self.reduce(get_array_module(routing.logits).asarray([N]))[0])

    def __repr__(self):
        return f"{type(self).__name__}(weight={self.weight})"


class Seed000Loss(BalanceLoss):
    """Post 000's ``balance_loss``: w * std(c / sum c) over the hard top-k selection counts c (E,).

    torch.std is the sample standard deviation (ddof=1), reproduced here; for one expert it is 0 / 0 (NaN in
    torch), refused with a ValueError. The value depends on the routing only through integer counts, so its
    gradient is zero: ``backward`` returns {}.
    """

    name = "seed000"

    def __call__(self, routing):
        xp = get_array_module(routing.logits)
        if routing.logits.shape[1] < 2:  # std with ddof=1 of one value: 0 / 0 (torch.std gives nan as well)
            raise ValueError(f"the post-000 balance loss is the sample standard deviation (ddof=1) of the "
                             f"experts' shares, undefined for n_experts={routing.logits.shape[1]}: use it with 2 or "
                             "more experts")
        c = self.total(xp.bincount(routing.expert, minlength=routing.logits.shape[1]))  # (E,)
        return self.weight * float((c / c.sum()).std(ddof=1))

    def backward(self):
        return {}


class Importance(BalanceLoss):
    """Importance loss w * CV²(Imp) (Shazeer et al. 2017 eq. 6; V-MoE appendix A).

    Parameters
    ----------
    weight : w. source : "gates" (Shazeer: Imp_e = sum of the combine weights routed to e, after top-k)
    or "softmax" (V-MoE: Imp_e = sum_n softmax(clean)_{n,e}, the full noise-free softmax).

    Notes
    -----
    gates: Imp = sum over assignments m with expert e of weight_m; dweight_m = dImp_{e_m}.
    softmax: Imp = sum_n q_n, q = softmax(clean); dclean = q * (dImp - sum_e dImp_e q_e).
    dImp = w dCV²/dImp (functional.cv_squared_backward).
    """

    name = "importance"

    def __init__(self, weight=0.01, source="gates"):
        super().__init__(weight)
        if source not in ("gates", "softmax"):
            raise ValueError(f"source={source!r} must be 'gates' or 'softmax'")
        self.source = source

    def __call__(self, routing):
        xp = get_array_module(routing.logits)
        self.routing = routing
        if self.source == "gates":
            imp = xp.bincount(routing.expert, weights=routing.weight, minlength=routing.logits.shape[1])
            self.imp = self.total(imp.astype(xp.float64, copy=False))  # int64 zeros for an empty batch
        else:
            self.q = F.softmax(routing.clean)  # (N, E)
            self.imp = self.total(self.q.sum(axis=0))  # (E,)
        return self.weight * float(F.cv_squared(self.imp))

    def backward(self):
        dimp = F.cv_squared_backward(self.weight, self.imp).astype(self.routing.logits.dtype)  # (E,)
        if self.source == "gates":
            return {"weight": dimp[self.routing.expert]}  # (M,)
        return {"clean": F.softmax_backward(dimp, self.q)}  # (N, E), dimp broadcasts over rows


def _noisy_load_check(routing, name):
    if routing.sigma is None or routing.top_k is None:
        raise ValueError(f"the {name} loss needs a top-k gate with noise (noise='shazeer' or 'vmoe'); "
                         f"got top_k={routing.top_k}, sigma={'None' if routing.sigma is None else 'set'}")


def _noise_z(d, sigma):
    """z = d / sigma (N, E) of a smooth load estimator, and whether sigma > 0 and z is finite everywhere.

    Where the noise scale is 0 (Shazeer's softplus(x W_noise) underflows below x W_noise ~ -104 in float32,
    -745 in float64) z takes its limit as sigma -> 0: +-inf for d != 0 (Phi = 1 or 0: the choice no longer
    depends on the noise), 0 for d = 0; where sigma is tiny, d / sigma may overflow to +-inf, the same limit.
    """
    xp = get_array_module(d)
    if bool((sigma > 0).all()):
        z = d / sigma
        return z, bool(xp.isfinite(z).all())
    z = xp.where(sigma > 0, d / xp.where(sigma > 0, sigma, 1), xp.where(d == 0, 0, xp.copysign(xp.inf, d)))
    return z, False


def _noise_grads(dz, z, sigma, regular):
    """dclean = dz / sigma and dsigma = -dz z / sigma, with dz = dLoad phi(z); ``regular`` from :func:`_noise_z`.
    Where z is infinite or sigma is 0 both are 0, their limit (phi(d / sigma) d / sigma^2 -> 0 as sigma -> 0;
    at d = 0 and sigma = 0 the choice is held fixed): computed as written they were 0 / 0 and 0 inf there,
    NaN gradients beside a finite loss."""
    if regular:  # ordinary inputs: the formulas as written
        return dz / sigma, -dz * z / sigma
    xp = get_array_module(dz)
    ok = xp.isfinite(z) & (sigma > 0)
    s, dz, z = xp.where(ok, sigma, 1), xp.where(ok, dz, 0), xp.where(ok, z, 0)
    return dz / s, -dz * z / s


class ShazeerLoad(BalanceLoss):
    """Shazeer's smooth load estimator, w * CV²(Load) (Shazeer et al. 2017 appendix A).

    Notes
    -----
    For each (n, e) the threshold t_{n,e} is the K-th largest noisy logit among the other experts: the
    (K+1)-th of the row if e is among the K kept, else the K-th. With z = (clean - t) / sigma,
    Load_e = sum_n Φ(z_{n,e}), the expected number of samples routed to e under a fresh noise draw.
    dz = dLoad_e φ(z); dclean = dz / sigma; dsigma = -dz z / sigma; dt = -dz / sigma, which lands on the
    logit h_{n,j} that t_{n,e} copied (j the K-th or (K+1)-th ranked expert of row n). Needs K < E.
    """

    name = "load"

    def __call__(self, routing):
        _noisy_load_check(routing, "Shazeer load")
        xp = get_array_module(routing.logits)
        r, K = routing, routing.top_k
        N, E = r.logits.shape
        if K >= E:
            raise ValueError(f"the Shazeer load loss needs top_k < n_experts; got top_k={K}, n_experts={E}")
        rows = xp.arange(N)[:, None]
        order = topk_indices(r.logits, K + 1)  # (N, K+1), the routing's top K and the next one
        # expert-major (the layout of the gate's logits), so z is too and the sum over the N samples below runs
        # along contiguous memory, where NumPy sums pairwise: summed row by row instead, float32 loads lost
        # digits with N (a relative error of 2e-5 at N = 1e6, against 1e-8 now)
        self.in_top = xp.zeros((E, N), dtype=bool).T
        self.in_top[rows, order[:, :K]] = True
        self.jk, self.jk1 = order[:, K - 1], order[:, K]  # K-th and (K+1)-th ranked expert, (N,)
        n = xp.arange(N)
        t = xp.where(self.in_top, r.logits[n, self.jk1][:, None], r.logits[n, self.jk][:, None])  # (N, E)
        self.z, self.finite = _noise_z(r.clean - t, r.sigma)  # (N, E)
        self.load = self.total(ndtr(self.z).sum(axis=0))  # (E,)
        self.routing = r
        return self.weight * float(F.cv_squared(self.load))

    def backward(self):
        xp = get_array_module(self.z)
        r = self.routing
        N = self.z.shape[0]
        dload = F.cv_squared_backward(self.weight, self.load).astype(self.z.dtype)  # (E,)
        dz = F.normal_cdf_backward(dload, self.z)  # (N, E)
        dclean, dsigma = _noise_grads(dz, self.z, r.sigma, self.finite)
        dt = -dclean
        dlogits = xp.zeros_like(r.logits)
        n = xp.arange(N)
        dlogits[n, self.jk1] = (dt * self.in_top).sum(axis=1)
        dlogits[n, self.jk] = (dt * ~self.in_top).sum(axis=1)
        return {"clean": dclean, "sigma": dsigma, "logits": dlogits}


class VMoELoad(BalanceLoss):
    """V-MoE's load loss, w * CV²(mean_n p_{n,e}) (Riquelme et al. 2021 appendix A; post 004).

    Notes
    -----
    T_n = the K-th largest noisy logit of row n; p_{n,e} = 1 - Φ((T_n - clean_{n,e}) / sigma)
    = Φ(z), z = (clean - T_n) / sigma: the probability that e is still selected under a fresh draw of its
    own noise. dz = dLoad_e φ(z) / N; dclean = dz / sigma; dsigma = -dz z / sigma;
    dT_n = -sum_e dz_{n,e} / sigma_{n,e}, onto the logit of the K-th ranked expert of row n.
    """

    name = "load"

    def __call__(self, routing):
        _noisy_load_check(routing, "V-MoE load")
        xp = get_array_module(routing.logits)
        r = self.routing = routing
        N = r.logits.shape[0]
        self.n = self.n_total(r)
        self.jk = r.expert.reshape(N, r.top_k)[:, -1]  # K-th ranked expert, (N,)
        T = r.logits[xp.arange(N), self.jk]  # (N,)
        self.z, self.finite = _noise_z(r.clean - T[:, None], r.sigma)  # (N, E)
        self.load = self.total(ndtr(self.z).sum(axis=0)) / self.n  # (E,)
        return self.weight * float(F.cv_squared(self.load))

    def backward(self):
        xp = get_array_module(self.z)
        r = self.routing
        N = self.z.shape[0]
        dload = F.cv_squared_backward(self.weight, self.load).astype(self.z.dtype) / self.n  # (E,)
        dz = F.normal_cdf_backward(dload, self.z)  # (N, E)
        dclean, dsigma = _noise_grads(dz, self.z, r.sigma, self.finite)
        dlogits = xp.zeros_like(r.logits)
        dlogits[xp.arange(N), self.jk] = -dclean.sum(axis=1)
        return {"clean": dclean, "sigma": dsigma, "logits": dlogits}


class SwitchLoss(BalanceLoss):
    """Switch Transformer loss w * E sum_e f_e P_e (Fedus et al. 2021 eq. 4).

    Notes
    -----
    f_e = fraction of samples whose largest logit is e (hard, no gradient); P_e = mean_n p_{n,e},
    p = softmax(logits). dp_{n,e} = w E f_e / N; dlogits = p * (dp - sum_e dp_e p_e).
    Minimal (= w) when routing is uniform.
    """

    name = "switch"

    def __call__(self, routing):
        xp = get_array_module(routing.logits)
        self.routing = routing
        E = routing.logits.shape[1]
        N = self.n = self.n_total(routing)
        self.f = self.total(xp.bincount(xp.argmax(routing.logits, axis=1), minlength=E)) / N  # (E,)
        return self.weight * E * float((self.f * (self.total(routing.probs.sum(axis=0)) / N)).sum())

    def backward(self):
        r = self.routing
        E = r.logits.shape[1]
        dp = (self.weight * E / self.n) * self.f.astype(r.probs.dtype)  # (E,), the same for every row
        return {"logits": F.softmax_backward(dp, r.probs)}


class ZLoss(BalanceLoss):
    """Router z-loss w * mean_n (logsumexp_e h_{n,e})² (Zoph et al. 2022, ST-MoE eq. 5).

    Notes
    -----
    d/dh_{n,e} = w 2 lse_n softmax(h_n)_e / N. Keeps the router logits small; not a balance term.
    """

    name = "z_loss"

    def __call__(self, routing):
        self.routing = routing
        self.lse = F.logsumexp(routing.logits)  # (N,)
        self.n = self.n_total(routing)
        return self.weight * float(self.total((self.lse ** 2).sum(keepdims=True))[0] / self.n)

    def backward(self):
        return {"logits": F.logsumexp_backward(2 * self.weight * self.lse / self.n, self.routing.logits)}

class SequenceBalance(BalanceLoss):
    """DeepSeek's balance loss w * sum_e f_e P_e, per sequence then averaged (DeepSeek-V3 eq. 17-20).

    Parameters
    ----------
    weight : w (the paper's alpha). per_sequence : True: statistics per sequence of
        ``routing.seq_lengths`` (DeepSeek-V3's sequence-wise loss, DeepSeek-V2's ``seq_aux``), the whole
        batch being one sequence when the routing has no lengths; False: over the batch (DeepSeek-V2's
        batch loss, the Switch / GShard f·P loss for top-k routing).
    counts : which experts f counts for a sample: "chosen" (the routing's K experts, chosen with the
        selection bias and group limit if the gate has them: DeepSeek-V2 eq. 24 "token t selects expert i"
        and its ``MoEGate``, which counts its group-limited ``topk_idx``) or "top_scores" (the K largest
        scores s, without bias or group limit: DeepSeek-V3 eq. 18, 1(s_{i,t} in Topk({s_{j,t}}, K_r)), and
        Megatron-core's ``compute_routing_scores_for_aux_loss``). The two agree for a gate without bias
        and group limit.

    Notes
    -----
    For a sequence of T samples: f_e = E / (K T) * #{t : e among t's K counted experts}
    (hard, no gradient; 1 for every expert under perfect balance), s' = s / sum_e s (the scores
    normalised per sample: softmax scores are unchanged, sigmoid scores are divided by their sum),
    P_e = mean_t s'_{t,e}, L = w mean over sequences of sum_e f_e P_e. Backward:
    ds'_{t,e} = w f_e / (S T) for t in a sequence (S sequences), ds = (ds' - sum_e ds'_e s'_e) / sum_e s.
    The sum gets 1e-20 added, as Megatron-core's ``compute_routing_scores_for_aux_loss`` does (the
    paper has none): a sample whose sigmoid scores all underflow to 0 (float32 logits below about -104)
    then has s' = 0 instead of 0 / 0 = NaN; any other sum is at least 1e-38 (float32) and, for softmax
    scores, 1, so the term changes nothing else beyond rounding.
    HuggingFace's Mixtral / Qwen2-MoE loss is E sum_e (count_e / N) P_e = K times this with
    per_sequence=False (modeling_mixtral.py, ``load_balancing_loss_func``).
    """

    name = "sequence"

    COUNTS = ("chosen", "top_scores")
    EPS = 1e-20  # added to each sample's score sum (Megatron-core), so all-zero scores give s' = 0, not NaN

    def __init__(self, weight=1e-3, per_sequence=True, counts="chosen"):
        super().__init__(weight)
        self.per_sequence = check_bool(per_sequence, "per_sequence")
        if counts not in self.COUNTS:
            raise ValueError(f"counts={counts!r} must be one of {self.COUNTS}")
        self.counts = counts

    def __call__(self, routing):
        xp = get_array_module(routing.logits)
        if routing.top_k is None:
            raise ValueError("SequenceBalance needs a top-k routing (K experts per sample); expert choice "
                             "is balanced by construction")
        N, E = routing.logits.shape
        K = routing.top_k
        lengths = routing.seq_lengths if self.per_sequence and routing.seq_lengths is not None else [N]
        lengths = [int(t) for t in lengths]
        self.routing, self.T = routing, xp.asarray(lengths, dtype=routing.logits.dtype)  # (S,)
        S = len(lengths)
        self.seq = xp.repeat(xp.arange(S), lengths)  # (N,) the sequence of each sample
        s = routing.scores if routing.scores is not None else routing.probs
        self.ssum = s.sum(axis=1, keepdims=True) + self.EPS  # (N, 1)
        self.sn = s / self.ssum  # (N, E)
        if self.counts == "chosen":
            sample, expert = self.seq[routing.sample], routing.expert
        else:  # the K largest scores of each sample, whatever the routing chose
            sample, expert = xp.repeat(self.seq, K), topk_indices(s, K).reshape(-1)
        counts = xp.bincount(sample * E + expert, minlength=S * E).reshape(S, E)
        self.f = counts * (E / K) / self.T[:, None]  # (S, E)
        starts = xp.asarray([0] + list(accumulate(lengths))[:-1])  # (S,) first sample of each sequence
        P = xp.add.reduceat(self.sn, starts, axis=0) / self.T[:, None]  # (S, E), sums over each (non-empty) sequence
        return self.weight * float((self.f * P).sum(axis=1).mean())

    def backward(self):
        dP = (self.weight * self.f / self.f.shape[0]).astype(self.sn.dtype)  # (S, E); f is float64 (int counts)
        dsn = (dP / self.T[:, None])[self.seq]  # (N, E)
        ds = (dsn - (dsn * self.sn).sum(axis=1, keepdims=True)) / self.ssum
        return {"scores": ds}
