"""Gated-linear experts' passes: SwiGLU, GeGLU and gpt-oss's clamped SwiGLU (MATH.md §10.1).

``E_e(x) = (act(x W_gate_e) ⊙ (x W_up_e)) W_down_e`` (Shazeer 2020, "GLU variants improve transformer"),
dense (every expert on every sample, or a batch per expert) and in chunks of the grouped pass
(:mod:`numpy_moe.experts.grouped`). The derivatives are in :class:`numpy_moe.experts.ExpertBank`'s Notes.
:class:`GatedLinearPasses` is a base class of ExpertBank, not a module of its own: it reads the bank's
parameters.
"""
from .. import functional as F
from ..backend import get_array_module, sum_rows


class GatedLinearPasses:
    """ExpertBank's passes for ``activation`` "swiglu", "geglu" and "gptoss_swiglu"."""

    def _glu_forward(self, x):
        """Dense: x (N, D) -> (E, N, O), or x (E, C, D) -> (E, C, O)."""
        p = self.params
        self.x = x
        G = self._add_bias(x @ p["W_gate"], "b_gate")  # (E, N, H)
        self.act, self.dact = self._act_parts(G)
        self.up, self.dup = self._up_parts(self._add_bias(x @ p["W_up"], "b_up"))
        self.A = self.act * self.up
        return self._add_bias(self.A @ p["W_down"], "b_down")  # (E, N, O)

    def _glu_backward(self, dout):
        """Dense: dout (E, N, O) -> dx (N, D); or dout (E, C, O) -> dx (E, C, D) after per-expert batches."""
        p, g = self.params, self.grads
        g["W_down"] = self.A.transpose(0, 2, 1) @ dout  # (E, H, O)
        dA = dout @ p["W_down"].transpose(0, 2, 1)  # (E, N, H)
        dU = dA * self.act if self.dup is None else dA * self.act * self.dup
        dG = dA * self.up * self.dact
        xT = self.x.T if self.x.ndim == 2 else self.x.transpose(0, 2, 1)  # the same x for every expert, or its own
        g["W_gate"], g["W_up"] = xT @ dG, xT @ dU  # (E, D, H)
        if self.bias:
            g["b_down"], g["b_gate"], g["b_up"] = sum_rows(dout), sum_rows(dG), sum_rows(dU)
        dx = dG @ p["W_gate"].transpose(0, 2, 1) + dU @ p["W_up"].transpose(0, 2, 1)  # (E, ·, D)
        return dx.sum(axis=0) if self.x.ndim == 2 else dx

    def _act_parts(self, g):
        """(act(g), act'(g)) from one evaluation of the sigmoid (SiLU) or of Φ and φ (GELU)."""
        if self.activation == "gptoss_swiglu":
            xp = get_array_module(g)
            c = xp.minimum(g, self.limit)
            s = F.sigmoid(self.alpha * c)
            act = c * s
            return act, (s + self.alpha * act * (1 - s)) * (g <= self.limit)
        if self.activation == "swiglu":
            s = F.sigmoid(g)
            act = g * s
            return act, s + act * (1 - s)  # s (1 + g (1 - s))
        cdf = F.normal_cdf(g)
        return g * cdf, cdf + g * F.normal_pdf(g)

    def _up_parts(self, u):
        """(the up factor, its derivative or None for 1): u itself, or gpt-oss's clip(u, ±limit) + 1."""
        if self.activation != "gptoss_swiglu":
            return u, None
        xp = get_array_module(u)
        return xp.clip(u, -self.limit, self.limit) + 1, xp.abs(u) <= self.limit

    def _glu_forward_chunk(self, c, chunk, x, rows):
        """One chunk of gated-linear experts: G and U by one product per expert, the activation over the
        chunk's rows at once, then W_down per expert."""
        xp, p, H = get_array_module(x), self.params, self.hidden
        c_lo, c_hi = chunk[0][1], chunk[-1][2]
        GU, out = self.GU, self.hs[-1]
        for e, lo, hi in chunk:
            xp.matmul(self._gather(x, rows, lo, hi, out=self.x[lo:hi] if rows is not None else None), self.W_in[e],
                      out=GU[lo:hi])
            if self.bias:
                GU[lo:hi, :H] += p["b_gate"][e]
                GU[lo:hi, H:] += p["b_up"][e]
        act, dact = self._act_parts(GU[c_lo:c_hi, :H])  # (rows, H) each
        up, dup = self._up_parts(GU[c_lo:c_hi, H:])
        A = act * up
        self.parts[c] = (act, dact, up, dup, A)
        for e, lo, hi in chunk:
            xp.matmul(A[lo - c_lo:hi - c_lo], p["W_down"][e], out=out[lo:hi])
            if self.bias:
                out[lo:hi] += p["b_down"][e]

    def _glu_backward_chunk(self, c, chunk, dout, rows):
        """dG and dU sit side by side in one (rows, 2H) array, so each expert's input gradient is one product
        [dG dU] [W_gate W_up]ᵀ and its weight gradients one product x_eᵀ [dG dU]."""
        xp, p, g, H = get_array_module(dout), self.params, self.grads, self.hidden
        c_lo, c_hi = chunk[0][1], chunk[-1][2]
        act, dact, up, dup, A = self.parts[c]
        dA = xp.empty_like(A)
        for e, lo, hi in chunk:
            d = self._output_grad(dout, rows, lo, hi)
            xp.matmul(A[lo - c_lo:hi - c_lo].T, d, out=g["W_down"][e])
            xp.matmul(d, p["W_down"][e].T, out=dA[lo - c_lo:hi - c_lo])
            if self.bias:
                sum_rows(d, out=g["b_down"][e])
        dGU = xp.empty((c_hi - c_lo, 2 * H), dtype=dout.dtype)
        xp.multiply(dA, act, out=dGU[:, H:])  # dU = dA ⊙ act(G) [⊙ up'(U)]
        if dup is not None:
            dGU[:, H:] *= dup
        dA *= up
        xp.multiply(dA, dact, out=dGU[:, :H])  # dG = dA ⊙ U ⊙ act'(G)
        dW_in = xp.empty((self.in_features, 2 * H), dtype=dout.dtype)
        for e, lo, hi in chunk:
            d = dGU[lo - c_lo:hi - c_lo]
            xp.matmul(self.x[lo:hi].T, d, out=dW_in)
            g["W_gate"][e], g["W_up"][e] = dW_in[:, :H], dW_in[:, H:]
            xp.matmul(d, self.W_in[e].transpose(1, 0), out=self.dbuf[0][lo:hi])
            if self.bias:
                g["b_gate"][e], g["b_up"][e] = sum_rows(d).reshape(2, H)  # d (rows, 2H) C-ordered: one sum
