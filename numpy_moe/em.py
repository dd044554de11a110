"""The M-step solvers of EM for mixtures of experts (Jordan & Jacobs 1994; MATH.md §11).

Both take a design matrix ``X1`` (N, P) whose last column is the constant 1 and per-sample weights that
the E-step computed (posterior probabilities), and solve their weighted problem exactly:

- :func:`weighted_least_squares`: a linear-Gaussian expert's mean and variance,
  ``β = argmin Σ_n w_n ‖y_n - x_n β‖²`` and ``σ² = Σ_n w_n ‖y_n - x_n β‖² / (O Σ_n w_n)``.
- :func:`irls_softmax`: a multinomial-logit (softmax) fit to soft counts ``T`` (N, K), the M-step of
  every gate of a (hierarchical) mixture and of every softmax expert, by Newton's method
  (iteratively reweighted least squares) with step halving, so each step increases the objective.

``ridge`` adds ``-ridge/2 ‖·‖²`` on the weights (bias included) to each objective: a stabiliser for
experts that own almost no samples and for gates whose classes the data separate (the unpenalised
logit optimum then lies at infinity). It is the objective the solvers maximise and the tests check them
against (scipy.optimize.minimize of the same function).

The three functions are public (MATH.md §11 and the README's layout name them) and check their arguments:
float, finite arrays of matching shapes, weights and soft counts >= 0, ``ridge``, ``var_floor`` and ``tol``
finite and >= 0, ``max_iter`` an integer >= 0; a bad one is a ValueError or TypeError that names it.
"""
from . import functional as F
from .backend import asarray, get_array_module
from .validation import check_input, check_positive_int, check_real


def _check_design(X1, other, other_name):
    """X1 (N, P) and ``other`` (N, ·) float and finite, with the same N; returns both as arrays of X1's dtype."""
    X1 = check_input(X1, None, None, name="X1")
    other = check_input(other, None, X1.dtype, name=other_name)
    if other.shape[0] != X1.shape[0]:
        raise ValueError(f"{other_name} has {other.shape[0]} rows (shape {tuple(other.shape)}); X1 has "
                         f"{X1.shape[0]}: expected one row per sample")
    return X1, other


def _check_nonnegative(a, name):
    if a.size and float(a.min()) < 0:
        raise ValueError(f"{name} has a negative entry ({float(a.min()):.3g}); expected values >= 0")
    return a


def _check_softmax_problem(X1, T, W, ridge):
    """The arguments of softmax_objective / irls_softmax, checked and cast to X1's dtype."""
    X1, T = _check_design(X1, T, "T")
    _check_nonnegative(T, "T")
    P, K = X1.shape[1], T.shape[1]
    W = check_input(W, None, X1.dtype, name="W")
    if W.shape != (P, K):
        raise ValueError(f"W has shape {tuple(W.shape)}; expected (P, K) = ({P}, {K}) from X1 (N, P) and T (N, K)")
    return X1, T, W, check_real(ridge, "ridge", 0)


def weighted_least_squares(X1, Y, w, ridge=0.0, var_floor=0.0):
    """The weighted least-squares fit of one linear-Gaussian expert.

    Parameters
    ----------
    X1 : (N, P) design, last column ones. Y : (N, O) targets. w : (N,) weights >= 0 (posteriors).
    ridge : >= 0, adds ridge I to XᵀWX. var_floor : the smallest variance returned.

    Returns
    -------
    beta : (P, O), minimising Σ_n w_n ‖Y_n - X1_n β‖² + ridge ‖β‖²; when that has many minimisers (ridge = 0
        and fewer weighted samples than P), the one of least norm.
    var : float, Σ_n w_n ‖Y_n - X1_n β‖² / (O Σ_n w_n), at least var_floor (the MLE of σ² given β).
    """
    X1, Y = _check_design(X1, Y, "Y")
    w = asarray(w)
    if w.shape != (X1.shape[0],):
        raise ValueError(f"w has shape {tuple(w.shape)}; expected ({X1.shape[0]},), one weight per row of X1")
    w = _check_nonnegative(check_input(w[:, None], 1, X1.dtype, name="w")[:, 0], "w")
    ridge, var_floor = check_real(ridge, "ridge", 0), check_real(var_floor, "var_floor", 0)
    xp = get_array_module(X1)
    P, O = X1.shape[1], Y.shape[1]
    A = X1.T @ (w[:, None] * X1) + ridge * xp.eye(P, dtype=X1.dtype)  # (P, P)
    rhs = X1.T @ (w[:, None] * Y)  # (P, O)
    try:
        beta = xp.linalg.solve(A, rhs)
    except ValueError:  # numpy's LinAlgError('Singular matrix'): the normal equations hold on an affine set of β
        beta = xp.linalg.lstsq(A, rhs, rcond=None)[0]
    total = float(w.sum())
    sse = float((w * ((Y - X1 @ beta) ** 2).sum(axis=1)).sum())
    return beta, max(sse / (O * total) if total > 0 else var_floor, var_floor)


def softmax_objective(X1, T, W, ridge=0.0):
    """Σ_n Σ_k T_nk log softmax(X1 W)_nk - ridge/2 ‖W_free‖², W_free = W[:, :K-1] - W[:, K-1:].

    The weighted log-likelihood of soft counts T (N, K) under a multinomial logit W (P, K); the penalty
    is on the logit differences to the last column, so the objective, like the softmax, is unchanged by
    adding one vector to every column of W.
    """
    return _objective(*_check_softmax_problem(X1, T, W, ridge))


def _objective(X1, T, W, ridge):
    """softmax_objective on checked arguments (irls_softmax's line search calls it many times)."""
    free = W[:, :-1] - W[:, -1:]
    return float((T * F.log_softmax(X1 @ W)).sum()) - 0.5 * ridge * float((free ** 2).sum())


def irls_softmax(X1, T, W, ridge=0.0, max_iter=50, tol=1e-10):
    """Maximise :func:`softmax_objective` over W by Newton steps (IRLS) with step halving.

    Parameters
    ----------
    X1 : (N, P) design. T : (N, K) soft counts >= 0 (rows need not sum to 1: row n weighs s_n = Σ_k T_nk).
    W : (P, K) starting weights (not modified). ridge : >= 0 (> 0 makes the optimum unique and finite).
    max_iter : most Newton steps. tol : stop when a step raises the objective by less than tol (1 + |f|).

    Returns
    -------
    W : (P, K), with last column 0 (the reference class: logits are defined up to a shift per row).
    n_iter : Newton steps taken.

    Notes
    -----
    Free parameters θ = W[:, :K-1] with W[:, K-1] = 0 (the start is shifted to it first). With
    G = softmax(X1 W) and s_n = Σ_k T_nk::

        gradient  g = X1ᵀ (T - s ⊙ G)[:, :K-1] - ridge θ                          (P, K-1)
        Hessian   H[(p,k),(q,l)] = -Σ_n s_n X1_np X1_nq (δ_kl G_nk - G_nk G_nl) - ridge δ   (P(K-1))²

    The Newton step is θ - H⁻¹ g; it is halved until the objective does not decrease (H is negative
    semi-definite, so the step is an ascent direction and a small enough fraction of it increases f).
    """
    X1, T, W, ridge = _check_softmax_problem(X1, T, W, ridge)
    max_iter, tol = check_positive_int(max_iter, "max_iter", minimum=0), check_real(tol, "tol", 0)
    xp = get_array_module(X1)
    P, K = W.shape
    W = W - W[:, -1:]  # same softmax, reference column 0
    s = T.sum(axis=1)  # (N,)
    f = _objective(X1, T, W, ridge)
    eye = xp.eye(P * (K - 1), dtype=X1.dtype)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        G = F.softmax(X1 @ W)[:, :-1]  # (N, K-1)
        grad = X1.T @ (T[:, :-1] - s[:, None] * G) - ridge * W[:, :-1]  # (P, K-1)
        inner = xp.einsum("n,nk,kl->nkl", s, G, xp.eye(K - 1, dtype=X1.dtype)) - xp.einsum("n,nk,nl->nkl", s, G, G)
        H = xp.einsum("np,nkl,nq->pkql", X1, inner, X1).reshape(P * (K - 1), P * (K - 1)) + ridge * eye
        step = xp.linalg.lstsq(H, grad.reshape(-1), rcond=None)[0].reshape(P, K - 1)  # -H⁻¹g (H here is -Hessian)
        t = 1.0
        for _ in range(40):
            W_new = xp.concatenate([W[:, :-1] + t * step, W[:, -1:]], axis=1)
            f_new = _objective(X1, T, W_new, ridge)
            if f_new >= f:
                break
            t *= 0.5
        else:
            break  # no fraction of the step increases f: W is optimal to rounding
        W, gain, f = W_new, f_new - f, f_new
        if gain < tol * (1 + abs(f)):
            break
    return W, n_iter
