"""Stateless math as forward/backward pairs.

Each ``f(x)`` has an ``f_backward(dy, ...)`` that returns dLoss/dx given dLoss/dy and whatever the
forward produced (input or output, whichever makes the gradient cheapest). Every function is
numerically safe for inputs of magnitude 1e4: softmax subtracts the row maximum, log-softmax and
cross-entropy go through log-sum-exp, sigmoid and softplus never exponentiate a large positive number.
MATH.md §0, §2, §3 state the formulas; tests/test_functional.py checks each gradient by finite
differences.
"""
from .backend import get_array_module, ndtr

_EPS = 1e-10


def softmax(x, axis=-1):
    """y = exp(x - max x) / sum exp(x - max x) along ``axis``; same shape as x.

    For a float x the exponential and the division run in place in one buffer of x's layout (the same
    values, two fewer arrays: 0.40 against 0.45 ms at (16384, 16) expert-major float32)."""
    xp = get_array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    if z.dtype.kind != "f":
        z = xp.exp(z)
        return z / z.sum(axis=axis, keepdims=True)
    xp.exp(z, out=z)
    z /= z.sum(axis=axis, keepdims=True)
    return z


def softmax_backward(dy, y, axis=-1):
    """dx = y * (dy - sum(dy * y)), y the softmax output."""
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def logsumexp(x, axis=-1):
    """log sum exp(x) along ``axis`` (that axis removed)."""
    xp = get_array_module(x)
    m = x.max(axis=axis, keepdims=True)
    return (m + xp.log(xp.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def logsumexp_backward(dy, x, axis=-1):
    """dx = dy * softmax(x): the derivative of log-sum-exp is the softmax."""
    xp = get_array_module(x)
    return xp.expand_dims(dy, axis) * softmax(x, axis=axis)


def log_softmax(x, axis=-1):
    """y = x - logsumexp(x), computed as (x - max) - log sum exp(x - max) so large x lose no digits."""
    xp = get_array_module(x)
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def log_softmax_backward(dy, y, axis=-1):
    """dx = dy - exp(y) * sum(dy), y the log-softmax output."""
    xp = get_array_module(y)
    return dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True)


def relu(x):
    """y = max(x, 0)."""
    xp = get_array_module(x)
    return xp.maximum(x, 0)


def relu_backward(dy, x):
    """dx = dy where x > 0, else 0 (the subgradient 0 at x = 0)."""
    return dy * (x > 0)


def tanh(x):
    """y = tanh(x)."""
    xp = get_array_module(x)
    return xp.tanh(x)


def tanh_backward(dy, y):
    """dx = dy * (1 - y²), y the tanh output."""
    return dy * (1 - y * y)


def sigmoid(x):
    """y = 1 / (1 + exp(-x)); with z = exp(-|x|) <= 1: 1 / (1 + z) for x >= 0, z / (1 + z) otherwise."""
    xp = get_array_module(x)
    z = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + z), z / (1 + z))


def sigmoid_backward(dy, y):
    """dx = dy * y (1 - y), y the sigmoid output."""
    return dy * y * (1 - y)


def softplus(x):
    """y = log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))."""
    xp = get_array_module(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def softplus_backward(dy, x):
    """dx = dy * sigmoid(x)."""
    return dy * sigmoid(x)


def silu(x):
    """y = x sigmoid(x) (SiLU, "swish"; the activation of SwiGLU)."""
    return x * sigmoid(x)


def silu_backward(dy, x):
    """dx = dy * s (1 + x (1 - s)), s = sigmoid(x): the product rule on x s with s' = s (1 - s)."""
    s = sigmoid(x)
    return dy * s * (1 + x * (1 - s))


def gelu(x):
    """y = x Φ(x), the exact GELU (Hendrycks & Gimpel 2016; the activation of GeGLU)."""
    return x * ndtr(x)


def gelu_backward(dy, x):
    """dx = dy * (Φ(x) + x φ(x))."""
    return dy * (ndtr(x) + x * normal_pdf(x))


def normal_cdf(x):
    """Φ(x), the standard normal CDF (scipy / cupyx ``ndtr`` through the backend)."""
    return ndtr(x)


def normal_pdf(x):
    """φ(x) = exp(-x²/2) / sqrt(2π), the derivative of Φ."""
    xp = get_array_module(x)
    return xp.exp(-0.5 * x * x) / 2.5066282746310002


def normal_cdf_backward(dy, x):
    """dx = dy * φ(x)."""
    return dy * normal_pdf(x)


def cv_squared(v):
    """CV²(v) = var(v) / (mean(v)² + eps), population variance; v of shape (E,), returns a scalar."""
    m = v.mean()
    return ((v - m) ** 2).mean() / (m * m + _EPS)


def cv_squared_backward(dout, v):
    """Gradient of :func:`cv_squared` w.r.t. v, scaled by the scalar ``dout``; shape (E,).

    Notes
    -----
    With m = mean(v), s = var(v), d = m² + eps: dCV²/dv_e = (2 (v_e - m) / E) / d - s 2m / (E d²).
    """
    E = v.shape[0]
    m = v.mean()
    s = ((v - m) ** 2).mean()
    d = m * m + _EPS
    return dout * (2 * (v - m) / (E * d) - s * 2 * m / (E * d * d))


def _beside(a, like):
    """``a`` (a target or a mask) as an array of ``like``'s module: a NumPy target given with predictions on
    the GPU is copied there, as a model's forward copies its input; None stays None."""
    return None if a is None else get_array_module(like).asarray(a)


def _target_probs(logits, target):
    """Integer labels (N,) or one-hot / probability rows (N, C) as (N, C) probabilities."""
    xp = get_array_module(logits)
    target = _beside(target, logits)
    if target.ndim == 1:
        probs = xp.zeros_like(logits)
        probs[xp.arange(logits.shape[0]), target] = 1
        return probs
    return xp.asarray(target, dtype=logits.dtype)


def cross_entropy(logits, target):
    """Mean cross-entropy of softmax(logits) against ``target``.

    Parameters
    ----------
    logits : (N, C) scores.
    target : (N,) integer labels in [0, C), or (N, C) one-hot / probability rows.

    Returns
    -------
    float: -(1/N) sum_n sum_c t_{n,c} log softmax(logits)_{n,c}, with 0 log 0 = 0: a class masked with a logit
    of -inf costs nothing where its target is 0 (as t log p it was 0 (-inf) = NaN; torch's cross_entropy gives
    the finite value for integer labels). The terms with t = 0 are the only ones changed, so finite logits
    give the same sums as before, labels and one-hot rows alike.
    """
    xp = get_array_module(logits)
    N = logits.shape[0]
    t = _target_probs(logits, target)
    return float(-(t * xp.where(t == 0, 0, log_softmax(logits))).sum() / N)


def cross_entropy_backward(logits, target):
    """dlogits = (softmax(logits) - t) / N; shape (N, C)."""
    N = logits.shape[0]
    return (softmax(logits) - _target_probs(logits, target)) / N


def token_cross_entropy(logits, target, mask=None):
    """Cross-entropy over tokens, averaged over the tokens that count (a language model's loss).

    Parameters
    ----------
    logits : (..., C) scores, e.g. (B, T, V). target : (...) integer ids in [0, C).
    mask : None or (...) bool, True for the tokens that count (False: padding); None counts all. No token to
        count (an empty target, or a mask False everywhere) is a ValueError: the mean over none is undefined.

    Returns
    -------
    float: -(1/n) sum over counted tokens of log softmax(logits)[target], n the number counted.
    """
    xp = get_array_module(logits)
    target, mask = _beside(target, logits), _beside(mask, logits)
    logp = log_softmax(logits)
    picked = xp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]  # (...)
    n = _n_counted(target, mask)
    if mask is None:
        return float(-picked.mean())
    return float(-(picked * mask).sum() / n)


def token_cross_entropy_backward(logits, target, mask=None):
    """dlogits = (softmax(logits) - onehot(target)) m / n, m the mask (1 everywhere for None), n = sum m;
    of the dtype of ``logits``."""
    xp = get_array_module(logits)
    target, mask = _beside(target, logits), _beside(mask, logits)
    d = softmax(logits) - (xp.arange(logits.shape[-1]) == target[..., None])  # (..., C)
    n = _n_counted(target, mask)
    if mask is None:
        return d / n
    return d * (mask[..., None] / n).astype(d.dtype, copy=False)  # m / n alone is float64


def _n_counted(target, mask):
    """The number of tokens that count: every entry of ``target``, or the True entries of ``mask``;
    ValueError when there is none."""
    if mask is None:
        if target.size == 0:
            raise ValueError(f"target has shape {tuple(target.shape)}: no token to average over")
        return target.size
    n = int(mask.sum())
    if n == 0:
        raise ValueError("mask is False everywhere; at least one token must count")
    return n


def mse(pred, target):
    """Mean squared error over every element: mean((pred - target)²)."""
    return float(((pred - _beside(target, pred)) ** 2).mean())


def mse_backward(pred, target):
    """dpred = 2 (pred - target) / pred.size."""
    return 2 * (pred - _beside(target, pred)) / pred.size
