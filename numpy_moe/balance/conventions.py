"""The f·P balance loss as each framework scales it, and the z-loss on probabilities (a documented bug).

Every framework's balance loss is one formula, w c(E, K) sum_e (count_e / N) P_e, with P_e = mean_n p_{n,e}
(p = softmax of the router logits) and count_e the number of samples that chose e, among all K choices or
the first only; the frameworks differ in c and in which choices they count (docs/FRAMEWORKS.md has the
table of values at uniform and collapsed routing):

| convention       | counts       | c(E, K) | uniform | collapsed | source                                   |
|------------------|--------------|---------|---------|-----------|------------------------------------------|
| "hf"             | all K        | E       | K       | E         | transformers load_balancing_loss_func    |
| "gshard"         | first choice | E       | 1       | E         | fairseq top2gating; DeepSpeed top1/top2gating |
| "deepspeed_topk" | all K        | E / K   | 1       | E / K     | DeepSpeed sharded_moe.py topkgating      |
| "megablocks"     | all K        | E / K   | 1       | E / K     | megablocks batched_load_balancing_loss   |
| "megatron"       | all K        | E / K   | 1       | E / K     | Megatron-core switch_load_balancing_loss_func |

(uniform: count_e = N K / E and P_e = 1 / E; collapsed: every sample picks the same K experts and puts its
whole probability on the first.) "megablocks" and "megatron" are the same per-layer value; MegaBlocks
averages it over layers (``MultiLayer(loss, "mean")``), HuggingFace concatenates the layers
(``MultiLayer(loss, "concat")``). DeepSeek's sequence-wise loss is :class:`.SequenceBalance`.
"""
from .. import functional as F
from ..backend import get_array_module
from ..validation import check_bool
from .losses import BalanceLoss, ZLoss

CONVENTIONS = {"hf": ("all", False), "gshard": ("first", False), "deepspeed_topk": ("all", True),
               "megablocks": ("all", True), "megatron": ("all", True)}


class FrameworkBalance(BalanceLoss):
    """w c(E, K) sum_e (count_e / N) P_e in a framework's convention (see the module docstring).

    Parameters
    ----------
    weight : w (the framework's ``router_aux_loss_coef``, ``aux_loss_alpha``, ``moe_loss_weight``...).
    convention : a key of :data:`CONVENTIONS`.
    double_softmax : False, or True to reproduce transformers #45120 (fixed by #45131): the router returned
        probabilities as its "logits" and the loss took a second softmax, P = mean softmax(softmax(h)),
        which flattens P towards 1/E (at random initialisation the value is still about K).

    Notes
    -----
    p = softmax(routing.logits) (N, E), P = mean_n p; count_e over the routing's chosen experts (all K, or
    the first of each sample), before any capacity limit, as every framework counts them. count is hard
    (no gradient): dp_{n,e} = w c count_e / N², dlogits = p ⊙ (dp - sum_e dp_e p_e).
    With double_softmax, q = softmax(p) takes p's place and dp = q ⊙ (dq - sum_e dq_e q_e) comes first.
    """

    name = "framework_balance"

    def __init__(self, weight=0.01, convention="hf", double_softmax=False):
        super().__init__(weight)
        if not isinstance(convention, str) or convention not in CONVENTIONS:  # a list: 'unhashable type'
            raise ValueError(f"convention={convention!r} must be one of {tuple(CONVENTIONS)}")
        self.convention, self.double_softmax = convention, check_bool(double_softmax, "double_softmax")

    def __call__(self, routing):
        xp = get_array_module(routing.logits)
        if routing.top_k is None:
            raise ValueError("FrameworkBalance needs a top-k routing (K experts per sample)")
        N, E = routing.logits.shape
        K = routing.top_k
        counts, per_k = CONVENTIONS[self.convention]
        chosen = routing.expert.reshape(N, K)
        chosen = chosen if counts == "all" else chosen[:, :1]
        self.N = self.n_total(routing)
        self.c = E / K if per_k else float(E)
        self.count = self.total(xp.bincount(chosen.reshape(-1), minlength=E)).astype(routing.logits.dtype)  # (E,)
        self.p, self.routing = F.softmax(routing.logits), routing  # (N, E)
        self.q = F.softmax(self.p) if self.double_softmax else self.p  # the bug's second softmax
        P = self.total(self.q.sum(axis=0)) / self.N  # (E,)
        return self.weight * self.c * float((self.count / self.N * P).sum())

    def backward(self):
        dq = self.weight * self.c * self.count / self.N ** 2  # (E,), the same for every row
        dp = F.softmax_backward(dq, self.q) if self.double_softmax else dq
        return {"logits": F.softmax_backward(dp, self.p)}


class ProbsZLoss(ZLoss):
    """The z-loss taken on the router *probabilities*, w mean_n logsumexp(p_n)² (a bug, kept to show it).

    The intended z-loss (ST-MoE, :class:`ZLoss`) penalises the logits' log-sum-exp so they stay small.
    On probabilities in [0, 1] the log-sum-exp lies in (log E, log(E - 1 + e)], so the penalty barely
    varies, never reaches the logits' scale and cannot keep them small (docs/FRAMEWORKS.md, known bugs).

    Notes
    -----
    p = softmax(h), l_n = logsumexp(p_n); dp = 2 w l_n softmax(p_n) / N, dh = p ⊙ (dp - sum_e dp_e p_e).
    """

    name = "probs_z_loss"

    def __call__(self, routing):
        self.p = F.softmax(routing.logits)  # (N, E)
        return super().__call__(routing._replace(logits=self.p))

    def backward(self):
        dp = F.logsumexp_backward(2 * self.weight * self.lse / self.n, self.p)  # (N, E)
        return {"logits": F.softmax_backward(dp, self.p)}
