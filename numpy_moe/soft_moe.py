"""Soft MoE: every slot takes a softmax-weighted mix of a group's tokens, every token a softmax-weighted mix
of the slots' outputs (Puigcerver et al. 2023, "From sparse to soft mixtures of experts"; MATH.md §10.9).

Nothing is discrete, so nothing is dropped and every expert processes exactly its S slots per group:
the layer has no :class:`~numpy_moe.gates.Routing`. Its dense analogue, :class:`SoftRouting`, holds the
dispatch and combine weights; ``diagnostics`` reports the same keys as :class:`~numpy_moe.moe.MoE`.
"""
from typing import NamedTuple

from . import functional as F
from .backend import default_rng, get_array_module, to_numpy
from .experts import ExpertBank
from .layers import Module, normal_param, ones_param
from .validation import check_input, check_positive_int

NORM_EPS = 1e-6  # vmoe's ``normalize``: x / sqrt(sum x^2 + 1e-6)


class SoftRouting(NamedTuple):
    """The soft routing of the last forward: G groups of m tokens, E experts of S slots (n = E S slots).

    logits : (G, m, n) scale * normalize(x) · normalize(phi).
    dispatch : (G, m, n) softmax over the m tokens: slot j's input is sum_i dispatch[g, i, j] x_i.
    combine : (G, m, n) softmax over the n slots: token i's output is sum_j combine[g, i, j] y_j.
    """
    logits: object
    dispatch: object
    combine: object


def _normalize(a, axis):
    """a / sqrt(sum a^2 + eps) along ``axis`` and the factor r = (sum a^2 + eps)^(-1/2).

    When sum a^2 could overflow (|a| beyond about 1e19 in float32, 1e154 in float64: squared directly, the sum
    was inf, r = 0 and the normalised vector 0, not a / |a|), r is computed from a / c, c = max |a| along the
    axis (where it exceeds 1): r = 1 / (c sqrt(sum (a/c)^2 + eps / c^2)), the same number. One max of |a|
    decides; ordinary inputs take the plain formula, bit for bit."""
    xp = get_array_module(a)
    top = float(xp.abs(a).max()) if a.size else 0.0
    if top * top * a.shape[axis] < 0.5 * float(xp.finfo(a.dtype).max):
        return a * (r := 1.0 / xp.sqrt((a * a).sum(axis=axis, keepdims=True) + NORM_EPS)), r
    c = xp.abs(a).max(axis=axis, keepdims=True)
    c = xp.where(c > 1, c, 1)  # vectors of max |a| <= 1 keep the plain formula (eps / c^2 cannot overflow)
    b = a / c
    r = 1.0 / (c * xp.sqrt((b * b).sum(axis=axis, keepdims=True) + NORM_EPS / c / c))
    return a * r, r


def _normalize_backward(da, ah, r, axis):
    """Gradient through ah = a r with r = (sum a^2 + eps)^(-1/2): r da - a r^3 sum(a da), computed as
    r (da - ah sum(ah da)) from the normalised ah (the same expression; r^3 underflowed to 0 for |a| beyond
    about 1e13 in float32, 1e103 in float64, and lost the second term)."""
    return r * (da - ah * (ah * da).sum(axis=axis, keepdims=True))


class SoftMoE(Module):
    """Soft MoE layer (Puigcerver et al. 2023): x (N, D) in groups of m tokens -> y (N, O).

    Parameters
    ----------
    in_features : D. out_features : O. n_experts : E. slots : S >= 1 slots per expert.
    group_size : m, tokens mixed together (a sequence, an image's patches); N must be a multiple of m
        and m <= N. None: the whole batch is one group.
    hidden : H of the MLP experts (None: linear experts); ignored when ``experts`` is given.
    experts : None or an ExpertBank (E, D -> O).
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (N, D) -> y (N, O). Parameters phi (D, E S) (slot j = e S + p belongs to expert e),
    scale (1,), experts.*.

    Notes
    -----
    Per group X (m, D) (the vmoe reference ``vmoe/projects/soft_moe/router.py``, ``SoftRouter``):
    X̂ = X / sqrt(|x_i|^2 + 1e-6) row-wise, Φ̂ = Φ / sqrt(|φ_j|^2 + 1e-6) column-wise,
    L = scale X̂ Φ̂ (m, n) (scale learned, initialised to 1; Φ drawn N(0, 1/D), LeCun normal);
    dispatch D = softmax of L over the tokens (axis m), combine C = softmax of L over the slots (axis n);
    slot inputs X̃ = Dᵀ X (n, D) from the raw X; Ỹ_j = f_{e(j)}(X̃_j); Y = C Ỹ (m, O).
    Backward: dC = dY Ỹᵀ, dỸ = Cᵀ dY, dX̃ = experts' backward, dX = D dX̃ + (normalisation path),
    dD = X dX̃ᵀ, dL = softmax'_n(dC) + softmax'_m(dD), dscale = sum dL ⊙ X̂Φ̂, dX̂ = scale dL Φ̂ᵀ,
    dΦ̂ = scale sum_g X̂ᵀ dL, and through a normalisation â = a r: d a = r da - a r^3 (a · da)
    = r (da - â (â · da)).
    """

    def __init__(self, in_features, out_features, n_experts, slots=1, group_size=None, hidden=None,
                 experts=None, seed=None, dtype="float64"):
        super().__init__(dtype)
        D = self.in_features = check_positive_int(in_features, "in_features")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        S = self.slots = check_positive_int(slots, "slots")
        self.group_size = None if group_size is None else check_positive_int(group_size, "group_size")
        rng = default_rng(seed)
        if experts is None:
            experts = ExpertBank(E, D, check_positive_int(out_features, "out_features"), hidden, seed=rng,
                                 dtype=dtype)
        elif not isinstance(experts, ExpertBank):
            raise TypeError(f"experts={experts!r} must be a numpy_moe.experts.ExpertBank")
        if (experts.n_experts, experts.in_features) != (E, D) or (
                out_features is not None and experts.out_features != out_features):
            raise ValueError(f"experts maps {experts.in_features} -> {experts.out_features} with "
                             f"{experts.n_experts} experts; expected {D} -> {out_features} with {E}")
        if experts.dtype != self.dtype:
            raise ValueError(f"experts has dtype {experts.dtype} but the layer has dtype={self.dtype}")
        self.out_features = experts.out_features
        self.experts = experts
        self.params["phi"] = normal_param(rng, D ** -0.5, (D, E * S), self.dtype)
        self.params["scale"] = ones_param(1, self.dtype)
        self.zero_grad()

    @property
    def aux_loss(self):
        """Soft MoE has no balance loss: 0.0."""
        return 0.0

    def _groups(self, N):
        m = N if self.group_size is None else self.group_size
        if m > N:
            raise ValueError(f"group_size={m} is larger than the batch of N={N} samples; use a group_size "
                             f"that divides N, or group_size=None for one group")
        if N % m:
            raise ValueError(f"the batch of N={N} samples does not split into groups of group_size={m}; "
                             "pass N a multiple of group_size (whole sequences)")
        return N // m, m

    def forward(self, x):
        """x (N, D), N >= 1 -> y (N, O)."""
        xp = get_array_module(x)
        x = check_input(x, self.in_features, self.dtype, min_rows=1)  # slots average over tokens: N >= 1
        N, E, S = x.shape[0], self.n_experts, self.slots
        G, m = self._groups(N)
        n = E * S
        X = x.reshape(G, m, -1)  # (G, m, D)
        self.X = X
        self.Xh, self.rx = _normalize(X, axis=2)
        self.Ph, self.rp = _normalize(self.params["phi"], axis=0)  # (D, n)
        self.sim = self.Xh @ self.Ph  # (G, m, n)
        logits = self.params["scale"][0] * self.sim
        Dw, Cw = F.softmax(logits, axis=1), F.softmax(logits, axis=2)
        self.routing = SoftRouting(logits=logits, dispatch=Dw, combine=Cw)
        Xs = xp.einsum("gmn,gmd->gnd", Dw, X)  # (G, n, D) slot inputs
        # expert-major rows for the grouped experts: (E, G, S, D) -> (E G S, D)
        rows = Xs.reshape(G, E, S, -1).transpose(1, 0, 2, 3).reshape(E * G * S, -1)
        out = self.experts.forward_grouped(xp.ascontiguousarray(rows), [e * G * S for e in range(E + 1)])
        self.Ys = out.reshape(E, G, S, -1).transpose(1, 0, 2, 3).reshape(G, n, -1)  # (G, n, O)
        return xp.einsum("gmn,gno->gmo", Cw, self.Ys).reshape(N, self.out_features)

    def backward(self, dy):
        """dy (N, O) -> dx (N, D); fills grads of phi, scale and the experts."""
        xp = get_array_module(dy)
        G, m, _ = self.X.shape
        E, S = self.n_experts, self.slots
        n = E * S
        r = self.routing
        if tuple(dy.shape) != (G * m, self.out_features):
            raise ValueError(f"dy has shape {tuple(dy.shape)}; expected {(G * m, self.out_features)}")
        dY = dy.reshape(G, m, -1)
        dC = xp.einsum("gmo,gno->gmn", dY, self.Ys)  # (G, m, n)
        dYs = xp.einsum("gmn,gmo->gno", r.combine, dY)  # (G, n, O)
        rows = dYs.reshape(G, E, S, -1).transpose(1, 0, 2, 3).reshape(E * G * S, -1)
        dXs = self.experts.backward_grouped(xp.ascontiguousarray(rows))
        dXs = dXs.reshape(E, G, S, -1).transpose(1, 0, 2, 3).reshape(G, n, -1)  # (G, n, D)
        dX = xp.einsum("gmn,gnd->gmd", r.dispatch, dXs)
        dD = xp.einsum("gmd,gnd->gmn", self.X, dXs)
        dL = F.softmax_backward(dC, r.combine, axis=2) + F.softmax_backward(dD, r.dispatch, axis=1)
        scale = self.params["scale"][0]
        self.grads["scale"] = xp.reshape((dL * self.sim).sum(), (1,)).astype(self.dtype)
        dXh = scale * (dL @ self.Ph.T)  # (G, m, D)
        dPh = scale * xp.einsum("gmd,gmn->dn", self.Xh, dL)  # (D, n)
        self.grads["phi"] = _normalize_backward(dPh, self.Ph, self.rp, axis=0)
        dX += _normalize_backward(dXh, self.Xh, self.rx, axis=2)
        return dX.reshape(G * m, -1)

    @property
    def diagnostics(self):
        """samples_per_expert: (E,) slots each expert processed (S per group, equal); importance: (E,) sum
        of the combine weights on each expert's slots; dropped: 0 (nothing is discrete)."""
        if not hasattr(self, "routing"):
            raise ValueError("diagnostics needs a forward pass first: call forward(x) before diagnostics")
        G = self.routing.combine.shape[0]
        E, S = self.n_experts, self.slots
        importance = self.routing.combine.reshape(G, -1, E, S).sum(axis=(0, 1, 3))
        return {"samples_per_expert": to_numpy(get_array_module(importance).full(E, G * S)),
                "importance": to_numpy(importance), "dropped": 0}
