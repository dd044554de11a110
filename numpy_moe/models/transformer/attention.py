"""Causal multi-head self-attention (Vaswani et al. 2017, §3.2; the decoder's masked attention as in
GPT-2, Radford et al. 2019), forward and backward by hand (MATH.md §15.2).

Letters: B sequences, T positions, D model width, H heads (here H counts heads, not hidden units), Dh =
D / H the width of a head. Position t attends to positions s <= t only, so no token sees the future.
Padding goes at the end of a sequence (right padding): a real token never attends to a later pad, so
no key mask is needed; what the pads compute is ignored by the loss.
"""
from ... import functional as F
from ...backend import default_rng, get_array_module
from ...layers import Linear, Module
from ...validation import check_positive_int
from .embedding import check_states


class CausalSelfAttention(Module):
    """Multi-head scaled dot-product self-attention with a causal mask.

    Parameters
    ----------
    d_model : D. n_heads : H, which must divide D. seed : int or numpy Generator. dtype : float32 or
    float64.

    Shapes: x (B, T, D) -> y (B, T, D). qkv.W (D, 3D), qkv.b (3D,), proj.W (D, D), proj.b (D,).

    Notes
    -----
    [Q K V] = x W_qkv + b_qkv, split into H heads of width Dh; per head
    S = Q Kᵀ / sqrt(Dh) (T, T) with S[t, s] = -inf for s > t; A = softmax over s of S;
    Z = A V (T, Dh); the heads side by side (B, T, D) go through y = Z W_o + b_o.
    Backward, per head: dA = dZ Vᵀ, dV = Aᵀ dZ, dS = A ⊙ (dA - rowsum(dA ⊙ A)) (zero where masked,
    since A is), dQ = dS K / sqrt(Dh), dK = dSᵀ Q / sqrt(Dh); then the two Linear backwards.
    """

    def __init__(self, d_model, n_heads, seed=None, dtype="float64"):
        super().__init__(dtype)
        D = self.d_model = check_positive_int(d_model, "d_model")
        H = self.n_heads = check_positive_int(n_heads, "n_heads")
        if D % H:
            raise ValueError(f"n_heads={H} must divide d_model={D}")
        rng = default_rng(seed)
        self.qkv = Linear(D, 3 * D, seed=rng, dtype=dtype)
        self.proj = Linear(D, D, seed=rng, dtype=dtype)

    def forward(self, x):
        x = check_states(x, self.d_model, self.dtype)
        xp = get_array_module(x)
        B, T, D = x.shape
        if T == 0:  # a softmax over no position is undefined
            raise ValueError(f"x has T=0 positions (shape {tuple(x.shape)}); expected at least 1")
        H = self.n_heads
        Dh = D // H
        qkv = self.qkv.forward(x.reshape(B * T, D)).reshape(B, T, 3, H, Dh).transpose(2, 0, 3, 1, 4)
        self.q, self.k, self.v = qkv[0], qkv[1], qkv[2]  # each (B, H, T, Dh)
        self.scale = 1.0 / Dh ** 0.5
        future = xp.triu(xp.ones((T, T), dtype=bool), k=1)  # (T, T), True where s > t
        S = xp.where(future, -xp.inf, (self.q @ self.k.transpose(0, 1, 3, 2)) * self.scale)  # (B, H, T, T)
        self.A = F.softmax(S)  # (B, H, T, T); the diagonal is never masked, so every row has a finite max
        Z = self.A @ self.v  # (B, H, T, Dh)
        return self.proj.forward(Z.transpose(0, 2, 1, 3).reshape(B * T, D)).reshape(B, T, D)

    def backward(self, dy):
        xp = get_array_module(dy)
        B, T, D = dy.shape
        H = self.n_heads
        dZ = self.proj.backward(dy.reshape(B * T, D)).reshape(B, T, H, D // H).transpose(0, 2, 1, 3)
        dA = dZ @ self.v.transpose(0, 1, 3, 2)  # (B, H, T, T)
        dv = self.A.transpose(0, 1, 3, 2) @ dZ  # (B, H, T, Dh)
        dS = F.softmax_backward(dA, self.A) * self.scale  # the 1/sqrt(Dh) of S folded in
        dq = dS @ self.k  # (B, H, T, Dh)
        dk = dS.transpose(0, 1, 3, 2) @ self.q
        dqkv = xp.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B * T, 3 * D)  # (B T, 3D)
        return self.qkv.backward(dqkv).reshape(B, T, D)

    @property
    def attention(self):
        """The attention weights A (B, H, T, T) of the last forward."""
        return self.A
