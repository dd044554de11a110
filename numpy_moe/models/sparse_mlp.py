"""Sparse-MLP (post 004): an MLP-Mixer whose last blocks mix with mixture-of-experts layers (MATH.md §14).

Sparse-MLP: Lou, Xue, Zheng and You 2021, "Sparse-MLP: A Fully-MLP Architecture with Conditional
Computation", arXiv:2109.02008. MLP-Mixer: Tolstikhin et al. 2021, "MLP-Mixer: An all-MLP Architecture
for Vision", arXiv:2105.01601.

MLP-Mixer cuts an image into S patches, embeds each as a token of C channels and
stacks blocks of two residual sublayers on tokens x of shape (N, S, C):

    x = x + TokenMix(LayerNorm(x))      mixes across the S tokens, one row per (sample, channel)
    x = x + ChannelMix(LayerNorm(x))    mixes across the C channels, one row per (sample, token)

then LayerNorm, mean over tokens and a linear classifier. A dense block mixes with GELU MLPs. A sparse
block (Sparse-MLP) replaces both with MoE layers: MoE_s mixes tokens and MoE_c channels. Around MoE_s sit
the re-represent layers: R_in projects channels C -> C1 and then tokens S -> S1, so that MoE_s routes
N C1 rows of length S1 (Sparse-MLP uses S1 = 2S, C1 = C / 2: half the rows, twice the width, which
balances the cost of routing against the cost of the experts), and R_out projects back S1 -> S, C1 -> C.
"""
import numbers

from ..backend import default_rng, get_array_module
from ..image_layers import GELU, Conv2d, LayerNorm, check_images
from ..layers import Linear, Module, Sequential, check_budget
from ..moe import MoE
from ..validation import check_positive_int, to_dtype


def feed_forward(D, H, seed, dtype):
    """The Mixer MLP: Linear(D, H) - GELU - Linear(H, D); rows (M, D) -> (M, D)."""
    rng = default_rng(seed)
    return Sequential(Linear(D, H, seed=rng, dtype=dtype), GELU(dtype), Linear(H, D, seed=rng, dtype=dtype))


class TokenMixing(Module):
    """Apply ``mixer`` to each (sample, channel) row of token values: (N, S, C) -> (N, S, C).

    Notes
    -----
    Rows r = x transposed to (N, C, S) and reshaped to (N C, S); y = mixer(r) transposed back.
    The backward applies the same reshapes to dy in reverse.
    """

    def __init__(self, mixer):
        super().__init__(mixer.dtype)
        self.mixer = mixer

    def forward(self, x):
        N, S, C = x.shape
        y = self.mixer.forward(x.transpose(0, 2, 1).reshape(N * C, S))  # (N C, S)
        return y.reshape(N, C, S).transpose(0, 2, 1)  # (N, S, C)

    def backward(self, dy):
        N, S, C = dy.shape
        dx = self.mixer.backward(dy.transpose(0, 2, 1).reshape(N * C, S))  # (N C, S)
        return dx.reshape(N, C, S).transpose(0, 2, 1)


class ChannelMixing(Module):
    """Apply ``mixer`` to each (sample, token) row of channel values: (N, S, C) -> (N, S, C)."""

    def __init__(self, mixer):
        super().__init__(mixer.dtype)
        self.mixer = mixer

    def forward(self, x):
        N, S, C = x.shape
        return self.mixer.forward(x.reshape(N * S, C)).reshape(N, S, C)

    def backward(self, dy):
        N, S, C = dy.shape
        return self.mixer.backward(dy.reshape(N * S, C)).reshape(N, S, C)


class ReRepresentedTokenMixing(Module):
    """Sparse-MLP's token mixing: R_in, then ``mixer`` (MoE_s) on (N C1, S1) rows, then R_out.

    Parameters
    ----------
    mixer : a module on rows (M, S1) -> (M, S1). n_tokens : S. channels : C. tokens1 : S1. channels1 : C1.
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (N, S, C) -> y (N, S, C).

    Notes
    -----
    R_in: u = x W_c + b_c (N, S, C1), transposed to rows (N C1, S), v = u W_s + b_s (N C1, S1);
    z = mixer(v); R_out: w = z W_s' + b_s' (N C1, S), transposed to (N, S, C1), y = w W_c' + b_c'.
    Every step is linear or the mixer, so the backward runs the four Linear backwards and the mixer's
    in reverse, transposing where the forward did.
    """

    def __init__(self, mixer, n_tokens, channels, tokens1, channels1, seed=None, dtype="float64"):
        super().__init__(dtype)
        rng = default_rng(seed)
        self.in_c = Linear(channels, channels1, seed=rng, dtype=dtype)
        self.in_s = Linear(n_tokens, tokens1, seed=rng, dtype=dtype)
        self.mixer = mixer
        self.out_s = Linear(tokens1, n_tokens, seed=rng, dtype=dtype)
        self.out_c = Linear(channels1, channels, seed=rng, dtype=dtype)

    def forward(self, x):
        N, S, C = x.shape
        C1 = self.in_c.out_features
        u = self.in_c.forward(x.reshape(N * S, C)).reshape(N, S, C1)
        v = self.in_s.forward(u.transpose(0, 2, 1).reshape(N * C1, S))  # (N C1, S1)
        w = self.out_s.forward(self.mixer.forward(v))  # (N C1, S)
        w = w.reshape(N, C1, S).transpose(0, 2, 1).reshape(N * S, C1)
        return self.out_c.forward(w).reshape(N, S, C)

    def backward(self, dy):
        N, S, C = dy.shape
        C1 = self.in_c.out_features
        dw = self.out_c.backward(dy.reshape(N * S, C))  # (N S, C1)
        dw = dw.reshape(N, S, C1).transpose(0, 2, 1).reshape(N * C1, S)
        dv = self.mixer.backward(self.out_s.backward(dw))  # (N C1, S1)
        du = self.in_s.backward(dv).reshape(N, C1, S).transpose(0, 2, 1)  # (N, S, C1)
        return self.in_c.backward(du.reshape(N * S, C1)).reshape(N, S, C)


class MixerBlock(Module):
    """Pre-norm residual block: x + token(LN(x)), then x + channel(LN(x)); (N, S, C) -> (N, S, C)."""

    def __init__(self, token, channel, channels, dtype="float64"):
        super().__init__(dtype)
        self.norm1 = LayerNorm(channels, dtype=dtype)
        self.token = token
        self.norm2 = LayerNorm(channels, dtype=dtype)
        self.channel = channel

    def forward(self, x):
        x = to_dtype(x, self.dtype)  # the residual sum of a float32 block stays float32 for float64 x
        x = x + self.token.forward(self.norm1.forward(x))
        return x + self.channel.forward(self.norm2.forward(x))

    def backward(self, dy):
        dy = dy + self.norm2.backward(self.channel.backward(dy))
        return dy + self.norm1.backward(self.token.backward(dy))


def _indices(blocks):
    """``blocks`` as a tuple; TypeError naming sparse_blocks when it is not a list of indices."""
    try:
        return tuple(blocks)
    except TypeError:
        raise TypeError(f"sparse_blocks={blocks!r} must be a list of block indices") from None


class SparseMLP(Module):
    """Sparse-MLP classifier on NCHW images.

    Parameters
    ----------
    image_size : side of the square input images. in_channels : channels of the input images.
    n_classes : C classes of the output.
    patch_size : side of the square patches (must divide image_size); S = (image_size / patch_size)².
    channels : token width (the Mixer's C). depth : number of blocks.
    sparse_blocks : indices of the blocks that use MoE_s and MoE_c (default: the second half, as
        Sparse-MLP and V-MoE put experts in the last blocks).
    token_hidden, channel_hidden : hidden widths of the token- and channel-mixing MLPs and experts.
    n_experts : E per MoE layer. top_k : K kept experts per row.
    tokens1, channels1 : S1 and C1 of the re-represent layers (default 2S and C // 2).
    balance_weight : weight of each of the importance and load losses of every MoE layer.
    noise_std : V-MoE gate noise, std noise_std / E on the logits during training.
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (N, in_channels, image_size, image_size) -> logits (N, n_classes).
    """

    def __init__(self, image_size=8, in_channels=1, n_classes=10, patch_size=2, channels=32, depth=4,
                 sparse_blocks=None, token_hidden=32, channel_hidden=64, n_experts=4, top_k=2,
                 tokens1=None, channels1=None, balance_weight=0.005, noise_std=1.0, seed=None,
                 dtype="float64"):
        super().__init__(dtype)
        image_size = check_positive_int(image_size, "image_size")
        self.in_channels = check_positive_int(in_channels, "in_channels")
        patch_size = check_positive_int(patch_size, "patch_size")
        if image_size % patch_size:
            raise ValueError(f"patch_size={patch_size} must divide image_size={image_size}")
        C = check_positive_int(channels, "channels")
        depth = check_positive_int(depth, "depth")
        S = (image_size // patch_size) ** 2
        token_hidden = check_positive_int(token_hidden, "token_hidden")  # not as a layer's out_features below
        channel_hidden = check_positive_int(channel_hidden, "channel_hidden")
        # every block holds at least its two LayerNorms and a channel mixer C -> channel_hidden -> C (an MoE's
        # experts hold one or more): refuse a depth no memory holds before the loop over blocks
        block = 4 * C + 2 * C * channel_hidden + channel_hidden + C
        check_budget((depth, block), self.dtype, what=f"depth={depth} blocks of at least {block} parameters each")
        self.sparse_blocks = tuple(range(depth // 2, depth) if sparse_blocks is None else _indices(sparse_blocks))
        if any(isinstance(b, bool) or not isinstance(b, numbers.Integral) or not 0 <= b < depth
               for b in self.sparse_blocks):  # 1.5 would match no block: a model with no MoE, silently
            raise ValueError(f"sparse_blocks={self.sparse_blocks} must be block indices (ints) in [0, {depth - 1}]")
        S1 = 2 * S if tokens1 is None else check_positive_int(tokens1, "tokens1")
        C1 = max(1, C // 2) if channels1 is None else check_positive_int(channels1, "channels1")
        rng = default_rng(seed)
        moe = dict(top_k=top_k, noise="vmoe", noise_std=noise_std,
                   balance={"importance": balance_weight, "load": balance_weight})
        self.image_size = image_size
        self.embed = Conv2d(in_channels, C, patch_size, stride=patch_size, seed=rng, dtype=dtype)
        self.blocks = []
        for b in range(depth):
            if b in self.sparse_blocks:
                moe_s = MoE(S1, S1, n_experts, token_hidden, seed=rng, dtype=dtype, **moe)
                token = ReRepresentedTokenMixing(moe_s, S, C, S1, C1, seed=rng, dtype=dtype)
                channel = ChannelMixing(MoE(C, C, n_experts, channel_hidden, seed=rng, dtype=dtype, **moe))
            else:
                token = TokenMixing(feed_forward(S, token_hidden, rng, dtype))
                channel = ChannelMixing(feed_forward(C, channel_hidden, rng, dtype))
            self.blocks.append(MixerBlock(token, channel, C, dtype=dtype))
        self.norm = LayerNorm(C, dtype=dtype)
        self.head = Linear(C, check_positive_int(n_classes, "n_classes"), seed=rng, dtype=dtype)

    def forward(self, x):
        x = check_images(x, self.in_channels, self.dtype, min_images=1)  # the MoE layers need a sample
        if x.shape[2:] != (self.image_size, self.image_size):
            raise ValueError(f"x has images of size {x.shape[2]}x{x.shape[3]}; "
                             f"expected {self.image_size}x{self.image_size}")
        t = self.embed.forward(x)  # (N, C, h, w)
        self.t_shape = t.shape
        N, C = t.shape[:2]
        t = t.reshape(N, C, -1).transpose(0, 2, 1)  # (N, S, C)
        for block in self.blocks:
            t = block.forward(t)
        t = self.norm.forward(t)
        return self.head.forward(t.mean(axis=1))  # (N, n_classes)

    def backward(self, dy):
        xp = get_array_module(dy)
        N, C, h, w = self.t_shape
        dt = self.head.backward(dy)  # (N, C)
        dt = xp.broadcast_to(dt[:, None, :] / (h * w), (N, h * w, C))  # mean over the S tokens
        dt = self.norm.backward(dt)
        for block in reversed(self.blocks):
            dt = block.backward(dt)
        return self.embed.backward(dt.transpose(0, 2, 1).reshape(N, C, h, w))
