"""Flatten and Unflatten: an image batch to feature rows and back, for models built on (N, D) batches."""
import math

from ..backend import asarray
from ..layers import Module
from ..validation import check_positive_int


class Flatten(Module):
    """(N, ...) -> (N, prod(...)), C order, so an NCHW batch becomes (N, C H W)."""

    def forward(self, x):
        x = asarray(x)  # a nested list raised "'list' object has no attribute 'shape'"
        if x.ndim == 0:
            raise ValueError(f"x has ndim=0 (x={x!r:.40}); expected a batch (N, ...)")
        self.x_shape = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))  # no -1: N may be 0

    def backward(self, dy):
        return dy.reshape(self.x_shape)


class Unflatten(Module):
    """``(N, prod(shape)) -> (N, *shape)``, the inverse of :class:`Flatten`.

    Lets code written for 2-D batches (``numpy_moe.train.fit`` validates X as (N, D)) train an image model:
    ``fit(Sequential(Unflatten((C, H, W)), model), X.reshape(N, -1), y)``.
    """

    def __init__(self, shape):
        super().__init__()
        if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):  # 3 raised "not iterable"
            raise TypeError(f"shape={shape!r} must be a tuple of integers >= 1")
        self.shape = tuple(check_positive_int(s, "shape") for s in shape)
        self.size = 1
        for s in self.shape:
            self.size *= s

    def forward(self, x):
        x = asarray(x)
        if x.ndim != 2 or x.shape[1] != self.size:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, {self.size}) to unflatten to "
                             f"(N, {', '.join(map(str, self.shape))})")
        return x.reshape(x.shape[0], *self.shape)

    def backward(self, dy):
        return dy.reshape(dy.shape[0], -1)
