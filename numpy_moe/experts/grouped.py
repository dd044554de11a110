"""The experts' grouped pass: each expert on its own rows only, as the sparse MoE layer dispatches them.

``forward_grouped(x, offsets) -> (M, O)`` / ``backward_grouped(dout) -> dx``: the rows of ``x`` are grouped
by expert (rows ``offsets[e]:offsets[e+1]`` go to expert e). An expert with no rows gets exactly zero
gradient. The experts run in chunks of consecutive experts, in order or on the CPU's threads
(:mod:`numpy_moe.workers`); the linear and ReLU experts' chunk passes are here, the gated-linear ones'
in :mod:`numpy_moe.experts.gated`. :class:`GroupedPasses` is a base class of
:class:`numpy_moe.experts.ExpertBank`, not a module of its own: it reads the bank's parameters.
"""
from ..backend import check_rows, get_array_module, sum_rows, take_rows
from ..validation import to_dtype
from ..workers import n_threads, run_blocks

SERIAL_BELOW = 1 << 16  # grouped rows x widest layer below which the experts run in order, not on threads
TWO_LEVEL_FROM = 8192  # an expert's rows from which its bias gradient is backend.sum_rows, not one GEMV


class GroupedPasses:
    """ExpertBank's grouped forward/backward pair and the linear / ReLU-MLP experts' chunks of it."""

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
        x = to_dtype(x, self.dtype)  # float64 x into float32 experts: float32 outputs and grads
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
                if b is not None and hi - lo < TWO_LEVEL_FROM:
                    xp.matmul(self._ones[: hi - lo], d, out=self.grads[b][e])  # sum over rows as a GEMV
                elif b is not None:  # one GEMV adds the rows one after the other: its error grows with them
                    sum_rows(d, out=self.grads[b][e])
                dinp = self.dbuf[i][lo:hi]
                xp.matmul(d, self.params[w][e].T, out=dinp)
                if i:
                    dinp *= inp > 0  # relu backward: inp = relu(A) > 0 exactly where A > 0
                d = dinp
