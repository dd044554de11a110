"""The feed-forward sublayers (dense, or any MoE layer of the package) and the pre-LN Transformer block.

Letters: B sequences, T positions, D model width. A feed-forward sublayer acts on each token alone, so
it runs on the B T tokens flattened to rows (B T, D): the dense one is GPT-2's MLP, Linear(D, H) - GELU -
Linear(H, D) (Radford et al. 2019); the MoE one hands the rows to a :class:`numpy_moe.moe.MoE`, as the
Switch Transformer replaces the FFN with a routed layer (Fedus et al. 2022, §2; Shazeer et al. 2017
put the MoE between LSTM layers; Lepikhin et al. 2021 in every other Transformer block). The block is
pre-LN (GPT-2, §2.3): x = x + attn(LN(x)); x = x + ffn(LN(x)).
"""
from ...backend import default_rng
from ...gates import HashGate
from ...image_layers import GELU, LayerNorm
from ...layers import Linear, Module, ReLU, Sequential
from ...moe import MoE
from ...validation import check_positive_int, to_dtype
from .attention import CausalSelfAttention
from .embedding import check_states


class DenseFeedForward(Module):
    """GPT-2's MLP on every token: Linear(D, H) - GELU - Linear(H, D) (or ReLU, as the MLP experts).

    Parameters
    ----------
    d_model : D. hidden : H (GPT-2: 4 D). activation : "gelu" (GPT-2's, but exact, x Φ(x): GPT-2 computes the
        tanh approximation, transformers' "gelu_new", within 4.7e-4 of it; MATH.md §14.4) or "relu" (the
        activation of an ExpertBank's MLP experts, for a dense baseline that differs from them in width only).
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (B, T, D) -> y (B, T, D); net.layers.0 W (D, H), net.layers.2 W (H, D).

    Notes
    -----
    Rows r = x reshaped to (B T, D), y = act(r W1 + b1) W2 + b2; the backward is the Sequential's on
    the same rows. ``mask`` and ``tokens`` are accepted for the MoE sublayer's sake and ignored.
    """

    def __init__(self, d_model, hidden, activation="gelu", seed=None, dtype="float64"):
        super().__init__(dtype)
        D = self.d_model = check_positive_int(d_model, "d_model")
        H = check_positive_int(hidden, "hidden")
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation={activation!r} must be 'gelu' or 'relu'")
        rng = default_rng(seed)
        act = GELU(dtype) if activation == "gelu" else ReLU(dtype)
        self.net = Sequential(Linear(D, H, init="he", seed=rng, dtype=dtype), act, Linear(H, D, seed=rng, dtype=dtype))

    def forward(self, x, mask=None, tokens=None):
        x = check_states(x, self.d_model, self.dtype)
        B, T, D = x.shape
        return self.net.forward(x.reshape(B * T, D)).reshape(B, T, D)

    def backward(self, dy):
        B, T, D = dy.shape
        return self.net.backward(dy.reshape(B * T, D)).reshape(B, T, D)


class MoEFeedForward(Module):
    """Any :class:`numpy_moe.moe.MoE` layer (every gate, expert type and balance loss it takes) on tokens.

    Parameters
    ----------
    moe : an MoE with in_features = out_features = D.

    Shapes: x (B, T, D) -> y (B, T, D); mask (B, T) bool, True for real tokens; tokens (B, T) ids.

    Notes
    -----
    y = MoE(x reshaped to (B T, D)) reshaped back; the routing is per token (one row per token).
    Passed to the layer: ``mask`` flattened, so padding counts in no balance statistic and no
    diagnostic; ``seq_lengths = [T] * B``, so a SequenceBalance loss balances each sequence
    (DeepSeek-V3's sequence-wise loss; the mask shortens each sequence to its real tokens); and, for a
    HashGate, the token ids as its keys (Roller et al. 2021). ``aux_loss`` is the layer's; the backward
    is the layer's on the same rows, balance gradients included.
    """

    def __init__(self, moe):
        if not isinstance(moe, MoE):
            raise TypeError(f"moe={moe!r} must be a numpy_moe.moe.MoE")
        if moe.in_features != moe.out_features:
            raise ValueError(f"moe maps {moe.in_features} -> {moe.out_features} features; a feed-forward sublayer "
                             "needs out_features = in_features = d_model")
        super().__init__(moe.dtype)
        self.moe = moe
        self.d_model = moe.in_features

    def forward(self, x, mask=None, tokens=None):
        x = check_states(x, self.d_model, self.dtype)
        B, T, D = x.shape
        keys = None if tokens is None or not isinstance(self.moe.gate, HashGate) else tokens.reshape(-1)
        if isinstance(self.moe.gate, HashGate) and keys is None:
            raise ValueError("a HashGate routes on token ids: pass tokens=(B, T) ids")
        y = self.moe.forward(x.reshape(B * T, D), mask=None if mask is None else mask.reshape(-1),
                             seq_lengths=[T] * B, keys=keys)
        return y.reshape(B, T, D)

    def backward(self, dy):
        B, T, D = dy.shape
        return self.moe.backward(dy.reshape(B * T, D)).reshape(B, T, D)


class TransformerBlock(Module):
    """Pre-LN Transformer block: causal self-attention, then a feed-forward sublayer, each residual.

    Parameters
    ----------
    d_model : D. n_heads : H. ffn : a DenseFeedForward or MoEFeedForward of width D.
    seed : int or numpy Generator (the attention's weights). dtype : float32 or float64.

    Shapes: x (B, T, D) -> y (B, T, D); mask (B, T) bool and tokens (B, T) go to the ffn.

    Notes
    -----
    u = x + attn(LN1(x)), y = u + ffn(LN2(u)). Backward: du = dy + LN2ᵀ(ffnᵀ(dy)),
    dx = du + LN1ᵀ(attnᵀ(du)), each ᵀ the sublayer's backward.
    """

    def __init__(self, d_model, n_heads, ffn, seed=None, dtype="float64"):
        super().__init__(dtype)
        D = check_positive_int(d_model, "d_model")
        if not isinstance(ffn, (DenseFeedForward, MoEFeedForward)) or ffn.d_model != D:
            raise ValueError(f"ffn={ffn!r} must be a DenseFeedForward or MoEFeedForward with d_model={D}")
        self.norm1 = LayerNorm(D, dtype=dtype)
        self.attn = CausalSelfAttention(D, n_heads, seed=seed, dtype=dtype)
        self.norm2 = LayerNorm(D, dtype=dtype)
        self.ffn = ffn

    def forward(self, x, mask=None, tokens=None):
        x = to_dtype(x, self.dtype)  # the residual sum of a float32 block stays float32 for float64 x
        u = x + self.attn.forward(self.norm1.forward(x))
        return u + self.ffn.forward(self.norm2.forward(u), mask=mask, tokens=tokens)

    def backward(self, dy):
        du = dy + self.norm2.backward(self.ffn.backward(dy))
        return du + self.norm1.backward(self.attn.backward(du))
