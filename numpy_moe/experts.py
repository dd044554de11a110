"""ExpertBank: E experts of identical shape with stacked weights; SharedExpert (MATH.md §1, §10).

Linear experts ``E_e(x) = x W_e + b_e``, one-hidden-layer ReLU MLP experts
``E_e(x) = relu(x W1_e + b1_e) W2_e + b2_e``, or gated-linear experts (Shazeer 2020, "GLU variants
improve transformer"; the experts of Mixtral, Qwen2-MoE and DeepSeek)
``E_e(x) = (act(x W_gate_e) ⊙ (x W_up_e)) W_down_e`` with act = SiLU (SwiGLU) or GELU (GeGLU), biases
off by default as in those models, or gpt-oss's clamped SwiGLU (with biases, MATH.md §10.1).
The weights of all experts are stored stacked,
W1 of shape (E, D, H), so the dense case (every expert on every sample, as posts 000-002 do) is one
batched matmul per layer; there is no Python list of expert objects on the hot path.

Two forward/backward pairs serve the two ways an MoE layer uses its experts:

- ``forward(x) -> (E, N, O)`` / ``backward(dout) -> dx``: every expert on every sample (dense MoE); with
  x of shape (E, C, D), expert e on its own C rows x[e] (the sparse layer's padded dispatch).
- ``forward_grouped(x, offsets) -> (M, O)`` / ``backward_grouped(dout) -> dx``: rows of ``x`` are grouped
  by expert (rows ``offsets[e]:offsets[e+1]`` go to expert e), each expert runs only on its own rows;
  this is what sparse dispatch calls. An expert with no rows gets exactly zero gradient. The grouped
  pass loops over experts only for the matrix products; every element-wise step (activation, gating
  product, their backward) runs once over all M rows, so many small experts (E = 64, K = 8) cost no more
  per row than a few large ones.

:class:`SharedExpert` is an always-on expert added to the routed output: DeepSeek-MoE's shared experts
(several, fused into one MLP of their summed width) or Qwen2-MoE's shared expert scaled by sigmoid(x w).
"""
from . import functional as F
from .backend import check_rows, default_rng, get_array_module, take_rows
from .layers import Module, init_weight, zeros_param
from .validation import check_input, check_positive_int, check_real
from .workers import n_threads, run_blocks

SERIAL_BELOW = 1 << 16  # grouped rows x widest layer below which the experts run in order, not on threads


class ExpertBank(Module):
    """E linear (``hidden=None``), ReLU-MLP or gated-linear (SwiGLU, GeGLU) experts with stacked weights.

    Parameters
    ----------
    n_experts : E. in_features : D. out_features : O. hidden : H, or None for linear experts.
    seed : int or numpy Generator. dtype : float32 or float64.
    activation : "relu" (one hidden ReLU layer), "swiglu" (act = SiLU), "geglu" (act = exact GELU) or
        "gptoss_swiglu" (gpt-oss: A = g σ(alpha g) ⊙ (u + 1), g = min(G, limit), u = clip(U, -limit, limit));
        the gated-linear ones need ``hidden``.
    bias : None (the default of the kind: True for linear, ReLU and gpt-oss experts, False for the other
        gated-linear ones, as in Mixtral, Qwen and DeepSeek), True or False.
    alpha, limit : gptoss_swiglu only (None: gpt-oss's 1.702 and 7.0, ``swiglu_alpha``, ``swiglu_limit``).

    Parameters held: linear W (E, D, O), b (E, O); ReLU MLP W1 (E, D, H), b1 (E, H), W2 (E, H, O),
    b2 (E, O); gated-linear W_gate (E, D, H), W_up (E, D, H), W_down (E, H, O), and with bias b_gate,
    b_up (E, H), b_down (E, O).

    Notes
    -----
    MLP expert e on rows X_e: A = X_e W1_e + b1_e, Z = relu(A), Y = Z W2_e + b2_e.
    Backward: dW2_e = Zᵀ dY, db2_e = sum dY, dZ = dY W2_eᵀ, dA = dZ * [A > 0],
    dW1_e = X_eᵀ dA, db1_e = sum dA, dX_e = dA W1_eᵀ.
    Gated-linear expert: G = X W_gate, U = X W_up, A = act(G) ⊙ U, Y = A W_down (MATH.md §10.1).
    Backward: dW_down = Aᵀ dY, dA = dY W_downᵀ, dU = dA ⊙ act(G), dG = dA ⊙ U ⊙ act'(G),
    dW_gate = Xᵀ dG, dW_up = Xᵀ dU, dX = dG W_gateᵀ + dU W_upᵀ; act'(g) = s (1 + g (1 - s)) with
    s = sigmoid(g) for SiLU, Φ(g) + g φ(g) for GELU. gpt-oss (transformers models/gpt_oss/modeling_gpt_oss.py
    ``GptOssExperts._apply_gate``; openai/gpt-oss gpt_oss/torch/model.py ``swiglu``): act(G) = g σ(α g),
    g = min(G, limit), act' = σ(α g) (1 + α g (1 - σ(α g))) [G <= limit]; U enters as clip(U, ±limit) + 1,
    whose derivative is [|U| <= limit] (the clamps pass no gradient outside their range).
    """

    ACTIVATIONS = ("relu", "swiglu", "geglu", "gptoss_swiglu")

    def __init__(self, n_experts, in_features, out_features, hidden=None, seed=None, dtype="float64",
                 activation="relu", bias=None, alpha=None, limit=None):
        super().__init__(dtype)
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        D = self.in_features = check_positive_int(in_features, "in_features")
        O = self.out_features = check_positive_int(out_features, "out_features")
        self.hidden = None if hidden is None else check_positive_int(hidden, "hidden")
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation={activation!r} must be one of {self.ACTIVATIONS}")
        self.glu = activation != "relu"
        if self.glu and self.hidden is None:
            raise ValueError(f"activation={activation!r} needs hidden=H (a gated-linear expert has a hidden layer)")
        if bias not in (None, True, False):
            raise ValueError(f"bias={bias!r} must be None, True or False")
        self.activation = activation
        self.bias = (not self.glu or activation == "gptoss_swiglu") if bias is None else bias
        if activation == "gptoss_swiglu":
            self.alpha = 1.702 if alpha is None else check_real(alpha, "alpha", 0, low_open=True)
            self.limit = 7.0 if limit is None else check_real(limit, "limit", 0, low_open=True)
        elif alpha is not None or limit is not None:
            raise ValueError(f"alpha={alpha!r}, limit={limit!r} belong to activation='gptoss_swiglu', not "
                             f"{activation!r}")
        rng = default_rng(seed)
        if self.hidden is None:
            self.params["W"] = init_weight(rng, D, O, (E, D, O), "glorot", self.dtype)
            if self.bias:
                self.params["b"] = zeros_param((E, O), self.dtype)
        elif not self.glu:
            H = self.hidden
            self.params["W1"] = init_weight(rng, D, H, (E, D, H), "he", self.dtype)
            if self.bias:
                self.params["b1"] = zeros_param((E, H), self.dtype)
            self.params["W2"] = init_weight(rng, H, O, (E, H, O), "glorot", self.dtype)
            if self.bias:
                self.params["b2"] = zeros_param((E, O), self.dtype)
        else:
            H = self.hidden
            for name, fan_in, fan_out, shape in [("gate", D, H, (E, D, H)), ("up", D, H, (E, D, H)),
                                                  ("down", H, O, (E, H, O))]:
                self.params["W_" + name] = init_weight(rng, fan_in, fan_out, shape, "glorot", self.dtype)
                if self.bias:
                    self.params["b_" + name] = zeros_param((E, shape[2]), self.dtype)
        self.zero_grad()

    @property
    def _layers(self):
        """(weight, bias or None) key pairs of the linear / ReLU experts, first layer first."""
        keys = [("W", "b")] if self.hidden is None else [("W1", "b1"), ("W2", "b2")]
        return [(w, b if self.bias else None) for w, b in keys]

    def _add_bias(self, h, key, e=None):
        """h += the bias ``key`` (of expert e, or of every expert along h's first axis); no-op without bias."""
        if key is not None and key in self.params:
            h += self.params[key][e] if e is not None else self.params[key][:, None, :]
        return h

    # dense: every expert on every sample ------------------------------------------------------
    def forward(self, x):
        """x (N, D) -> out (E, N, O), out[e] = E_e(x); or x (E, C, D), a batch per expert (the sparse layer's
        padded dispatch) -> out (E, C, O), out[e] = E_e(x[e])."""
        if self.glu:
            return self._glu_forward(x)
        self.x = x
        h = x
        self.acts = []
        for i, (w, b) in enumerate(self._layers):
            if i:
                self.acts.append(h)  # pre-activation (E, N, H)
                h = F.relu(h)
            h = self._add_bias(h @ self.params[w], b)  # (E, N, ·)
        return h

    def backward(self, dout):
        """dout (E, N, O) -> dx (N, D), summed over the experts; after a forward of per-expert batches x
        (E, C, D): dout (E, C, O) -> dx (E, C, D), each expert's own. Writes every grad."""
        if self.glu:
            return self._glu_backward(dout)
        E, N, _ = dout.shape
        d = dout
        for i, (w, b) in reversed(list(enumerate(self._layers))):
            inp = self.x if i == 0 else F.relu(self.acts[i - 1])
            if b is not None:
                self.grads[b] = d.sum(axis=1)  # (E, ·)
            if i == 0 and self.x.ndim == 3:  # a batch per expert
                self.grads[w] = self.x.transpose(0, 2, 1) @ d  # (E, D, ·)
                return d @ self.params[w].transpose(0, 2, 1)  # (E, C, D)
            if i == 0:
                d_cols = d.transpose(1, 0, 2).reshape(N, E * d.shape[2])  # (N, E*·); no -1: N may be 0
                self.grads[w] = (self.x.T @ d_cols).reshape(self.in_features, E, d.shape[2]).transpose(1, 0, 2)
                W = self.params[w]  # (E, D, H)
                return d_cols @ W.transpose(0, 2, 1).reshape(-1, W.shape[1])
            self.grads[w] = inp.transpose(0, 2, 1) @ d  # (E, H, O)
            d = F.relu_backward(d @ self.params[w].transpose(0, 2, 1), self.acts[i - 1])  # (E, N, H)

    # grouped: expert e runs on rows offsets[e]:offsets[e+1] --------------------------------------
    def forward_grouped(self, x, offsets, rows=None):
        """x (M, D) grouped by expert, offsets: E + 1 ints -> out (M, O).

        rows : None, or (M,) ints; then x is the ungrouped (N, D) input and grouped row g is x[rows[g]]:
            each expert gathers its own rows just before its products use them (the sparse MoE layer's
            dispatch), instead of one gather of all M rows beforehand.

        The experts run in chunks of consecutive experts (one chunk per expert for MLP experts), in order,
        or concurrently with ``NUMPY_MOE_THREADS`` >= 2 (:mod:`numpy_moe.workers`). Each layer writes into one
        preallocated (M, ·) array, block by block (``matmul(out=)``); the hidden layer keeps only relu(A):
        A > 0 exactly where relu(A) > 0, so no separate mask is stored. Gated-linear experts compute G and
        U with one product per expert, x_e [W_gate_e W_up_e] -> (rows, 2H), and their activation once
        over each chunk's rows.
        """
        xp = get_array_module(x)
        self.offsets = [int(o) for o in offsets]
        M = x.shape[0] if rows is None else rows.shape[0]
        if self.offsets[-1] != M:
            raise ValueError(f"offsets end at {self.offsets[-1]} but there are {M} grouped rows")
        if rows is not None:
            check_rows(rows, x.shape[0])  # once, for every expert's gather (take_rows)
        self.blocks = [(e, lo, hi) for e, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:])) if hi > lo]
        self.chunks = self._chunks(M)
        self.x = x if rows is None else xp.empty((M, self.in_features), dtype=x.dtype)
        if self.glu:
            H = self.hidden
            self.W_in = xp.concatenate([self.params["W_gate"], self.params["W_up"]], axis=2)  # (E, D, 2H)
            self.GU = xp.empty((M, 2 * H), dtype=x.dtype)
            self.parts = [None] * len(self.chunks)  # per chunk: act, act', up, up', A over its rows
            self.hs = [self.x, xp.empty((M, self.out_features), dtype=x.dtype)]
        else:
            self.hs = [self.x] + [xp.empty((M, self.params[w].shape[2]), dtype=x.dtype) for w, _ in self._layers]
        if not self.glu and len(self._layers) > 1 and self.blocks:
            # NumPy's maximum is SIMD against an array of the same shape, scalar-slow against 0; the zeros are
            # only read, so one array serves every forward that fits (a fresh one cost ~0.1 ms a step)
            longest, z = max(hi - lo for _, lo, hi in self.blocks), getattr(self, "_zeros", None)
            if (z is None or get_array_module(z) is not xp or z.dtype != x.dtype or z.shape[0] < longest
                    or z.shape[1] != self.hidden):
                self._zeros = xp.zeros((longest, self.hidden), dtype=x.dtype)
        run = self._glu_forward_chunk if self.glu else self._mlp_forward_chunk
        self._run_chunks(run, x, rows)
        return self.hs[-1]

    def backward_grouped(self, dout, rows=None, weight=None):
        """dout (M, O) -> dx (M, D); experts with no rows get exactly zero gradient.

        rows, weight : None, or (M,) ints and (M, 1) floats: then dout is the ungrouped (N, O) gradient of
            a combine ``y[rows[g]] += weight[g] out[g]``, each expert gathers its own rows of it, and the
            return value is (dx, dweight) with dweight (M,) = <dout[rows[g]], out[g]>, the gradient of
            ``weight``.
        """
        xp = get_array_module(dout)
        for key, p in self.params.items():
            self.grads[key] = xp.empty_like(p)
        for e, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            if hi == lo:
                for g in self.grads.values():
                    g[e] = 0
        M = self.x.shape[0]
        self.dweight = None if rows is None else xp.empty(M, dtype=dout.dtype)
        self._weight = weight
        # dbuf[i]: gradient w.r.t. the input of layer i (dbuf[0] = dx)
        self.dbuf = [xp.empty_like(self.x)] + ([] if self.glu else [xp.empty_like(h) for h in self.hs[1:-1]])
        self._ones = xp.ones(M, dtype=dout.dtype)
        run = self._glu_backward_chunk if self.glu else self._mlp_backward_chunk
        self._run_chunks(run, dout, rows)
        dx, self._weight = self.dbuf[0], None
        return dx if rows is None else (dx, self.dweight)

    def _chunks(self, M):
        """The non-empty blocks split into runs of consecutive experts: one expert each for MLP experts;
        about M / (2 T) rows each for gated-linear ones (T threads), whose element-wise work runs per chunk."""
        if not self.glu:
            return [[b] for b in self.blocks]
        target, chunks = max(1, -(-M // (2 * n_threads()))), []
        for b in self.blocks:
            if chunks and sum(hi - lo for _, lo, hi in chunks[-1]) < target:
                chunks[-1].append(b)
            else:
                chunks.append([b])
        return chunks

    def _run_chunks(self, run, source, rows):
        """run(c, chunk, source, rows) for every chunk, concurrently (workers.run_blocks)."""
        work = [lambda c=c, chunk=chunk: run(c, chunk, source, rows) for c, chunk in enumerate(self.chunks)]
        width = max(self.in_features, self.out_features, self.hidden or 0)
        run_blocks(work, [(chunk[-1][2] - chunk[0][1]) * width for chunk in self.chunks], like=source,
                   serial_below=SERIAL_BELOW)

    def _gather(self, source, rows, lo, hi, out=None):
        """Rows lo:hi of the grouped input: source[lo:hi], or source[rows[lo:hi]] (into ``out``)."""
        if rows is None:
            return source[lo:hi]
        return take_rows(source, rows[lo:hi], out=out)

    def _output_grad(self, dout, rows, lo, hi):
        """The experts' output gradient on rows lo:hi; with rows, gathered and scaled, and dweight filled."""
        if rows is None:
            return dout[lo:hi]
        xp = get_array_module(dout)
        d = xp.take(dout, rows[lo:hi], axis=0)
        self.dweight[lo:hi] = xp.einsum("go,go->g", d, self.hs[-1][lo:hi])
        d *= self._weight[lo:hi]
        return d

    def _mlp_forward_chunk(self, c, chunk, x, rows):
        xp, n_layers = get_array_module(x), len(self._layers)
        for e, lo, hi in chunk:
            if rows is not None:
                self._gather(x, rows, lo, hi, out=self.x[lo:hi])
            for i, (w, b) in enumerate(self._layers):
                h = self.hs[i + 1][lo:hi]
                xp.matmul(self.hs[i][lo:hi], self.params[w][e], out=h)
                self._add_bias(h, b, e)
                if i < n_layers - 1:
                    xp.maximum(h, self._zeros[: hi - lo], out=h)  # Z = relu(A) in place

    def _mlp_backward_chunk(self, c, chunk, dout, rows):
        xp = get_array_module(dout)
        for e, lo, hi in chunk:
            d = self._output_grad(dout, rows, lo, hi)
            for i, (w, b) in reversed(list(enumerate(self._layers))):
                inp = self.hs[i][lo:hi]
                xp.matmul(inp.T, d, out=self.grads[w][e])  # (·, ·)
                if b is not None:
                    xp.matmul(self._ones[: hi - lo], d, out=self.grads[b][e])  # sum over rows as a GEMV
                dinp = self.dbuf[i][lo:hi]
                xp.matmul(d, self.params[w][e].T, out=dinp)
                if i:
                    dinp *= inp > 0  # relu backward: inp = relu(A) > 0 exactly where A > 0
                d = dinp

    # gated-linear experts ------------------------------------------------------------------------
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
            g["b_down"], g["b_gate"], g["b_up"] = dout.sum(axis=1), dG.sum(axis=1), dU.sum(axis=1)
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
                g["b_down"][e] = d.sum(axis=0)
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
                g["b_gate"][e], g["b_up"][e] = d[:, :H].sum(axis=0), d[:, H:].sum(axis=0)


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
        self.gated = bool(gated)
        if self.gated:
            self.params["w"] = init_weight(rng, in_features, 1, (in_features, 1), "glorot", self.dtype)
        self.zero_grad()

    def forward(self, x):
        """x (N, D) -> (N, O), of the expert's dtype."""
        x = self.x = check_input(x, self.in_features, self.dtype)
        self.y = self.mlp.forward(x)[0]  # (N, O)
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
