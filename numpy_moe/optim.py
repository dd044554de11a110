"""Optimisers: SGD (momentum, per-epoch decay) and Adam.

An optimiser updates a model's parameters in place from its gradients: ``opt.step(model)`` walks
``model.named_parameters()`` and ``model.named_grads()`` and keeps its per-tensor state in dicts keyed
by the dotted parameter name, so any Module (or anything exposing those two generators) can be trained.
``opt.end_epoch()`` applies per-epoch schedules (SGD's decay). MATH.md §6.
"""
from .backend import get_array_module


class Optimizer:
    """Base: ``step(model)`` calls ``update(name, param, grad)`` for every parameter."""

    def __init__(self, lr):
        if not lr > 0:
            raise ValueError(f"lr={lr!r} must be > 0")
        self.lr = float(lr)
        self.t = 0

    def step(self, model):
        self.t += 1
        grads = dict(model.named_grads())
        for name, p in model.named_parameters():
            self.update(name, p, grads[name])

    def update(self, name, p, g):
        raise NotImplementedError

    def end_epoch(self):
        """Called by the training loop after each epoch; schedules live here."""


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and per-epoch learning-rate decay.

    Notes
    -----
    v <- momentum v + g; w <- w - lr v (momentum 0: w <- w - lr g); after each epoch lr <- lr * decay.
    """

    def __init__(self, lr=0.01, momentum=0.0, decay=1.0):
        super().__init__(lr)
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum={momentum!r} must be in [0, 1)")
        if not 0 < decay <= 1:
            raise ValueError(f"decay={decay!r} must be in (0, 1]")
        self.momentum, self.decay = float(momentum), float(decay)
        self.velocity = {}

    def update(self, name, p, g):
        if self.momentum:
            v = self.velocity.get(name)
            v = g.copy() if v is None else self.momentum * v + g
            self.velocity[name] = v
            g = v
        p -= self.lr * g

    def end_epoch(self):
        self.lr *= self.decay


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction.

    Notes
    -----
    m <- b1 m + (1 - b1) g; v <- b2 v + (1 - b2) g²;
    w <- w - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    """

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0 <= b < 1:
                raise ValueError(f"{name}={b!r} must be in [0, 1)")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m, self.v = {}, {}

    def update(self, name, p, g):
        xp = get_array_module(p)
        if name not in self.m:
            self.m[name], self.v[name] = xp.zeros_like(p), xp.zeros_like(p)
        m, v = self.m[name], self.v[name]
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        m_hat = m / (1 - self.beta1 ** self.t)
        v_hat = v / (1 - self.beta2 ** self.t)
        p -= self.lr * m_hat / (xp.sqrt(v_hat) + self.eps)
