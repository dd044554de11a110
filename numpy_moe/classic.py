"""Classic mixture of local experts: cooperative and competitive MoE with closed-form updates (post 003).

Jacobs, Jordan, Nowlan & Hinton (1991), "Adaptive mixtures of local experts", as summarised by post 003
and MATH.md §5. E linear experts with bias, ``w_{n,e,:} = x̃_n V_e`` (x̃ = [x, 1]), and a softmax gate
with bias, ``g_n = softmax(x̃_n M)``. Two ways to train the same parameters:

- **cooperative**: the experts' outputs are blended, ``y = Σ_e g_e w_e``, and the rule descends the error
  of the blend (½‖r - y‖² for regression, cross-entropy of softmax(y) for classification);
- **competitive**: each expert is a whole model of the target and the gate picks one at random; the
  rule ascends the mixture log-likelihood ``log Σ_e g_e p_e`` and predicts with the mixture
  ``Σ_e g_e y_e``, so every expert is pushed to own a region of the input space.

The update directions ``Δv, Δm`` are the formulas of MATH.md §5, averaged over the batch; each is η times
the gradient of its objective (tests/test_classic.py checks this by finite differences). The model is a
Module whose ``grads`` are ``-Δ/η`` (``compute_grads``), so ``SGD(lr=η)`` applies exactly the rule Δ and
FTRL-Proximal takes the negative update direction as its gradient. ``seed_cooperative_update`` keeps
the post's literal cooperative gate rule, which is not a gradient (MATH.md §9, erratum 003-4), for
comparison only.

``fit_local_experts`` trains by SGD or FTRL (or any optimiser of numpy_moe.optim), one shuffled pass per
epoch, and records per-epoch log-loss (base 2, as the post plots) or MSE; ``train_epoch`` is one pass.
"""
from . import divergence
from . import functional as F
from .backend import asarray, default_rng, get_array_module, on_backend
from .layers import Module, normal_param
from .optim import FTRL, SGD, Adam
from .validation import check_input, check_labels, check_positive_int, check_real

MODES = ("cooperative", "competitive")
TASKS = ("classification", "regression")
INIT_STD = 0.1  # weights start small and zero-mean: every expert gets a share of every sample at first


class LocalExperts(Module):
    """A mixture of E local linear experts with a softmax gate, trained by its closed-form update rules.

    Parameters
    ----------
    n_features : D. n_outputs : O, the number of classes C for classification (>= 2).
    n_experts : E. mode : "cooperative" or "competitive". task : "classification" or "regression".
    seed : int or numpy Generator (draws V, then M). dtype : float32 or float64.

    Parameters held: V (E, D+1, O) expert weights, last row the bias; M (D+1, E) gate weights, last row
    the bias. Both drawn N(0, INIT_STD²), bias rows included: the experts start different but close, so
    none is shut out by the gate before it has learned anything (post 003's code drew U[-0.1, -0.08)).

    Shapes: x (N, D) -> prediction (N, O): class probabilities (classification) or values (regression).
    Targets r: (N,) integer labels in [0, C) for classification; (N, O), or (N,) when O = 1, for regression.

    Notes
    -----
    x̃ = [x, 1]; w_{e,i} = x̃ᵀ v_{e,i} (N, E, O); g = softmax(x̃ᵀ M) (N, E).

    Cooperative: y = Σ_e g_e w_e; prediction o = y (regression) or softmax(y) (classification).
    Objective (descended): ½‖r - y‖² or -Σ_i r_i log o_i. Updates::

        Δv_{e,i} = η (r_i - o_i) g_e x̃,   Δm_e = η Σ_i (r_i - o_i)(w_{e,i} - y_i) g_e x̃.

    Competitive: y_e = w_e (regression) or softmax(w_e) (classification);
    p_e = exp(-½ Σ_i (r_i - y_{e,i})²) or exp(Σ_i r_i log y_{e,i}); posterior f_e = g_e p_e / Σ_l g_l p_l.
    Objective (ascended): log Σ_e g_e p_e. Prediction: Σ_e g_e y_e. Updates::

        Δv_{e,i} = η f_e (r_i - y_{e,i}) x̃,   Δm_e = η (f_e - g_e) x̃.

    For a batch, objective and directions are means over samples (batch size 1 gives the post's online rule).
    """

    def __init__(self, n_features, n_outputs, n_experts, mode="competitive", task="classification",
                 seed=None, dtype="float64"):
        super().__init__(dtype)
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} must be one of {MODES}")
        if task not in TASKS:
            raise ValueError(f"task={task!r} must be one of {TASKS}")
        self.mode, self.task = mode, task
        D = self.n_features = check_positive_int(n_features, "n_features")
        O = self.n_outputs = check_positive_int(n_outputs, "n_outputs", 2 if task == "classification" else 1)
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        rng = default_rng(seed)
        self.params["V"] = normal_param(rng, INIT_STD, (E, D + 1, O), self.dtype)
        self.params["M"] = normal_param(rng, INIT_STD, (D + 1, E), self.dtype)
        self.zero_grad()

    # ----- the pieces of the model ---------------------------------------------------------------
    def _with_bias(self, x, min_rows=0):
        """Validated x̃ = [x, 1] of shape (N, D+1); at least ``min_rows`` rows (1 for a mean over the batch)."""
        x = check_input(x, self.n_features, self.dtype, min_rows=min_rows)
        xp = get_array_module(x)
        return xp.concatenate([x, xp.ones((x.shape[0], 1), dtype=x.dtype)], axis=1)  # (N, D+1)

    def _targets(self, r, n_samples):
        """Targets as (N, O) rows: one-hot for classification, values for regression."""
        if self.task == "classification":
            r = check_labels(r, self.n_outputs, n_samples, "r")
            return get_array_module(r).eye(self.n_outputs, dtype=self.dtype)[r]  # (N, C)
        r = r if hasattr(r, "ndim") else asarray(r)
        if r.ndim == 1 and self.n_outputs == 1:
            r = r[:, None]
        r = check_input(r, self.n_outputs, self.dtype, "r")
        if r.shape[0] != n_samples:
            raise ValueError(f"r has {r.shape[0]} rows; expected {n_samples}, one per row of x")
        return r

    def _parts(self, x1):
        """Gate logits h (N, E) and expert outputs w (N, E, O) from x̃ (N, D+1)."""
        xp = get_array_module(x1)
        return x1 @ self.params["M"], xp.einsum("nd,edo->neo", x1, self.params["V"])

    def _expert_predictions(self, w):
        """y_e: w_e (regression) or softmax(w_e) (classification); (N, E, O)."""
        return F.softmax(w, axis=2) if self.task == "classification" else w

    def _log_likelihoods(self, w, R):
        """log p_e = -½ Σ_i (r_i - w_{e,i})² or Σ_i r_i log softmax(w_e)_i; (N, E)."""
        if self.task == "classification":
            return (R[:, None, :] * F.log_softmax(w, axis=2)).sum(axis=2)
        return -0.5 * ((R[:, None, :] - w) ** 2).sum(axis=2)

    def _blend(self, g, w):
        """Cooperative blend y = Σ_e g_e w_e (N, O) and its prediction o."""
        xp = get_array_module(w)
        y = xp.einsum("ne,neo->no", g, w)  # (N, O)
        return y, F.softmax(y) if self.task == "classification" else y

    def gate(self, x):
        """g = softmax(x̃ M); x (N, D) -> (N, E)."""
        return F.softmax(self._with_bias(x) @ self.params["M"])

    def expert_outputs(self, x):
        """w_{e,i} = x̃ᵀ v_{e,i}, the experts' linear outputs (logits for classification); (N, E, O)."""
        return self._parts(self._with_bias(x))[1]

    def posterior(self, x, r):
        """f_e = g_e p_e / Σ_l g_l p_l, the competitive responsibilities (any mode); (N, E)."""
        x1 = self._with_bias(x)
        h, w = self._parts(x1)
        return F.softmax(F.log_softmax(h) + self._log_likelihoods(w, self._targets(r, x1.shape[0])))

    def forward(self, x):
        """The mode's prediction (N, O): softmax(Σ g_e w_e) cooperative, Σ g_e y_e competitive."""
        x1 = self._with_bias(x)
        xp = get_array_module(x1)
        h, w = self._parts(x1)
        g = F.softmax(h)
        if self.mode == "cooperative":
            return self._blend(g, w)[1]
        return xp.einsum("ne,neo->no", g, self._expert_predictions(w))  # (N, O)

    def predict(self, x):
        """Class labels (N,) for classification (argmax of forward), values (N, O) for regression."""
        out = self.forward(x)
        return out.argmax(axis=1) if self.task == "classification" else out

    # ----- objectives and update rules -----------------------------------------------------------
    def objective(self, x, r):
        """The mean objective of the mode's rule: cooperative descends it, competitive ascends it.

        Cooperative: mean ½‖r - y‖² (regression) or mean -Σ r_i log o_i (classification, natural log).
        Competitive: mean log Σ_e g_e p_e.
        """
        x1 = self._with_bias(x, min_rows=1)
        R = self._targets(r, x1.shape[0])
        h, w = self._parts(x1)
        if self.mode == "cooperative":
            y = self._blend(F.softmax(h), w)[0]
            if self.task == "classification":
                return float(-(R * F.log_softmax(y)).sum(axis=1).mean())
            return float(0.5 * ((R - y) ** 2).sum(axis=1).mean())
        return float(F.logsumexp(F.log_softmax(h) + self._log_likelihoods(w, R)).mean())

    def loss(self, x, r):
        """The quantity every rule descends: the objective, negated for the competitive mode."""
        return self.objective(x, r) if self.mode == "cooperative" else -self.objective(x, r)

    def update_directions(self, x, r, lr=1.0):
        """The update rule of MATH.md §5 for the mode, averaged over the batch.

        Parameters
        ----------
        x : (N, D). r : targets (see the class docstring). lr : η, a finite number > 0.

        Returns
        -------
        dict with "V": ΔV (E, D+1, O) and "M": ΔM (D+1, E).
        """
        lr = check_real(lr, "lr", 0, low_open=True)  # as SGD's lr: NaN made every direction NaN without a word
        x1 = self._with_bias(x, min_rows=1)
        xp = get_array_module(x1)
        N = x1.shape[0]
        R = self._targets(r, N)
        h, w = self._parts(x1)
        g = F.softmax(h)  # (N, E)
        if self.mode == "cooperative":
            y, o = self._blend(g, w)
            err = R - o  # (N, O)
            dV = xp.einsum("nd,ne,no->edo", x1, g, err)
            dM = x1.T @ (g * xp.einsum("no,neo->ne", err, w - y[:, None, :]))
        else:
            f = F.softmax(F.log_softmax(h) + self._log_likelihoods(w, R))  # (N, E)
            dV = xp.einsum("nd,ne,neo->edo", x1, f, R[:, None, :] - self._expert_predictions(w))
            dM = x1.T @ (f - g)
        return {"V": lr * dV / N, "M": lr * dM / N}

    def seed_cooperative_update(self, x, r, lr=1.0):
        """Post 003's literal cooperative rule, for comparison only: its Δm is NOT a gradient.

        Δv as the correct rule; Δm_e = η Σ_i (r_i - o_i)(w_{e,i} - o_i) g_e x̃ with the *softmaxed* output
        o_i where the gradient has the blended logit y_i (MATH.md §9, erratum 003-4). The post writes no sum
        over i (its Δm_k has a free index i); the sum is added here so that only the o-for-y error remains.
        Same arguments and returns as :meth:`update_directions`; needs mode="cooperative".
        """
        if self.mode != "cooperative":
            raise ValueError(f"seed_cooperative_update needs mode='cooperative'; "
                             f"this model has mode={self.mode!r}")
        lr = check_real(lr, "lr", 0, low_open=True)
        x1 = self._with_bias(x, min_rows=1)
        xp = get_array_module(x1)
        N = x1.shape[0]
        R = self._targets(r, N)
        h, w = self._parts(x1)
        g = F.softmax(h)
        o = self._blend(g, w)[1]
        seed_dM = x1.T @ (g * xp.einsum("no,neo->ne", R - o, w - o[:, None, :]))
        return {"V": self.update_directions(x, r, lr)["V"], "M": lr * seed_dM / N}

    def compute_grads(self, x, r):
        """Set ``grads`` to -Δ/η (minus the update direction for η = 1): SGD(lr=η) then applies Δ."""
        for key, d in self.update_directions(x, r).items():
            self.grads[key] = -d


def evaluate(model, X, y):
    """Mean log-loss in bits, -mean log2 o_{n, y_n} (classification), or the MSE (regression)."""
    out = model.forward(check_input(X, model.n_features, model.dtype, "X", min_rows=1))  # a mean: N >= 1
    xp = get_array_module(out)
    R = model._targets(y, out.shape[0])
    if model.task == "classification":
        return float(-(R * xp.log2(xp.maximum(out, xp.finfo(out.dtype).tiny))).sum(axis=1).mean())
    return float(((out - R) ** 2).mean())


def train_epoch(model, X, y, optimizer, batch_size=1, seed=None, epoch=1):
    """One shuffled pass over (X, y): compute_grads and one optimiser step per batch (a partial fit).

    X : (N, D). y : targets as for LocalExperts. optimizer : any numpy_moe.optim optimiser.
    batch_size : 1 is the post's online rule. seed : int or numpy Generator for the shuffle.
    epoch : the epoch's number, for the divergence message.
    The optimiser's per-epoch schedule is left to the caller (``optimizer.end_epoch()``). A non-finite
    update direction or weight raises FloatingPointError (numpy_moe.divergence, rules 1 and 2), the
    direction before it is applied.

    Notes
    -----
    At batch size 1, for a LocalExperts with an SGD, Adam or FTRL optimiser (exactly these classes) on the
    NumPy backend, the pass runs :func:`_online_pass`: the same floating-point operations in the same
    order, bit for bit, without the per-sample input checks, Module dispatch and per-step divergence
    checks, which cost more than the arithmetic of one sample. It checks for divergence once, on the
    weights at the end of the pass: under these optimisers a NaN or inf gradient makes the weights it
    reaches NaN or inf, and a NaN or inf weight stays so for the rest of the pass (SGD and Adam subtract
    from it, FTRL's z and n carry it), so a pass that the checks would have stopped ends non-finite. Then,
    or when NumPy raises FloatingPointError itself (``numpy.seterr(all="raise")``), the pass is put back
    and rerun by the checked loop below, which raises at the same batch, with the same message, leaving
    the same state as it always does (MATH.md §6.4).
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    X = check_input(X, model.n_features, model.dtype, "X", min_rows=1)
    N = X.shape[0]
    y = on_backend(y)  # labels or targets beside X: a NumPy y goes to the GPU with X under CuPy
    R = model._targets(y, N)  # validate once, before any step
    order = asarray(default_rng(seed).permutation(N))
    xp = get_array_module(X)
    if (batch_size == 1 and type(model) is LocalExperts and type(optimizer) in (SGD, Adam, FTRL)
            and xp.__name__ == "numpy"):
        optimizer._check_shapes(list(model.named_parameters()))  # as step does, before the pass changes anything
        saved = divergence.snapshot(model, optimizer)
        X1 = xp.concatenate([X, xp.ones((N, 1), dtype=X.dtype)], axis=1)[order]  # rows x̃ in visiting order
        try:
            if _online_pass(model, X1, R[order], optimizer):
                return
        except FloatingPointError:  # numpy.seterr(all="raise"): the checked loop raises it again, in place
            pass
        divergence.restore(model, optimizer, saved)
    for b, start in enumerate(range(0, N, batch_size)):
        idx = order[start:start + batch_size]
        model.compute_grads(X[idx], y[idx])
        divergence.check_step(model, None, epoch, b + 1)
        divergence.step(optimizer, model, epoch, b + 1)
        model.end_step()


def _online_pass(model, X1, R, optimizer):
    """One step per row of X1 (N, D+1) and R (N, O), the rows x̃ and targets in visiting order.

    The operations of ``compute_grads`` (update_directions with η = 1 and N = 1, whose ``lr * d / N`` is
    exact) and ``optimizer.step``, in the same order, with the softmax and log-softmax of the same logits
    sharing their max, difference and exp. Returns whether every weight is finite at the end; leaves
    ``grads`` as the last step's, as the checked loop does.
    """
    xp = get_array_module(X1)
    V, M = model.params["V"], model.params["M"]
    update = optimizer.update
    plain_sgd, lr = type(optimizer) is SGD and not optimizer.momentum, optimizer.lr
    amax, total, exp, log, einsum = xp.maximum.reduce, xp.add.reduce, xp.exp, xp.log, xp.einsum
    competitive, classification = model.mode == "competitive", model.task == "classification"
    R3 = R[:, None, :]  # (N, 1, O)
    for t in range(X1.shape[0]):
        x1, r, r3 = X1[t:t + 1], R[t:t + 1], R3[t:t + 1]
        h = x1 @ M  # (1, E)
        w = einsum("nd,edo->neo", x1, V)  # (1, E, O)
        zh = h - amax(h, 1, None, None, True)
        eh = exp(zh)
        sh = total(eh, 1, None, None, True)
        g = eh / sh  # softmax(h)
        if competitive:
            if classification:
                zw = w - amax(w, 2, None, None, True)
                ew = exp(zw)
                sw = total(ew, 2, None, None, True)
                ye = ew / sw  # softmax(w, axis=2)
                ll = total(r3 * (zw - log(sw)), 2)  # R · log_softmax(w, axis=2)
            else:
                ye = w
                ll = -0.5 * total((r3 - w) ** 2, 2)
            a = (zh - log(sh)) + ll  # log_softmax(h) + log p
            ea = exp(a - amax(a, 1, None, None, True))
            f = ea / total(ea, 1, None, None, True)  # softmax(a)
            dV = einsum("nd,ne,neo->edo", x1, f, r3 - ye)
            dM = x1.T @ (f - g)
        else:
            y = einsum("ne,neo->no", g, w)
            err = r - (F.softmax(y) if classification else y)
            dV = einsum("nd,ne,no->edo", x1, g, err)
            dM = x1.T @ (g * einsum("no,neo->ne", err, w - y[:, None, :]))
        optimizer.t += 1
        if plain_sgd:  # SGD.update with g = -d: p -= lr (-d) is p += lr d, bit for bit
            V += lr * dV
            M += lr * dM
        else:
            update("V", V, -dV)
            update("M", M, -dM)
    if X1.shape[0]:
        model.grads["V"], model.grads["M"] = -dV, -dM
    return bool(xp.isfinite(V).all()) and bool(xp.isfinite(M).all())


def fit_local_experts(model, X, y, optimizer=None, epochs=50, batch_size=1, seed=None, X_test=None,
                      y_test=None, callback=None):
    """Train ``model`` in place for ``epochs`` shuffled passes; returns the per-epoch history.

    Parameters
    ----------
    model : LocalExperts. X : (N, D). y : targets. optimizer : default SGD(lr=0.1, decay=0.99), the
    per-epoch decay of post 003's code. epochs, batch_size : ints >= 1. seed : int or numpy Generator (shuffles).
    X_test, y_test : optional held-out data. callback : optional ``callback(epoch, model, history)``
    called after each epoch (epoch counts from 0, as in ``numpy_moe.train.fit``).

    Returns
    -------
    history : dict "train" (and "test" when X_test is given) -> list of epochs + 1 floats, entry 0
    before training: log-loss in bits (classification) or MSE (regression), see :func:`evaluate`.

    Raises FloatingPointError when training diverges (numpy_moe.divergence; the growth rule compares
    each epoch's training value with the first epoch's, and the first with the value before training), after putting back the weights and optimiser
    state of the end of the last complete epoch.
    """
    epochs = check_positive_int(epochs, "epochs")
    optimizer = SGD(lr=0.1, decay=0.99) if optimizer is None else optimizer
    # checked before the first epoch, as train.fit does: otherwise a wrong optimiser or callback fails only after
    # training has changed the model, and y_test without X_test is silently ignored
    if not all(callable(getattr(optimizer, m, None)) for m in ("step", "end_epoch")):
        raise TypeError(f"optimizer={optimizer!r:.60} must be an optimiser of numpy_moe.optim (SGD(lr), Adam(lr), "
                        "FTRL(alpha)) or an object with step(model) and end_epoch()")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback={callback!r:.60} must be None or a function callback(epoch, model, history)")
    if (X_test is None) != (y_test is None):
        raise ValueError(f"X_test is {'None' if X_test is None else 'given'} and y_test is "
                         f"{'None' if y_test is None else 'given'}; pass both (held-out data) or neither")
    rng = default_rng(seed)
    sets = {"train": (X, y)} if X_test is None else {"train": (X, y), "test": (X_test, y_test)}
    history = {name: [evaluate(model, *data)] for name, data in sets.items()}
    for epoch in range(1, epochs + 1):
        saved = divergence.snapshot(model, optimizer)
        try:
            train_epoch(model, X, y, optimizer, batch_size, rng, epoch)
            train_value = evaluate(model, X, y)
            divergence.check_epoch(train_value, history["train"][1 if epoch > 1 else 0], epoch)
        except FloatingPointError as err:
            divergence.restore(model, optimizer, saved)
            raise FloatingPointError(f"{err}; the weights and optimiser state were put back as they were at the "
                                     f"{'end of epoch ' + str(epoch - 1) if epoch > 1 else 'start'}: lower the "
                                     "learning rate") from None
        optimizer.end_epoch()
        for name, data in sets.items():
            history[name].append(train_value if name == "train" else evaluate(model, *data))
        if callback is not None:
            callback(epoch - 1, model, history)
    return history
