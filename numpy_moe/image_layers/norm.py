"""LayerNorm and GELU: the normalisation and the activation of MLP-Mixer and the transformer (post 004)."""
from .. import functional as F
from ..backend import asarray, is_floating_dtype, sum_rows
from ..layers import Module, ones_param, zeros_param
from ..validation import check_positive_int, check_real
from .checks import cast_finite


class LayerNorm(Module):
    """Layer normalisation over the last axis (Ba, Kiros & Hinton 2016), as in MLP-Mixer.

    Parameters
    ----------
    n_features : D, the length of the last axis. eps : added to the variance. dtype : float32 or float64.

    Shapes: x (..., D) -> y (..., D); gamma (D,), beta (D,).

    Notes
    -----
    mu = mean(x), var = mean((x - mu)²), xhat = (x - mu) / sqrt(var + eps), y = gamma xhat + beta, per row.
    Backward: dgamma = sum dy xhat, dbeta = sum dy (over every row); with g = dy gamma,
    dx = (g - mean(g) - xhat mean(g xhat)) / sqrt(var + eps).
    """

    def __init__(self, n_features, eps=1e-5, dtype="float64"):
        super().__init__(dtype)
        self.n_features = check_positive_int(n_features, "n_features")
        self.eps = check_real(eps, "eps", 0, low_open=True)  # inf would flatten every output to beta
        self.params["gamma"] = ones_param(self.n_features, self.dtype)
        self.params["beta"] = zeros_param(self.n_features, self.dtype)
        self.zero_grad()

    def forward(self, x):
        x = asarray(x)
        if not is_floating_dtype(x.dtype):
            raise TypeError(f"x has dtype {x.dtype}; expected a floating dtype (float32 or float64)")
        if x.ndim < 1 or x.shape[-1] != self.n_features:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected a last axis of length {self.n_features}")
        x = cast_finite(x, self.dtype)  # the layer's dtype, as check_input gives the other layers
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        self.inv_std = 1 / (var + self.eps) ** 0.5  # (..., 1)
        self.xhat = (x - mu) * self.inv_std  # (..., D)
        return self.params["gamma"] * self.xhat + self.params["beta"]

    def backward(self, dy):
        D = self.n_features
        self.grads["gamma"] = sum_rows((dy * self.xhat).reshape(-1, D))
        self.grads["beta"] = sum_rows(dy.reshape(-1, D))
        g = dy * self.params["gamma"]
        return (g - g.mean(axis=-1, keepdims=True)
                - self.xhat * (g * self.xhat).mean(axis=-1, keepdims=True)) * self.inv_std


class GELU(Module):
    """Exact GELU (Hendrycks & Gimpel 2016), the MLP-Mixer activation: y = x Φ(x), elementwise.

    Notes
    -----
    dy/dx = Φ(x) + x φ(x), Φ and φ the standard normal CDF and density.
    """

    def forward(self, x):
        self.x = x
        return x * F.normal_cdf(x)

    def backward(self, dy):
        return dy * (F.normal_cdf(self.x) + self.x * F.normal_pdf(self.x))
