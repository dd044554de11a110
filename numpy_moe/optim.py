"""Optimisers: SGD (momentum, per-epoch decay), Adam and FTRL-Proximal.

An optimiser updates a model's parameters in place from its gradients: ``opt.step(model)`` walks
``model.named_parameters()`` and ``model.named_grads()`` and keeps its per-tensor state in dicts keyed
by the dotted parameter name, so any Module (or anything exposing those two generators) can be trained.
``opt.end_epoch()`` applies per-epoch schedules (SGD's decay). MATH.md §6.
"""
from .backend import get_array_module, quiet_overflow
from .validation import check_real


class Optimizer:
    """Base: ``step(model)`` calls ``update(name, param, grad)`` for every parameter.

    ``step`` checks every gradient and every piece of per-parameter state (the dicts named in ``_state``)
    against its parameter's shape, and asks ``check_update(name, param, grad)`` whether the update would
    overflow the optimiser's state (Adam, FTRL: FloatingPointError naming the parameter), all before it changes
    anything: a step that raises leaves the model, the optimiser's state and the step count as they were.
    ``update`` itself does not check (the classic trainer's batch-size-1 pass calls it once per sample and
    checks the weights at the end of its pass).
    """
    _state = ()  # the attributes holding per-parameter state: dicts parameter name -> array

    def __init__(self, lr, name="lr"):
        self.lr = check_real(lr, name, 0, low_open=True)  # finite: lr=inf turns every weight into NaN
        self.t = 0

    def step(self, model):
        if not (callable(getattr(model, "named_parameters", None)) and callable(getattr(model, "named_grads", None))):
            raise TypeError(f"model={model!r:.80} must be a numpy_moe Module (named_parameters, named_grads)")
        grads = dict(model.named_grads())
        params = list(model.named_parameters())
        self._check_shapes(params, grads)
        with quiet_overflow():  # a sum of squares past the range: check_update reads the inf, NumPy need not warn
            for name, p in params:
                self.check_update(name, p, grads[name])
        self.t += 1
        for name, p in params:
            self.update(name, p, grads[name])

    def check_update(self, name, p, g):
        """Raise FloatingPointError, naming the parameter, if updating ``p`` with ``g`` would overflow this
        optimiser's state for it; the base class's updates cannot."""

    def _check_shapes(self, params, grads=None):
        """ValueError naming the parameter when a gradient (of ``grads``, when given), or this optimiser's state
        for it (kept from another model with the same parameter names), does not have the parameter's shape."""
        for name, p in params:
            if grads is not None and tuple(grads[name].shape) != tuple(p.shape):
                raise ValueError(f"the gradient of {name!r} has shape {tuple(grads[name].shape)}; the parameter "
                                 f"has shape {tuple(p.shape)}")
            for key in self._state:
                s = getattr(self, key).get(name)
                if s is not None and tuple(s.shape) != tuple(p.shape):
                    raise ValueError(f"this {type(self).__name__} holds state for {name!r} of shape "
                                     f"{tuple(s.shape)}; the parameter has shape {tuple(p.shape)}: the state was "
                                     "kept from another model, so use a new optimiser for each model")

    def update(self, name, p, g):
        raise NotImplementedError

    def get_config(self):
        """The constructor's arguments as they stand now (a schedule's ``lr``, not the first one): with ``t``
        and the state dicts of ``_state``, all an optimiser needs to continue (``io.save_checkpoint``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define get_config")

    def end_epoch(self):
        """Called by the training loop after each epoch; schedules live here."""


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and per-epoch learning-rate decay.

    Notes
    -----
    v <- momentum v + g; w <- w - lr v (momentum 0: w <- w - lr g); after each epoch lr <- lr * decay.
    """
    _state = ("velocity",)

    def __init__(self, lr=0.01, momentum=0.0, decay=1.0):
        super().__init__(lr)
        self.momentum = check_real(momentum, "momentum", 0, 1, high_open=True)
        self.decay = check_real(decay, "decay", 0, 1, low_open=True)
        self.velocity = {}

    def get_config(self):
        return {"lr": self.lr, "momentum": self.momentum, "decay": self.decay}

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

    On NumPy a parameter of more than ``chunk`` elements is updated ``chunk`` elements at a time, the
    same operations on consecutive slices (so the same numbers): the dozen passes of the update then find
    w, g, m, v and the temporaries in the CPU's cache instead of streaming megabytes through it each pass
    (a quarter faster on the 1 MB expert weights of post 000's image model).

    A gradient entry whose square exceeds the dtype's range (|g| > 1.8e19 in float32, 1.3e154 in float64) can
    make v overflow to inf, after which that weight's update is m / inf = 0 at this step and every later one:
    the weight would freeze without a word. The step then raises FloatingPointError naming the parameter
    before changing any (``check_update``; the training loops report a divergence). Below that bound v cannot overflow
    (v_new <= max(v, g²)), so the check is one BLAS dot of g with itself: a finite sum of squares within the
    range bounds every g²; only a sum beyond it (or NaN) looks at the entries.
    """
    chunk = 65536
    _state = ("m", "v")

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(lr)
        self.beta1 = check_real(beta1, "beta1", 0, 1, high_open=True)
        self.beta2 = check_real(beta2, "beta2", 0, 1, high_open=True)
        self.eps = check_real(eps, "eps", 0, low_open=True)
        self.m, self.v = {}, {}

    def get_config(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def check_update(self, name, p, g):
        xp = get_array_module(p)
        top = float(xp.finfo(p.dtype).max)
        if not _sum_squares(g) <= top:  # else every g² fits, and v_new <= max(v, g²)
            # v_new = b2 v + (1 - b2) g² overflows where |g| sqrt(1 - b2) > sqrt(max - b2 v)
            v = self.v.get(name)
            _check_moment(name, "Adam's second moment v", g, xp.abs(g) * (1 - self.beta2) ** 0.5,
                          xp.sqrt(top - self.beta2 * v) if v is not None else top ** 0.5,
                          "frozen (an update of m / inf = 0, now and at every later step)")

    def update(self, name, p, g):
        xp = get_array_module(p)
        if name not in self.m:
            self.m[name], self.v[name] = xp.zeros_like(p), xp.zeros_like(p)
        m, v = self.m[name], self.v[name]
        parts = [(p, g, m, v)]
        if p.size > self.chunk and xp.__name__ == "numpy" and all(a.flags.c_contiguous for a in (p, m, v)):
            flat = [a.reshape(-1) for a in (p, g, m, v)]  # views of p, m, v (contiguous), so updates land
            parts = [[a[lo:lo + self.chunk] for a in flat] for lo in range(0, p.size, self.chunk)]
        # m̂ / (sqrt(v̂) + eps) with the bias corrections folded into two scalars: fewer temporaries
        c1, c2 = 1 - self.beta1 ** self.t, (1 - self.beta2 ** self.t) ** 0.5
        for p, g, m, v in parts:
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * g * g
            denom = xp.sqrt(v)
            denom += self.eps * c2
            p -= (self.lr * c2 / c1) * m / denom


class FTRL(Optimizer):
    """FTRL-Proximal (McMahan 2011, AISTATS; per coordinate as in McMahan et al. 2013, "Ad Click Prediction: a
    View from the Trenches", Algorithm 1).

    Per coordinate, with state z and n keyed by parameter name (any Module can be trained):

    - after the gradient g at the current weight w: σ = (sqrt(n + g²) - sqrt(n)) / α; z += g - σ w; n += g²
    - then w = 0 if |z| <= λ1, else w = -(z - sign(z) λ1) / ((β + sqrt(n)) / α + λ2)

    Parameters
    ----------
    alpha, beta : the per-coordinate learning rate is α / (β + sqrt(n)). l1, l2 : λ1, λ2 >= 0.
    Defaults α = 1, β = 0.2, λ1 = λ2 = 0: the settings of the code post 003 links to (MATH.md §6.3).

    Notes
    -----
    Initial weights. The paper starts from z = n = 0, i.e. from w = 0, and its first proximal term
    ½ (β/α) ‖w‖² is centred at 0. A model starts from nonzero weights w0 (experts whose weights are all
    zero are identical and stay so), so FTRL takes w0 as its first point and centres that first proximal
    term at it: the first step starts from n = 0 and z = -(β/α) w0, since ½ (β/α) ‖w - w0‖² = ½ (β/α) ‖w‖²
    - (β/α) w0·w + const. With λ1 = λ2 = 0 the closed form gives back exactly w0; λ1 and λ2 keep
    pulling towards 0 as in the paper (they are not re-centred). w0 = 0 is the paper's start (MATH.md §6.3).

    With λ1 = λ2 = 0 the update is online gradient descent w <- w - η g with the per-coordinate rate
    η = α / (β + sqrt(n)) (n after adding g²), as the paper notes; when β >> sqrt(n) the rate is the
    constant α / β and FTRL is plain SGD. With λ1 > 0 coordinates with |z| <= λ1 are exactly zero.
    Keras' Ftrl differs (n starts at 0.1, its l2 is λ2 / 2, extra shrinkage); this follows the paper.

    With β = λ2 = 0, a coordinate whose gradients have all been 0 has n = 0 and z = 0: the closed form's
    denominator is 0 there and the weight is the paper's w = 0 (|z| <= λ1), computed without dividing 0 by 0
    (which warned, or raised under ``numpy.seterr(all="raise")``).
    A gradient whose square overflows n (|g| > 1.8e19 in float32) would make the weight NaN: the step raises
    FloatingPointError naming the parameter before changing any (``check_update``).
    """
    _state = ("z", "n")

    def __init__(self, alpha=1.0, beta=0.2, l1=0.0, l2=0.0):
        super().__init__(alpha, "alpha")
        self.beta, self.l1, self.l2 = (check_real(v, name, 0) for name, v in (("beta", beta), ("l1", l1), ("l2", l2)))
        self.z, self.n = {}, {}

    @property
    def alpha(self):
        """α, which is the optimiser's ``lr``: a schedule that sets ``lr`` (as the other optimisers') sets α."""
        return self.lr

    @alpha.setter
    def alpha(self, value):
        self.lr = check_real(value, "alpha", 0, low_open=True)

    def get_config(self):
        return {"alpha": self.alpha, "beta": self.beta, "l1": self.l1, "l2": self.l2}

    def check_update(self, name, p, g):
        xp = get_array_module(p)
        top, n = float(xp.finfo(p.dtype).max), self.n.get(name)
        # below this bound n + g² <= max(n) + max(g)² fits
        if not _sum_squares(g) <= top - (float(n.max()) if n is not None and n.size else 0.0):
            _check_moment(name, "FTRL's sum of squared gradients n", g, xp.abs(g),
                          xp.sqrt(top - n) if n is not None else top ** 0.5, "NaN")

    def update(self, name, p, g):
        xp = get_array_module(p)
        if name not in self.z:
            self.z[name] = -(self.beta / self.alpha) * p  # the first proximal term, centred at w0
            self.n[name] = xp.zeros_like(p)
        z, n = self.z[name], self.n[name]
        # The formulas of the docstring, computed in place and with the exact no-ops skipped (x / 1 and
        # x + 0 for alpha = 1 and l2 = 0; z - sign(z) 0 for l1 = 0), so every bit is that of the formulas.
        g2 = g * g
        sigma = xp.sqrt(n + g2)
        sigma -= xp.sqrt(n)
        if self.alpha != 1:
            sigma /= self.alpha
        sigma *= p
        z += g - sigma
        n += g2
        denom = xp.sqrt(n)
        denom += self.beta
        if self.alpha != 1:
            denom /= self.alpha
        if self.l2:
            denom += self.l2
        elif not self.beta:  # denom = 0 where n = 0; where z = 0 too, w = 0 below, not 0 / 0
            denom[(denom == 0) & (z == 0)] = 1
        xp.divide(z - xp.sign(z) * self.l1 if self.l1 else z, denom, out=p)
        xp.negative(p, out=p)  # -(a / b) == (-a) / b exactly
        p[xp.abs(z) <= self.l1] = 0


def _sum_squares(g):
    """sum of g² as a float, one BLAS dot (half the time of a max and a min of g): inf when it overflows, NaN when g
    holds NaN, 0 for an empty g. A value s within the dtype's range bounds every g² by s."""
    if g.size == 0:
        return 0.0
    flat = g.reshape(-1)
    return float(flat @ flat)  # a sum past the range is inf, which the caller reads (step silences NumPy's warning)


def _largest(g):
    """max |g| as a float (NaN if g holds NaN; 0 for an empty g), from one max and one min (no |g| array)."""
    if g.size == 0:
        return 0.0
    hi, lo = float(g.max()), float(g.min())
    return hi if hi != hi else max(hi, -lo)


def _check_moment(name, what, g, size, room, effect):
    """Raise FloatingPointError if g holds NaN, or if ``size`` > ``room`` anywhere (the state ``what`` would
    overflow there); both computed without overflowing."""
    xp = get_array_module(g)
    if bool(xp.isnan(g).any()):
        cause = "the gradient holds NaN"
    elif bool((size > room).any()):
        cause = (f"{what} would overflow {g.dtype} (range up to {float(xp.finfo(g.dtype).max):.3g}, the gradient's "
                 f"largest entry is {_largest(g):.3g})")
    else:
        return
    raise FloatingPointError(f"optimiser step on {name!r}: {cause}, which would leave the weight {effect}. "
                             "No parameter, state or step count was changed; scale the loss down or clip the "
                             "gradients")
