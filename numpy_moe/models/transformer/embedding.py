"""Token and learned position embeddings, the input end of a Transformer (Vaswani et al. 2017, §3.4;
GPT-2, Radford et al. 2019, learns its position table).

Letters: B sequences, T positions, D model width, V vocabulary size, L the longest sequence the
position table holds. A lookup's backward is a scatter-add: row v of dW sums the gradients of every
position that read row v (MATH.md §15.1).
"""
from ...backend import asarray, default_rng, get_array_module, sum_rows
from ...layers import Module, normal_param
from ...validation import check_input, check_positive_int, check_real


def check_tokens(tokens, vocab_size, name="tokens"):
    """Validate a batch of token ids (B, T): integers in [0, vocab_size); returned on the current backend."""
    tokens = asarray(tokens)
    if tokens.dtype.kind not in "iu":
        raise TypeError(f"{name} has dtype {tokens.dtype}; expected integer token ids")
    if tokens.ndim != 2:
        raise ValueError(f"{name} has shape {tuple(tokens.shape)}; expected a 2-D array (B, T) of token ids")
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"{name} holds ids from {int(tokens.min())} to {int(tokens.max())}; expected ids in "
                         f"[0, {vocab_size}), the vocabulary")
    return tokens



def check_states(x, D, dtype, name="x"):
    """Token states x (B, T, D), an array or nested lists, checked as :func:`numpy_moe.validation.check_input`
    checks a batch (floating, finite) and returned as an array of ``dtype``."""
    x = asarray(x)
    if x.ndim != 3 or x.shape[2] != D:
        raise ValueError(f"{name} has shape {tuple(x.shape)}; expected (B, T, {D})")
    B, T, _ = x.shape
    return check_input(x.reshape(B * T, D), D, dtype, name=name).reshape(B, T, D)

class Embedding(Module):
    """A table of V learned vectors: token id v -> W[v].

    Parameters
    ----------
    vocab_size : V. dim : D. std : standard deviation of the normal initial weights (GPT-2: 0.02).
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: tokens (B, T) ints -> y (B, T, D); W (V, D).

    Notes
    -----
    y[b, t] = W[tokens[b, t]]. Backward: dW[v] = sum over (b, t) with tokens[b, t] = v of dy[b, t]
    (a scatter-add: a token read twice gets both gradients), zero for ids absent from the batch. The
    ids are not differentiable, so ``backward`` returns None.
    """

    def __init__(self, vocab_size, dim, std=0.02, seed=None, dtype="float64"):
        super().__init__(dtype)
        self.vocab_size = check_positive_int(vocab_size, "vocab_size")
        self.dim = check_positive_int(dim, "dim")
        std = check_real(std, "std", 0, low_open=True)
        self.params["W"] = normal_param(default_rng(seed), std, (self.vocab_size, self.dim), self.dtype)
        self.zero_grad()

    def forward(self, tokens):
        self.tokens = check_tokens(tokens, self.vocab_size)
        return self.params["W"][self.tokens]  # (B, T, D)

    def backward(self, dy):
        xp = get_array_module(dy)
        dW = xp.zeros_like(self.params["W"])
        xp.add.at(dW, self.tokens.reshape(-1), dy.reshape(-1, self.dim))  # (V, D), repeats summed
        self.grads["W"] = dW
        return None


class PositionEmbedding(Module):
    """Adds a learned vector per position: y[b, t] = x[b, t] + P[t] (GPT-2's ``wpe``).

    Parameters
    ----------
    max_len : L, the longest sequence. dim : D. std : initial weights' standard deviation (GPT-2: 0.01).
    seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (B, T, D), T <= L -> y (B, T, D); P (L, D).

    Notes
    -----
    Backward: dx = dy; dP[t] = sum_b dy[b, t] for t < T, zero for the rows t >= T no position used.
    """

    def __init__(self, max_len, dim, std=0.01, seed=None, dtype="float64"):
        super().__init__(dtype)
        self.max_len = check_positive_int(max_len, "max_len")
        self.dim = check_positive_int(dim, "dim")
        std = check_real(std, "std", 0, low_open=True)
        self.params["P"] = normal_param(default_rng(seed), std, (self.max_len, self.dim), self.dtype)
        self.zero_grad()

    def forward(self, x):
        x = check_states(x, self.dim, self.dtype)
        if x.shape[1] > self.max_len:
            raise ValueError(f"x has T={x.shape[1]} positions; this table holds max_len={self.max_len}")
        self.T = x.shape[1]
        return x + self.params["P"][:self.T]  # (B, T, D)

    def backward(self, dy):
        xp = get_array_module(dy)
        dP = xp.zeros_like(self.params["P"])
        dP[:self.T] = sum_rows(dy.reshape(dy.shape[0], -1)).reshape(dy.shape[1:])  # (T, D)
        self.grads["P"] = dP
        return dy
