"""ExpertBank: E experts of identical shape with stacked weights (MATH.md §1).

Linear experts ``E_e(x) = x W_e + b_e`` or one-hidden-layer ReLU MLP experts
``E_e(x) = relu(x W1_e + b1_e) W2_e + b2_e``. The weights of all experts are stored stacked,
W1 of shape (E, D, H), so the dense case (every expert on every sample, as seeds 000-002 do) is one
batched matmul per layer; there is no Python list of expert objects on the hot path.

Two forward/backward pairs serve the two ways an MoE layer uses its experts:

- ``forward(x) -> (E, N, O)`` / ``backward(dout) -> dx``: every expert on every sample (dense MoE).
- ``forward_grouped(x, offsets) -> (M, O)`` / ``backward_grouped(dout) -> dx``: rows of ``x`` are grouped
  by expert (rows ``offsets[e]:offsets[e+1]`` go to expert e), each expert runs only on its own rows;
  this is what sparse dispatch calls. An expert with no rows gets exactly zero gradient.
"""
from . import functional as F
from .backend import default_rng, get_array_module
from .layers import Module, init_weight, zeros_param
from .validation import check_positive_int


class ExpertBank(Module):
    """E linear (``hidden=None``) or ReLU-MLP experts with stacked weights.

    Parameters
    ----------
    n_experts : E. in_features : D. out_features : O. hidden : H, or None for linear experts.
    seed : int or numpy Generator. dtype : float32 or float64.

    Parameters held: linear W (E, D, O), b (E, O); MLP W1 (E, D, H), b1 (E, H), W2 (E, H, O), b2 (E, O).

    Notes
    -----
    MLP expert e on rows X_e: A = X_e W1_e + b1_e, Z = relu(A), Y = Z W2_e + b2_e.
    Backward: dW2_e = Zᵀ dY, db2_e = sum dY, dZ = dY W2_eᵀ, dA = dZ * [A > 0],
    dW1_e = X_eᵀ dA, db1_e = sum dA, dX_e = dA W1_eᵀ.
    """

    def __init__(self, n_experts, in_features, out_features, hidden=None, seed=None, dtype="float64"):
        super().__init__(dtype)
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        D = self.in_features = check_positive_int(in_features, "in_features")
        O = self.out_features = check_positive_int(out_features, "out_features")
        self.hidden = None if hidden is None else check_positive_int(hidden, "hidden")
        rng = default_rng(seed)
        if self.hidden is None:
            self.params["W"] = init_weight(rng, D, O, (E, D, O), "glorot", self.dtype)
            self.params["b"] = zeros_param((E, O), self.dtype)
        else:
            H = self.hidden
            self.params["W1"] = init_weight(rng, D, H, (E, D, H), "he", self.dtype)
            self.params["b1"] = zeros_param((E, H), self.dtype)
            self.params["W2"] = init_weight(rng, H, O, (E, H, O), "glorot", self.dtype)
            self.params["b2"] = zeros_param((E, O), self.dtype)
        self.zero_grad()

    @property
    def _layers(self):
        """(weight, bias) key pairs, first layer first."""
        return [("W", "b")] if self.hidden is None else [("W1", "b1"), ("W2", "b2")]

    # dense: every expert on every sample ------------------------------------------------------
    def forward(self, x):
        """x (N, D) -> out (E, N, O), out[e] = E_e(x)."""
        self.x = x
        h = x
        self.acts = []
        for i, (w, b) in enumerate(self._layers):
            if i:
                self.acts.append(h)  # pre-activation (E, N, H)
                h = F.relu(h)
            h = h @ self.params[w] + self.params[b][:, None, :]  # (E, N, ·)
        return h

    def backward(self, dout):
        """dout (E, N, O) -> dx (N, D); writes every grad."""
        E, N, _ = dout.shape
        d = dout
        for i, (w, b) in reversed(list(enumerate(self._layers))):
            inp = self.x if i == 0 else F.relu(self.acts[i - 1])
            self.grads[b] = d.sum(axis=1)  # (E, ·)
            if i == 0:
                self.grads[w] = self.x.T @ d.transpose(1, 0, 2).reshape(N, -1)  # (D, E*·)
                self.grads[w] = self.grads[w].reshape(self.in_features, E, -1).transpose(1, 0, 2)
                W = self.params[w]  # (E, D, H)
                return d.transpose(1, 0, 2).reshape(N, -1) @ W.transpose(0, 2, 1).reshape(-1, W.shape[1])
            self.grads[w] = inp.transpose(0, 2, 1) @ d  # (E, H, O)
            d = F.relu_backward(d @ self.params[w].transpose(0, 2, 1), self.acts[i - 1])  # (E, N, H)

    # grouped: expert e runs on rows offsets[e]:offsets[e+1] --------------------------------------
    def forward_grouped(self, x, offsets):
        """x (M, D) grouped by expert, offsets: E + 1 ints -> out (M, O).

        Each layer writes into one preallocated (M, ·) array, block by block (``matmul(out=)``), and the
        hidden layer keeps only relu(A): A > 0 exactly where relu(A) > 0, so no separate mask is stored.
        """
        xp = get_array_module(x)
        self.offsets = [int(o) for o in offsets]
        M, n_layers = x.shape[0], len(self._layers)
        self.hs = [x] + [xp.empty((M, self.params[w].shape[2]), dtype=x.dtype) for w, _ in self._layers]
        blocks = list(zip(self.offsets[:-1], self.offsets[1:]))
        if n_layers > 1:  # NumPy's maximum is SIMD against an array of the same shape, scalar-slow against 0
            zeros = xp.zeros((max(hi - lo for lo, hi in blocks), self.hidden), dtype=x.dtype)
        for e, (lo, hi) in enumerate(blocks):
            if hi == lo:
                continue
            for i, (w, b) in enumerate(self._layers):
                h = self.hs[i + 1][lo:hi]
                xp.matmul(self.hs[i][lo:hi], self.params[w][e], out=h)
                h += self.params[b][e]
                if i < n_layers - 1:
                    xp.maximum(h, zeros[: hi - lo], out=h)  # Z = relu(A) in place
        return self.hs[-1]

    def backward_grouped(self, dout):
        """dout (M, O) -> dx (M, D); experts with no rows get exactly zero gradient."""
        xp = get_array_module(dout)
        for key, p in self.params.items():
            self.grads[key] = xp.empty_like(p)
        # dbuf[i]: gradient w.r.t. the input of layer i (dbuf[0] = dx)
        dbuf = [xp.empty_like(h) for h in self.hs[:-1]]
        ones = xp.ones(dout.shape[0], dtype=dout.dtype)
        for e, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            if hi == lo:
                for g in self.grads.values():
                    g[e] = 0
                continue
            d = dout[lo:hi]
            for i, (w, b) in reversed(list(enumerate(self._layers))):
                inp = self.hs[i][lo:hi]
                xp.matmul(inp.T, d, out=self.grads[w][e])  # (·, ·)
                xp.matmul(ones[: hi - lo], d, out=self.grads[b][e])  # sum over rows as a GEMV (threaded)
                dinp = dbuf[i][lo:hi]
                xp.matmul(d, self.params[w][e].T, out=dinp)
                if i:
                    dinp *= inp > 0  # relu backward: inp = relu(A) > 0 exactly where A > 0
                d = dinp
        return dbuf[0]
