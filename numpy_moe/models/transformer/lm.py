"""A tiny GPT-style language model whose feed-forward sublayers can be MoE layers (MATH.md §15).

Token embedding + learned positions -> n_layers pre-LN blocks (causal attention, then a dense or MoE
feed-forward) -> a final LayerNorm -> logits over the vocabulary, with the output projection tied to
the token embedding (GPT-2, Radford et al. 2019; Press & Wolf 2017) or a separate Linear. Trained on
next-token cross-entropy averaged over the real (non-padding) tokens
(:func:`numpy_moe.functional.token_cross_entropy`). Every backward is written by hand and the whole
model is gradient-checked in float64 with its routing held fixed (tests/test_transformer.py).

Letters: B sequences, T positions, D model width, V vocabulary size, E experts.
"""
import copy
import numbers

from ... import functional as F
from ...backend import asarray, default_rng
from ...image_layers import LayerNorm
from ...layers import Linear, Module, check_budget
from ...moe import MoE
from ...validation import check_bool, check_positive_int
from .blocks import DenseFeedForward, MoEFeedForward, TransformerBlock
from .embedding import Embedding, PositionEmbedding, check_tokens


class TransformerLM(Module):
    """Causal Transformer language model with dense or MoE feed-forward sublayers.

    Parameters
    ----------
    vocab_size : V. d_model : D. n_heads : heads per attention (must divide D). n_layers : blocks.
    max_len : the longest input sequence T. hidden : hidden width of a dense feed-forward sublayer and
        the default hidden width of each MLP expert. activation : of the dense sublayers, "gelu" (GPT-2)
        or "relu" (as the default MLP experts).
    moe : None (every sublayer dense); a dict of :class:`numpy_moe.moe.MoE` keyword arguments
        (``n_experts``, ``top_k``, ``gate``, ``noise``, ``router``, ``capacity_factor``, ``balance``, ...;
        ``hidden`` defaults to ``hidden``), which builds ``MoE(D, D, **moe)`` in each block of
        ``moe_layers`` (Module values such as balance-loss objects are copied per block); or a list
        of n_layers entries, each an MoE of width D (any gate or expert bank, composed) or None for a
        dense sublayer.
    moe_layers : with a dict ``moe``, the indices of the MoE blocks (default: all).
    tied : True: logits = h Wᵀ with W the token embedding (no output bias); False: a Linear(D, V).
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: tokens (B, T) ints, mask (B, T) bool or None -> logits (B, T, V).
    embed.W (V, D), pos.P (max_len, D), blocks.i.*, norm.*, [head.W (D, V), head.b (V,)].

    Notes
    -----
    h0 = W[tokens] + P[:T]; h_i = block_i(h_{i-1}); logits = LN(h_n) Wᵀ (tied).
    Backward (tied): dW = scatter-add of dh0 over the ids (the embedding's own gradient) plus
    dlogitsᵀ LN(h_n) reshaped to (B T, ·) (the projection's); untied, the head is a Linear.
    ``mask`` marks the real tokens; it is passed to every MoE sublayer (padding out of every balance
    statistic). Attention needs no mask for right padding (a real token never sees a later pad).
    """

    def __init__(self, vocab_size, d_model=32, n_heads=2, n_layers=2, max_len=32, hidden=64, activation="gelu",
                 moe=None, moe_layers=None, tied=True, seed=None, dtype="float64"):
        super().__init__(dtype)
        V = self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        D = self.d_model = check_positive_int(d_model, "d_model")
        L = check_positive_int(n_layers, "n_layers")
        self.max_len = check_positive_int(max_len, "max_len")
        hidden = check_positive_int(hidden, "hidden")
        # every block holds at least its two LayerNorms and its attention's qkv (D, 3D) and proj (D, D) with
        # biases: refuse a depth no memory holds before the lists and the loop over blocks
        block = 4 * D * D + 8 * D
        check_budget((L, block), self.dtype, what=f"n_layers={L} blocks of at least {block} parameters each")
        rng = default_rng(seed)
        self.embed = Embedding(V, D, seed=rng, dtype=dtype)
        self.pos = PositionEmbedding(self.max_len, D, seed=rng, dtype=dtype)
        layers = self._moe_layers(moe, moe_layers, L, D, hidden, rng, dtype)
        self.blocks = []
        for layer in layers:
            ffn = (DenseFeedForward(D, hidden, activation, seed=rng, dtype=dtype) if layer is None
                   else MoEFeedForward(layer))
            self.blocks.append(TransformerBlock(D, n_heads, ffn, seed=rng, dtype=dtype))
        self.norm = LayerNorm(D, dtype=dtype)
        self.tied = check_bool(tied, "tied")
        self.head = None if self.tied else Linear(D, V, seed=rng, dtype=dtype)

    @staticmethod
    def _moe_layers(moe, moe_layers, L, D, hidden, rng, dtype):
        """The MoE layer (or None for dense) of each of the L blocks."""
        if moe is None:
            if moe_layers is not None:
                raise ValueError(f"moe_layers={moe_layers!r} needs moe= (a dict of MoE arguments)")
            return [None] * L
        if isinstance(moe, dict):
            where = range(L) if moe_layers is None else list(moe_layers)
            if any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= i < L
                   for i in where):  # int(1.7) would silently pick block 1
                raise ValueError(f"moe_layers={list(moe_layers)} must be block indices (ints) in [0, {L - 1}]")
            kwargs = moe if "experts" in moe else {"hidden": hidden} | moe  # an ExpertBank carries its own
            return [MoE(D, D, **copy.deepcopy(kwargs), seed=rng, dtype=dtype) if i in where else None
                    for i in range(L)]
        if moe_layers is not None:
            raise ValueError("moe_layers is for a dict moe; a list moe says per block which blocks are MoE")
        if not isinstance(moe, (list, tuple)) or len(moe) != L or any(
                m is not None and not isinstance(m, MoE) for m in moe):
            raise ValueError(f"moe={moe!r} must be None, a dict of MoE arguments or a list of n_layers={L} "
                             "entries, each an MoE or None")
        layers = [m for m in moe if m is not None]
        if len({id(m) for m in layers}) < len(layers):
            raise ValueError("moe lists the same MoE layer twice; each block needs its own")
        return list(moe)

    def forward(self, tokens, mask=None):
        tokens = check_tokens(tokens, self.vocab_size)
        B, T = tokens.shape
        if T == 0:
            raise ValueError(f"tokens has T=0 positions (shape {tuple(tokens.shape)}); expected at least 1")
        if T > self.max_len:
            raise ValueError(f"tokens has T={T} positions; the model takes at most max_len={self.max_len}")
        if mask is not None:
            mask = asarray(mask)
            if mask.dtype != bool or mask.shape != (B, T):
                raise ValueError(f"mask has dtype {mask.dtype} and shape {tuple(mask.shape)}; expected bool of "
                                 f"shape {(B, T)}, True for the real tokens")
        h = self.pos.forward(self.embed.forward(tokens))  # (B, T, D)
        for block in self.blocks:
            h = block.forward(h, mask=mask, tokens=tokens)
        self.h = self.norm.forward(h)  # (B, T, D)
        if self.tied:
            return self.h @ self.embed.params["W"].T  # (B, T, V)
        return self.head.forward(self.h.reshape(B * T, self.d_model)).reshape(B, T, self.vocab_size)

    def backward(self, dlogits):
        B, T, V = dlogits.shape
        D = self.d_model
        if self.tied:
            dh = dlogits @ self.embed.params["W"]  # (B, T, D)
            dW_head = dlogits.reshape(B * T, V).T @ self.h.reshape(B * T, D)  # (V, D)
        else:
            dh = self.head.backward(dlogits.reshape(B * T, V)).reshape(B, T, D)
        dh = self.norm.backward(dh)
        for block in reversed(self.blocks):
            dh = block.backward(dh)
        self.embed.backward(self.pos.backward(dh))
        if self.tied:
            self.embed.grads["W"] = self.embed.grads["W"] + dW_head
        return None

    def loss_and_grads(self, tokens, targets, mask=None):
        """Forward, mean cross-entropy over the counted targets, backward; returns the cross-entropy.

        tokens, targets : (B, T) ids (targets[b, t] is the token after tokens[b, t]). mask : (B, T) bool,
        True where the target counts, or None. ``self.aux_loss`` holds the balance losses (already in
        the gradients).
        """
        logits = self.forward(tokens, mask)
        targets = check_tokens(targets, self.vocab_size, "targets")
        if targets.shape != logits.shape[:2]:
            raise ValueError(f"targets has shape {tuple(targets.shape)}; expected {logits.shape[:2]}, as tokens")
        mask = None if mask is None else asarray(mask)
        loss = F.token_cross_entropy(logits, targets, mask)
        self.backward(F.token_cross_entropy_backward(logits, targets, mask))
        return loss

    def moe_layers(self):
        """The MoE layers of the model, in block order (empty for a dense model)."""
        return [b.ffn.moe for b in self.blocks if isinstance(b.ffn, MoEFeedForward)]
