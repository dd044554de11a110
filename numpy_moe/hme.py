"""Hierarchical mixtures of experts, fitted by EM or by gradient (Jordan & Jacobs 1994; MATH.md §11).

A tree of softmax gates whose leaves are experts. Every gate and every expert sees the same input x
(with bias, x̃ = [x, 1]); the prior of leaf e is the product of the gate probabilities on its path,
``π_e(x) = Π_{(j, c) on the path to e} g_{j,c}(x)``, ``g_j = softmax(x̃ G_j)``, and the model is the mixture
``p(y | x) = Σ_e π_e(x) p_e(y | x)``. Experts are linear-Gaussian, ``N(y; x̃ V_e, σ_e² I)`` with their own
variance (``expert="gaussian"``, regression), or softmax, ``softmax(x̃ V_e)_y`` (``expert="softmax"``,
classification). A tree of depth 1 is the flat mixture of experts.

The tree is given as nested lists of ints: an int k is a gate over k experts; a list is a gate over the
subtrees it lists. ``4`` is a flat mixture of 4 experts, ``[2, 2]`` the two-level binary tree of Jordan &
Jacobs (4 experts), ``[3, [2, 2], 1]`` a root over a gate of 3, a two-level subtree and a single expert
(a gate over one child is the constant 1 and has no parameters). Experts are numbered depth first.

Training:

- :func:`fit_em` runs :meth:`HierarchicalMoE.em_step`: E-step posteriors h (N, E) over the leaves, then
  each expert by weighted least squares (Gaussian) or IRLS (softmax) with weights h_e, and each gate j by
  IRLS on the posterior masses of its children (numpy_moe.em). The log-likelihood minus the ridge penalty
  never decreases (the log-likelihood itself when ridge=0; with a ridge it can dip slightly, MATH.md §11.3).
- gradient training: :meth:`HierarchicalMoE.nll_grads` sets ``grads`` to the gradient of the mean
  negative log-likelihood, for any numpy_moe optimiser. ``forward`` / ``backward`` are the prediction and
  its hand-derived gradient (the mixture mean, or the log of the mixture's class probabilities, which
  ``train.fit(loss="cross_entropy")`` turns into exactly the mixture's negative log-likelihood).

Parameters: ``G{j}`` (D+1, children of gate j) for each gate with two or more children, in depth-first
order; ``V`` (E, D+1, O); ``log_var`` (E,) for Gaussian experts (σ_e² = exp(log_var_e), so gradient
steps keep it positive).
"""
import math
import numbers

from . import functional as F
from .backend import asarray, default_rng, get_array_module, sum_rows
from .em import irls_softmax, weighted_least_squares
from .layers import Module, check_budget, normal_param, zeros_param
from .validation import check_input, check_labels, check_positive_int, check_real

EXPERTS = ("gaussian", "softmax")
INIT_STD = 0.1


def parse_tree(tree):
    """Gates of a tree spec as (first leaf, [leaves of each child]) and the number of leaves.

    Returns
    -------
    gates : list, depth first, of lists of (start, stop) leaf ranges, one per child of the gate.
    n_leaves : E.
    """
    gates = []

    def walk(node, start, depth):
        if depth > 32:
            raise ValueError(f"tree={tree!r} is nested deeper than 32 levels")
        if isinstance(node, bool) or not isinstance(node, (numbers.Integral, list, tuple)):  # np.int64 too
            raise TypeError(f"tree={tree!r}: every node must be an int >= 1 or a non-empty list of nodes, "
                            f"got {node!r}")
        slot = len(gates)
        gates.append(None)
        if isinstance(node, numbers.Integral):
            node = int(node)
            if node < 1:
                raise ValueError(f"tree={tree!r}: a gate needs at least 1 expert, got {node}")
            gates[slot] = [(start + i, start + i + 1) for i in range(node)]
            return start + node
        if not node:
            raise ValueError(f"tree={tree!r}: a gate needs at least one child, got an empty list")
        ranges, stop = [], start
        for child in node:
            new = walk(child, stop, depth + 1)
            ranges.append((stop, new))
            stop = new
        gates[slot] = ranges
        return stop

    n_leaves = walk(tree, 0, 0)
    return [g for g in gates if len(g) > 1], n_leaves


def _count_leaves(node, depth=0):
    """The number of leaves of a tree spec, counted without building anything (what parse_tree refuses
    counts 0: parse_tree then says why)."""
    if depth > 32:
        return 0
    if isinstance(node, numbers.Integral) and not isinstance(node, bool):
        return max(int(node), 0)
    if isinstance(node, (list, tuple)):
        return sum(_count_leaves(child, depth + 1) for child in node)
    return 0


class HierarchicalMoE(Module):
    """A (hierarchical) mixture of linear-Gaussian or softmax experts under a tree of softmax gates.

    Parameters
    ----------
    n_features : D. n_outputs : O (regression) or the number of classes C (softmax experts, >= 2).
    tree : int or nested lists of ints (module docstring); default 2, a flat mixture of 2 experts.
    expert : "gaussian" (regression) or "softmax" (classification).
    seed : int or numpy Generator (draws the gates, then V). dtype : float32 or float64.

    Shapes: x (N, D) -> forward (N, O): the mixture mean Σ_e π_e x̃ V_e (gaussian) or the log of the
    mixture's class probabilities log Σ_e π_e softmax(x̃ V_e) (softmax).
    Targets y: (N, O) or (N,) floats (gaussian); (N,) integer labels in [0, C) (softmax).

    Notes
    -----
    log p_e = -O/2 log(2π σ_e²) - ‖y - x̃ V_e‖² / (2 σ_e²)   or   log softmax(x̃ V_e)_y.
    ℓ_n = logsumexp_e (log π_e + log p_e); posterior h_e = exp(log π_e + log p_e - ℓ_n).
    For a scalar L with u_e = ∂L/∂log π_e, gate j's logits a_j get ∂L/∂a_{j,c} = U_{j,c} - U_j g_{j,c},
    U_{j,c} = Σ_{e under child c} u_e, U_j = Σ_c U_{j,c} (the softmax's gradient, summed over the leaves
    below each child). For ℓ, u = h.
    """

    def __init__(self, n_features, n_outputs, tree=2, expert="gaussian", seed=None, dtype="float64"):
        super().__init__(dtype)
        if expert not in EXPERTS:
            raise ValueError(f"expert={expert!r} must be one of {EXPERTS}")
        self.expert = expert
        D = self.n_features = check_positive_int(n_features, "n_features")
        O = self.n_outputs = check_positive_int(n_outputs, "n_outputs", 2 if expert == "softmax" else 1)
        self.tree = tree
        # parse_tree builds a list entry per leaf: bound the leaves by V's size first, against the parameter
        # budget (numpy_moe.io builds from files under one) and the machine's memory (tree=[10**12, 2] would
        # otherwise build lists until memory ran out)
        check_budget((_count_leaves(tree), D + 1, O), self.dtype)
        self.gates, E = parse_tree(tree)
        self.n_experts = E
        rng = default_rng(seed)
        for j, ranges in enumerate(self.gates):
            self.params[f"G{j}"] = normal_param(rng, INIT_STD, (D + 1, len(ranges)), self.dtype)
        self.params["V"] = normal_param(rng, INIT_STD, (E, D + 1, O), self.dtype)
        if expert == "gaussian":
            self.params["log_var"] = zeros_param((E,), self.dtype)
        self.zero_grad()

    # ----- the pieces ----------------------------------------------------------------------------
    def _with_bias(self, x, min_rows=0):
        x = check_input(x, self.n_features, self.dtype, min_rows=min_rows)
        xp = get_array_module(x)
        return xp.concatenate([x, xp.ones((x.shape[0], 1), dtype=x.dtype)], axis=1)  # (N, D+1)

    def _targets(self, y, n_samples):
        """(N, O) float targets (gaussian) or (N,) labels (softmax), validated."""
        if self.expert == "softmax":
            return check_labels(y, self.n_outputs, n_samples, "y")
        y = y if hasattr(y, "ndim") else asarray(y)
        if y.ndim == 1 and self.n_outputs == 1:
            y = y[:, None]
        y = check_input(y, self.n_outputs, self.dtype, "y")
        if y.shape[0] != n_samples:
            raise ValueError(f"y has {y.shape[0]} rows; expected {n_samples}, one per row of x")
        return y

    def _members(self, j, xp):
        """(children, E) 0/1: leaf e lies under child c of gate j."""
        M = xp.zeros((len(self.gates[j]), self.n_experts), dtype=self.dtype)
        for c, (a, b) in enumerate(self.gates[j]):
            M[c, a:b] = 1
        return M

    def _gate_probs(self, x1):
        """g_j = softmax(x̃ G_j) for every gate: list of (N, children)."""
        return [F.softmax(x1 @ self.params[f"G{j}"]) for j in range(len(self.gates))]

    def _log_prior(self, x1):
        """log π (N, E): the sum over each leaf's path of log g_{j,c}, from the logits by log-softmax (the log
        of an underflowed g, clipped at log(tiny) = -708, put a far-away expert's log prior at -708 where it
        is, say, -35000, and so gave it the sample and a log-likelihood hundreds of nats too high)."""
        xp = get_array_module(x1)
        logp = xp.zeros((x1.shape[0], self.n_experts), dtype=self.dtype)
        for j in range(len(self.gates)):
            logp = logp + F.log_softmax(x1 @ self.params[f"G{j}"]) @ self._members(j, xp)
        return logp

    def _gate_logit_grads(self, u, g, xp):
        """∂L/∂a_j = U_{j,c} - U_j g_{j,c} for each gate from u = ∂L/∂log π (N, E)."""
        out = []
        for j, gj in enumerate(g):
            U = u @ self._members(j, xp).T  # (N, children)
            out.append(U - U.sum(axis=1, keepdims=True) * gj)
        return out

    def _expert_log_lik(self, x1, y):
        """log p_e(y | x) (N, E) and the experts' outputs W = x̃ V_e (N, E, O)."""
        xp = get_array_module(x1)
        W = xp.einsum("nd,edo->neo", x1, self.params["V"])
        if self.expert == "softmax":
            return xp.take_along_axis(F.log_softmax(W, axis=2), y[:, None, None], axis=2)[:, :, 0], W
        var = xp.exp(self.params["log_var"])  # (E,)
        sq = ((y[:, None, :] - W) ** 2).sum(axis=2)  # (N, E)
        return -0.5 * self.n_outputs * xp.log(2 * math.pi * var) - 0.5 * sq / var, W

    def gate(self, x):
        """π(x) (N, E): each expert's prior weight, the product of the gates on its path."""
        x1 = self._with_bias(x)  # on the backend: its module, not the caller's x's, computes
        return get_array_module(x1).exp(self._log_prior(x1))

    def expert_outputs(self, x):
        """x̃ V_e (N, E, O): each expert's mean (gaussian) or logits (softmax)."""
        x1 = self._with_bias(x)
        return get_array_module(x1).einsum("nd,edo->neo", x1, self.params["V"])

    def log_likelihood(self, x, y):
        """Σ_n log p(y_n | x_n), the total log-likelihood (natural log)."""
        x1 = self._with_bias(x)
        lp, _ = self._expert_log_lik(x1, self._targets(y, x1.shape[0]))
        return float(F.logsumexp(self._log_prior(x1) + lp).sum())

    def posterior(self, x, y):
        """h (N, E): P(expert e | x, y), the E-step's responsibilities."""
        x1 = self._with_bias(x)
        lp, _ = self._expert_log_lik(x1, self._targets(y, x1.shape[0]))
        return F.softmax(self._log_prior(x1) + lp)

    # ----- prediction and its gradient -----------------------------------------------------------
    def forward(self, x):
        x1 = self._with_bias(x)
        xp = get_array_module(x1)
        g = self._gate_probs(x1)
        log_prior = self._log_prior(x1)  # (N, E)
        W = xp.einsum("nd,edo->neo", x1, self.params["V"])  # (N, E, O)
        if self.expert == "gaussian":
            prior = xp.exp(log_prior)
            self.cache = (x1, g, prior, W)
            return xp.einsum("ne,neo->no", prior, W)  # (N, O)
        # log Σ_e π_e softmax(W_e)_c through log-sum-exp: a class every expert gives less than the smallest
        # float still gets its exact log-probability (and a finite gradient)
        log_q = F.log_softmax(W, axis=2)  # (N, E, C)
        joint = log_prior[:, :, None] + log_q  # (N, E, C)
        out = F.logsumexp(joint, axis=1)  # (N, C)
        self.cache = (x1, g, log_q, xp.exp(joint - out[:, None, :]))  # R: P(expert e | x, class c), (N, E, C)
        return out

    def backward(self, dy):
        """Gaussian: ∂/∂W_e = π_e dy, u_e = π_e <dy, W_e>. Softmax: with R_ec = π_e Q_ec / mix_c (the posterior
        of expert e given class c), ∂/∂log Q_ec = R_ec dy_c, u_e = Σ_c R_ec dy_c, then each expert's log-softmax."""
        xp = get_array_module(dy)
        x1, g = self.cache[:2]
        if self.expert == "gaussian":
            prior, W = self.cache[2:]
            dW = prior[:, :, None] * dy[:, None, :]  # (N, E, O)
            u = prior * xp.einsum("no,neo->ne", dy, W)
        else:
            log_q, R = self.cache[2:]
            dlog_q = R * dy[:, None, :]  # (N, E, C)
            dW = F.log_softmax_backward(dlog_q, log_q, axis=2)
            u = dlog_q.sum(axis=2)
        return self._param_grads(x1, g, u, dW)

    def _param_grads(self, x1, g, u, dW):
        """Fill grads from u = ∂L/∂log π (N, E) and dW = ∂L/∂(x̃ V_e) (N, E, O); return ∂L/∂x (N, D)."""
        xp = get_array_module(x1)
        self.grads["V"] = xp.einsum("nd,neo->edo", x1, dW)
        dx1 = xp.einsum("neo,edo->nd", dW, self.params["V"])
        for j, da in enumerate(self._gate_logit_grads(u, g, xp)):
            self.grads[f"G{j}"] = x1.T @ da
            dx1 = dx1 + da @ self.params[f"G{j}"].T
        return dx1[:, :-1]

    def nll_grads(self, x, y):
        """The mean negative log-likelihood -ℓ/N; sets ``grads`` to its gradient (gradient training).

        ∂ℓ/∂log p_e = h_e, so ∂ℓ/∂W_e = h_e (y - W_e)/σ_e² (gaussian) or h_e (onehot(y) - softmax(W_e)),
        ∂ℓ/∂log_var_e = h_e (‖y - W_e‖² / (2σ_e²) - O/2), and u = h for the gates.
        """
        x1 = self._with_bias(x, min_rows=1)  # a mean over the samples
        xp = get_array_module(x1)
        N = x1.shape[0]
        y = self._targets(y, N)
        g = self._gate_probs(x1)
        lp, W = self._expert_log_lik(x1, y)
        joint = self._log_prior(x1) + lp
        h = F.softmax(joint)  # (N, E)
        if self.expert == "softmax":
            R = xp.eye(self.n_outputs, dtype=self.dtype)[y][:, None, :] - F.softmax(W, axis=2)
            dW = h[:, :, None] * R
        else:
            var = xp.exp(self.params["log_var"])
            resid = y[:, None, :] - W  # (N, E, O)
            dW = h[:, :, None] * resid / var[:, None]
            self.grads["log_var"] = -sum_rows(h * (0.5 * (resid ** 2).sum(axis=2) / var - 0.5 * self.n_outputs)) / N
        self._param_grads(x1, g, -h / N, -dW / N)
        return -float(F.logsumexp(joint).sum()) / N

    # ----- EM ------------------------------------------------------------------------------------
    def m_step(self, x, y, h, ridge=1e-6, var_floor=1e-8):
        """Maximise the expected complete log-likelihood given responsibilities h (N, E), in place.

        Experts: weighted least squares (gaussian) or IRLS on counts h_e onehot(y) (softmax), weights h_e.
        Gate j: IRLS on the posterior masses of its children, h Mⱼᵀ (N, children).
        With ``ridge`` > 0 every step maximises the expected complete log-likelihood minus
        :meth:`penalty`: a Gaussian expert's β given its old σ² (ridge σ²_old in the normal equations),
        then σ² given β (an ECM step, Meng & Rubin 1993), so EM still never decreases ℓ - penalty.
        ridge : >= 0. var_floor : > 0, the smallest variance of a Gaussian expert (one that fits its samples
        exactly would otherwise reach σ² = 0 and a log-likelihood of +inf).
        """
        ridge = check_real(ridge, "ridge", 0)
        var_floor = check_real(var_floor, "var_floor", 0, low_open=True)  # log σ² must stay finite
        x1 = self._with_bias(x)
        xp = get_array_module(x1)  # the backend's (check_input moved x there), not the caller's x's
        y = self._targets(y, x1.shape[0])
        h = asarray(h)
        if tuple(h.shape) != (x1.shape[0], self.n_experts):
            raise ValueError(f"h has shape {tuple(h.shape)}; expected {(x1.shape[0], self.n_experts)}, the "
                             "responsibilities of each sample over the experts")
        if not bool(xp.isfinite(h).all()) or bool((h < 0).any()):  # before any parameter is changed
            raise ValueError("h contains NaN, inf or negative values; expected responsibilities: finite weights >= 0")
        for j in range(len(self.gates)):
            key = f"G{j}"
            self.params[key][...] = irls_softmax(x1, h @ self._members(j, xp).T, self.params[key], ridge)[0]
        if self.expert == "gaussian":
            for e in range(self.n_experts):
                var_old = math.exp(float(self.params["log_var"][e]))  # β given the old σ², then σ² given β
                beta, var = weighted_least_squares(x1, y, h[:, e], ridge * var_old, var_floor)
                self.params["V"][e] = beta
                self.params["log_var"][e] = math.log(var)
        else:
            onehot = xp.eye(self.n_outputs, dtype=self.dtype)[y]
            for e in range(self.n_experts):
                self.params["V"][e] = irls_softmax(x1, h[:, e:e + 1] * onehot, self.params["V"][e], ridge)[0]

    def em_step(self, x, y, ridge=1e-6, var_floor=1e-8):
        """One EM iteration (E-step at the current parameters, then :meth:`m_step`)."""
        self.m_step(x, y, self.posterior(x, y), ridge, var_floor)

    def penalty(self, ridge):
        """ridge/2 times the squared norms the M-steps penalise (numpy_moe.em): EM ascends ℓ minus this."""
        total = 0.0
        for key, p in self.params.items():
            if key.startswith("G") or key == "V" and self.expert == "softmax":
                axis = 1 if key.startswith("G") else 2
                ref = p[:, -1:] if axis == 1 else p[:, :, -1:]
                total += float(((p - ref) ** 2).sum())
            elif key == "V":
                total += float((p ** 2).sum())
        return 0.5 * ridge * total


def init_responsibilities(x, y, n_experts, seed=None, task="regression"):
    """Spatially coherent random responsibilities (N, E) to start EM from (by an M-step).

    E data rows are drawn as centres in the standardised joint space z = [x, y] (labels one-hot);
    h_ne ∝ exp(-‖z_n - z_centre(e)‖² / 2). Starting from random responsibilities, rather than from random
    weights, gives each expert a different region at once.
    task : "regression" (y values) or "classification" (y integer labels, one-hot in z).
    x : (N, D) finite floats, N >= 1. y : (N,) or (N, O) finite values, or (N,) integer labels >= 0.
    """
    if task not in ("regression", "classification"):  # another word would silently treat labels as values
        raise ValueError(f"task={task!r} must be 'regression' or 'classification'")
    n_experts = check_positive_int(n_experts, "n_experts")
    x = asarray(x)
    x = check_input(x, None, x.dtype, "x", min_rows=1)  # NaN or inf would give NaN responsibilities
    xp = get_array_module(x)
    N = x.shape[0]
    if task == "classification":
        y = asarray(y)
        n_classes = int(y.max()) + 1 if y.dtype.kind in "iu" and y.size else 1  # labels >= 0, one column each
        y = xp.eye(n_classes, dtype=x.dtype)[check_labels(y, n_classes, N)]
    else:
        y = asarray(y)
        if y.ndim not in (1, 2) or y.shape[0] != N:
            raise ValueError(f"y has shape {tuple(y.shape)}; expected ({N},) or ({N}, O) targets, one per row of x")
        y = check_input(y.reshape(N, -1), None, x.dtype, "y")
    z = xp.concatenate([x, y.reshape(len(x), -1).astype(x.dtype)], axis=1)
    z = (z - z.mean(axis=0)) / xp.maximum(z.std(axis=0), 1e-12)
    centres = z[asarray(default_rng(seed).choice(len(z), size=n_experts, replace=len(z) < n_experts))]
    return F.softmax(-0.5 * ((z[:, None, :] - centres[None]) ** 2).sum(axis=2), axis=1)  # (N, E)


def fit_em(model, x, y, max_iter=200, tol=1e-8, ridge=1e-6, var_floor=1e-8, callback=None):
    """Run EM on ``model`` in place until the objective (the log-likelihood minus the ridge penalty) gains
    less than ``tol`` per sample in an iteration.

    Parameters
    ----------
    model : HierarchicalMoE. x : (N, D). y : targets. max_iter : most EM iterations (>= 1).
    tol : >= 0, stop when (o_t - o_{t-1}) / N < tol, o = ℓ - ``model.penalty(ridge)`` (the "objective" below).
    ridge, var_floor : see :meth:`HierarchicalMoE.m_step`.
    callback : optional ``callback(iteration, model)`` after each iteration.

    Returns
    -------
    history : dict with "log_likelihood" (total ℓ, entry 0 at the start, then one per iteration),
    "objective" (ℓ minus the ridge penalty, the quantity EM never decreases), "n_iter", "converged".
    """
    max_iter = check_positive_int(max_iter, "max_iter")
    tol, ridge = check_real(tol, "tol", 0), check_real(ridge, "ridge", 0)
    var_floor = check_real(var_floor, "var_floor", 0, low_open=True)
    if callback is not None and not callable(callback):  # before the first EM step changes the model
        raise TypeError(f"callback={callback!r:.60} must be None or a function callback(iteration, model)")
    N = model._with_bias(x, min_rows=1).shape[0]  # the gain is per sample
    ll = model.log_likelihood(x, y)
    history = {"log_likelihood": [ll], "objective": [ll - model.penalty(ridge)], "n_iter": 0, "converged": False}
    for it in range(1, max_iter + 1):
        model.em_step(x, y, ridge, var_floor)
        ll = model.log_likelihood(x, y)
        history["log_likelihood"].append(ll)
        history["objective"].append(ll - model.penalty(ridge))
        history["n_iter"] = it
        if callback is not None:
            callback(it, model)
        if (history["objective"][-1] - history["objective"][-2]) / N < tol:
            history["converged"] = True
            break
    return history
