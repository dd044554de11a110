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
"""
from . import functional as F
from .backend import get_array_module


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
    xp = get_array_module(X1)
    P, K = W.shape
    W = W - W[:, -1:]  # same softmax, reference column 0
    s = T.sum(axis=1)  # (N,)
    f = softmax_objective(X1, T, W, ridge)
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
            f_new = softmax_objective(X1, T, W_new, ridge)
            if f_new >= f:
                break
            t *= 0.5
        else:
            break  # no fraction of the step increases f: W is optimal to rounding
        W, gain, f = W_new, f_new - f, f_new
        if gain < tol * (1 + abs(f)):
            break
    return W, n_iter
