"""EM for (hierarchical) mixtures of experts (numpy_moe/em.py, numpy_moe/hme.py, MATH.md §11).

References: scipy.optimize.minimize on the same weighted objective for the M-step solvers; the defining
property of EM (the log-likelihood, minus the ridge penalty when there is one, never decreases); a
hand-worked posterior; central differences (h = 1e-6, float64, tol 1e-7 as for one layer, MATH.md §8)
for the gradient-trained variant; and R's mixtools::hmeEM on its NOdata example (tests/fixtures).
"""
import json
import re
import shutil
import subprocess
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import minimize

from experiments.em import em_on_mixtools_example
from numpy_moe.em import irls_softmax, softmax_objective, weighted_least_squares
from numpy_moe.gradcheck import check_module, numerical_gradient, rel_error
from numpy_moe.hme import HierarchicalMoE, fit_em, init_responsibilities, parse_tree

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "hme_mixtools.json"
R_SCRIPT = ROOT / "experiments" / "r" / "hme_mixtools.R"
TREES = [3, [2, 2], [3, [2, 2], 1]]


def design(rng, N, D):
    return np.column_stack([rng.standard_normal((N, D)), np.ones(N)])


# ----- M-step solvers ------------------------------------------------------------------------------
@pytest.mark.parametrize("ridge", [0.0, 0.1])
def test_irls_matches_a_direct_optimiser_of_the_same_objective(rng, ridge):
    N, D, K = 60, 2, 3
    X1 = design(rng, N, D)
    T = rng.dirichlet(np.ones(K), N) * rng.uniform(0.2, 1.0, (N, 1))  # soft counts, rows sum to s_n <= 1
    W, n_iter = irls_softmax(X1, T, rng.standard_normal((D + 1, K)), ridge, tol=1e-14)

    def negative(theta):
        return -softmax_objective(X1, T, np.column_stack([theta.reshape(D + 1, K - 1), np.zeros(D + 1)]), ridge)

    ref = minimize(negative, np.zeros((D + 1) * (K - 1)), method="BFGS", options={"gtol": 1e-10})
    W_ref = np.column_stack([ref.x.reshape(D + 1, K - 1), np.zeros(D + 1)])
    # BFGS stops at gtol 1e-10; the optimum is well conditioned (N = 60 soft counts), so 1e-6 on W
    np.testing.assert_allclose(W, W_ref, atol=1e-6)
    assert softmax_objective(X1, T, W, ridge) >= -ref.fun - 1e-10
    assert n_iter < 15  # Newton converges quadratically


def test_irls_is_invariant_to_a_shift_of_the_start_and_puts_the_reference_at_zero(rng):
    X1, T = design(rng, 40, 2), rng.dirichlet(np.ones(3), 40)
    W0 = rng.standard_normal((3, 3))
    W1 = irls_softmax(X1, T, W0, 1e-3)[0]
    W2 = irls_softmax(X1, T, W0 + rng.standard_normal((3, 1)), 1e-3)[0]
    np.testing.assert_allclose(W1, W2, atol=1e-9)
    assert np.all(W1[:, -1] == 0)


def test_irls_stays_finite_on_separable_counts_with_a_ridge(rng):
    X1 = design(rng, 30, 1)
    T = np.eye(2)[(X1[:, 0] > 0).astype(int)]  # classes separated by x > 0: no finite unpenalised optimum
    W = irls_softmax(X1, T, np.zeros((2, 2)), ridge=1e-3)[0]
    assert np.isfinite(W).all()
    assert W[0, 0] < -1  # the logit difference still points the right way, with a large slope


def test_weighted_least_squares_is_the_minimiser_of_the_weighted_error(rng):
    N, D, O = 50, 3, 2
    X1, Y, w = design(rng, N, D), rng.standard_normal((N, O)), rng.uniform(0, 1, N)
    beta, var = weighted_least_squares(X1, Y, w, ridge=0.5)

    def objective(b):
        return float((w * ((Y - X1 @ b.reshape(D + 1, O)) ** 2).sum(axis=1)).sum() + 0.5 * (b ** 2).sum())

    ref = minimize(objective, np.zeros((D + 1) * O), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(beta, ref.reshape(D + 1, O), atol=1e-7)
    resid = ((Y - X1 @ beta) ** 2).sum(axis=1)
    assert var == pytest.approx((w * resid).sum() / (O * w.sum()), rel=1e-12)
    assert weighted_least_squares(X1, Y, np.zeros(N), ridge=1.0, var_floor=1e-3)[1] == 1e-3


@pytest.mark.parametrize("key,bad,error,words", [
    ("T", lambda X1, T: T[:5], ValueError, "T has 5 rows"), ("W", lambda X1, T: np.zeros((2, 3)), ValueError,
                                                           "W has shape (2, 3)"),
    ("W", lambda X1, T: np.zeros((3, 2)), ValueError, "W has shape (3, 2)"),
    ("T", lambda X1, T: -T, ValueError, "T has a negative entry"),
    ("T", lambda X1, T: np.where(T > 0.5, np.nan, T), ValueError, "T contains NaN"),
    ("X1", lambda X1, T: np.where(X1 > 1, np.inf, X1), ValueError, "X1 contains NaN or inf"),
    ("X1", lambda X1, T: X1[:, 0], ValueError, "X1 has ndim=1"),
    ("X1", lambda X1, T: X1.astype(int), TypeError, "X1 has dtype int"),
    ("ridge", lambda X1, T: -1.0, ValueError, "ridge=-1.0"), ("ridge", lambda X1, T: np.nan, ValueError, "ridge=nan"),
    ("max_iter", lambda X1, T: -3, ValueError, "max_iter=-3"), ("max_iter", lambda X1, T: 2.5, TypeError, "max_iter=2.5"),
    ("tol", lambda X1, T: -1.0, ValueError, "tol=-1.0")])
def test_irls_softmax_refuses_bad_arguments_by_name(key, bad, error, words):
    """Before, these gave a shape error from inside NumPy, LAPACK's 'SVD did not converge' after its own
    warnings, or an answer without a word: negative counts or a negative ridge returned weights (zeros, or
    a stationary point of a function that is no longer concave), max_iter=-3 returned the start."""
    rng = np.random.default_rng(0)
    X1, T = design(rng, 20, 2), rng.dirichlet(np.ones(3), 20)
    args = {"X1": X1, "T": T, "W": np.zeros((3, 3)), "ridge": 0.0, "max_iter": 50, "tol": 1e-10}
    args[key] = bad(X1, T)
    with pytest.raises(error, match=re.escape(words)):
        irls_softmax(**args)
    if key not in ("max_iter", "tol"):  # the objective takes the other four
        with pytest.raises(error, match=re.escape(words)):
            softmax_objective(args["X1"], args["T"], args["W"], args["ridge"])


@pytest.mark.parametrize("change,error,words", [
    ({"Y": np.zeros((5, 2))}, ValueError, "Y has 5 rows"), ({"w": np.ones(5)}, ValueError, "w has shape (5,)"),
    ({"w": -np.ones(20)}, ValueError, "w has a negative entry"), ({"w": np.full(20, np.nan)}, ValueError, "w contains"),
    ({"ridge": -0.5}, ValueError, "ridge=-0.5"), ({"var_floor": -1.0}, ValueError, "var_floor=-1.0")])
def test_weighted_least_squares_refuses_bad_arguments_by_name(change, error, words):
    rng = np.random.default_rng(0)
    args = {"X1": design(rng, 20, 2), "Y": rng.standard_normal((20, 2)), "w": rng.uniform(0, 1, 20), **change}
    with pytest.raises(error, match=re.escape(words)):
        weighted_least_squares(**args)


def test_weighted_least_squares_without_ridge_on_too_few_samples_is_the_minimum_norm_minimiser(rng):
    # 2 samples, 4 coefficients, ridge 0: XᵀWX is singular and every β on a line fits exactly. Before: numpy's
    # 'Singular matrix' LinAlgError, which also ended fit_em(..., ridge=0) on such data
    X1, Y, w = design(rng, 2, 3), rng.standard_normal((2, 1)), np.array([0.3, 0.7])
    beta, var = weighted_least_squares(X1, Y, w, var_floor=1e-8)
    np.testing.assert_allclose(X1 @ beta, Y, atol=1e-12)  # a minimiser: zero weighted error
    np.testing.assert_allclose(beta, np.linalg.pinv(X1) @ Y, atol=1e-12)  # the one of least norm
    assert var == 1e-8  # the exact fit's variance, floored
    history = fit_em(HierarchicalMoE(3, 1, 2, seed=0), X1[:, :-1], Y[:, 0], ridge=0, max_iter=5)
    assert np.diff(history["log_likelihood"]).min() >= 0


# ----- the tree ------------------------------------------------------------------------------------
def test_parse_tree_numbers_leaves_depth_first():
    assert parse_tree(3) == ([[(0, 1), (1, 2), (2, 3)]], 3)
    assert parse_tree([2, 2]) == ([[(0, 2), (2, 4)], [(0, 1), (1, 2)], [(2, 3), (3, 4)]], 4)
    gates, E = parse_tree([3, [2, 2], 1])  # the gate over one expert has no parameters
    assert E == 8 and len(gates) == 5 and gates[0] == [(0, 3), (3, 7), (7, 8)]


@pytest.mark.parametrize("bad,error", [(0, ValueError), ([], ValueError), ([2, "a"], TypeError),
                                       (True, TypeError), (2.0, TypeError)])
def test_bad_trees_are_rejected_with_the_tree_in_the_message(bad, error):
    with pytest.raises(error, match="tree="):
        HierarchicalMoE(2, 1, bad)


def test_priors_multiply_along_the_path_and_the_posterior_is_bayes_rule_by_hand():
    model = HierarchicalMoE(1, 1, [2, 2])
    for key in ("G0", "G1", "G2"):
        model.params[key][...] = 0
    model.params["G0"][0] = [np.log(3), 0]  # at x = 1: root gives 3/4 to the left subtree, 1/4 right
    x = np.array([[1.0]])
    np.testing.assert_allclose(model.gate(x), [[3 / 8, 3 / 8, 1 / 8, 1 / 8]], rtol=1e-12)
    # experts predict 0, 1, 2, 3 with variance 1; y = 1: likelihoods ∝ exp(-½ (1 - m)²) = e^-½, 1, e^-½, e^-2
    model.params["V"][...] = 0
    model.params["V"][:, 1, 0] = [0, 1, 2, 3]
    joint = np.array([3 / 8 * np.exp(-0.5), 3 / 8, 1 / 8 * np.exp(-0.5), 1 / 8 * np.exp(-2)])
    np.testing.assert_allclose(model.posterior(x, [1.0]), [joint / joint.sum()], rtol=1e-12)
    assert model.log_likelihood(x, [1.0]) == pytest.approx(np.log(joint.sum() / np.sqrt(2 * np.pi)), rel=1e-12)


def test_log_prior_of_an_expert_the_gate_all_but_shuts_out_is_exact():
    # Two experts; at x = 1 the gate's logits differ by 1000, so log π = (-log1p(e^-1000), -1000 - log1p(e^-1000))
    # = (0, -1000) to double precision. Expert 0 predicts 0, expert 1 predicts 10, both with σ² = 0.01; y = 10,
    # so log p_0 = c - 5000, log p_1 = c with c = -½ log(2π 0.01): ℓ = logsumexp(c - 5000, c - 1000) = c - 1000
    # and the posterior is all on expert 1. Before: log π_1 was log(max(g_1, tiny)) = -708.4 (g_1 underflows),
    # so ℓ came out c - 708.4, 292 nats too high (fitted gates reach such logits: -866 on the V regression)
    model = HierarchicalMoE(1, 1, 2)
    model.params["G0"][...] = [[1000.0, 0.0], [0.0, 0.0]]
    model.params["V"][...] = 0
    model.params["V"][1, 1, 0] = 10.0
    model.params["log_var"][...] = np.log(0.01)
    x, y = np.array([[1.0]]), np.array([10.0])
    c = -0.5 * np.log(2 * np.pi * 0.01)
    assert model.log_likelihood(x, y) == pytest.approx(c - 1000, rel=1e-12)
    np.testing.assert_allclose(model.posterior(x, y), [[0.0, 1.0]], atol=1e-300)
    model.params["G0"][0] = [0.0, 1000.0]  # now expert 0 is the one shut out, and the one that fits badly
    assert model.log_likelihood(x, y) == pytest.approx(c, rel=1e-12)
    soft = HierarchicalMoE(1, 2, 2, expert="softmax")  # the same log prior under softmax experts
    soft.params["G0"][...] = [[1000.0, 0.0], [0.0, 0.0]]
    soft.params["V"][...] = 0
    soft.params["V"][0, 1] = [0.0, -2000.0]  # expert 0 gives class 1 log-probability -2000, expert 1 log 1/2
    assert soft.log_likelihood(x, [1]) == pytest.approx(-1000 - np.log(2), rel=1e-12)


# ----- EM ------------------------------------------------------------------------------------------
def random_problem(seed, expert, N=120, D=2):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D))
    if expert == "softmax":
        return x, (np.sin(2 * x[:, 0]) + x[:, 1] ** 2 + 0.5 * rng.standard_normal(N) > 0.5).astype(int) + \
            (x[:, 1] > 1).astype(int)
    return x, np.abs(x[:, 0]) + np.sin(3 * x[:, 1]) + 0.2 * rng.standard_normal(N)


@pytest.mark.parametrize("expert", ["gaussian", "softmax"])
@pytest.mark.parametrize("tree", TREES)
def test_em_never_decreases_the_objective_on_random_problems(expert, tree):
    for seed in range(3):
        x, y = random_problem(seed, expert)
        O = 3 if expert == "softmax" else 1
        model = HierarchicalMoE(2, O, tree, expert=expert, seed=seed)
        history = fit_em(model, x, y, max_iter=25, tol=0, ridge=1e-3)
        steps = np.diff(history["objective"])
        # each M-step maximises (or, by ECM / step halving, increases) the expected complete objective:
        # only rounding can make a step negative (|ℓ| ~ 1e2, float64: 1e-9 is ~1e4 ulps)
        assert steps.min() > -1e-9, (seed, steps.min())
        assert history["log_likelihood"][-1] > history["log_likelihood"][0] + 1


def test_em_without_ridge_never_decreases_the_log_likelihood(rng):
    x, y = random_problem(7, "gaussian")
    model = HierarchicalMoE(2, 1, [2, 2], seed=7)
    model.m_step(x, y, init_responsibilities(x, y, 4, seed=7), ridge=0)
    history = fit_em(model, x, y, max_iter=40, tol=0, ridge=0)
    assert np.diff(history["log_likelihood"]).min() > -1e-9
    assert history["n_iter"] == 40 and not history["converged"]


def test_em_with_a_large_ridge_on_large_targets_never_decreases_the_objective():
    # the Gaussian expert's beta given its old variance needs ridge * var_old in the normal equations (ECM);
    # with ridge 1e-3 and unit-scale targets a plain ridge decreases nothing measurable, with ridge 1 and
    # targets x10 (variances ~ 1e1) it decreases the objective by up to ~10
    for seed in range(3):
        x, y = random_problem(seed, "gaussian")
        history = fit_em(HierarchicalMoE(2, 1, [2, 2], seed=seed), x, 10 * y, max_iter=25, tol=0, ridge=1.0)
        assert np.diff(history["objective"]).min() > -1e-9, seed


def test_em_stops_at_tol_and_reports_it():
    x, y = random_problem(3, "gaussian")
    model = HierarchicalMoE(2, 1, 2, seed=3)
    history = fit_em(model, x, y, max_iter=500, tol=1e-6)
    assert history["converged"] and history["n_iter"] < 500
    assert len(history["log_likelihood"]) == history["n_iter"] + 1
    last = (history["objective"][-1] - history["objective"][-2]) / len(y)
    assert last < 1e-6
    with pytest.raises(ValueError, match="tol=-1"):
        fit_em(model, x, y, tol=-1)


def test_empty_data_and_bad_em_arguments_are_refused_by_name():
    x, y = random_problem(3, "gaussian", N=10)
    model = HierarchicalMoE(2, 1, 2, seed=3)
    # a mean over no sample: before, ZeroDivisionError from deep inside
    with pytest.raises(ValueError, match=r"x has 0 rows \(shape \(0, 2\)\); expected at least 1"):
        fit_em(model, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"x has 0 rows \(shape \(0, 2\)\); expected at least 1"):
        model.nll_grads(x[:0], y[:0])
    # var_floor = 0 let an expert that fits its points exactly reach σ² = 0: before, 'math domain error'
    exact = HierarchicalMoE(1, 1, 2, seed=0)
    with pytest.raises(ValueError, match="var_floor=0 must be a finite number > 0"):
        fit_em(exact, np.array([[0.0], [1.0]]), np.array([0.0, 1.0]), ridge=0, var_floor=0)
    with pytest.raises(ValueError, match="var_floor=-1 must be a finite number > 0"):
        model.m_step(x, y, np.full((10, 2), 0.5), var_floor=-1)
    with pytest.raises(TypeError, match="ridge='a' must be a finite number >= 0"):  # before: '>=' not supported
        fit_em(model, x, y, ridge="a")
    with pytest.raises(ValueError, match="ridge=-1 must be a finite number >= 0"):
        model.m_step(x, y, np.full((10, 2), 0.5), ridge=-1)
    with pytest.raises(ValueError, match=r"h has shape \(10, 3\); expected \(10, 2\)"):  # before: a matmul error
        model.m_step(x, y, np.full((10, 3), 0.5))
    before = {k: p.copy() for k, p in model.params.items()}
    # before: NaN or inf printed LAPACK's "DLASCL parameter number 4 had an illegal value" and raised "SVD did
    # not converge" from the gate's IRLS; negative weights were accepted without a word
    for bad in (np.nan, np.inf, -0.5):
        h = np.full((10, 2), 0.5)
        h[3, 1] = bad
        with pytest.raises(ValueError, match="h contains NaN, inf or negative values"):
            model.m_step(x, y, h)
    with pytest.raises(TypeError, match="callback=3 must be None or a function"):  # before: after an EM step
        fit_em(model, x, y, callback=3)
    for key, p in model.params.items():  # refused before the first EM step changed the model
        np.testing.assert_array_equal(p, before[key], err_msg=key)


def test_init_responsibilities_refuses_an_unknown_task_and_no_expert():
    x, y = random_problem(3, "softmax", N=10)
    # before: task="classifier" silently standardised the labels as values instead of one-hot columns
    with pytest.raises(ValueError, match="task='classifier' must be 'regression' or 'classification'"):
        init_responsibilities(x, y, 2, seed=0, task="classifier")
    with pytest.raises(ValueError, match="n_experts=0"):  # before: an empty (N, 0) array
        init_responsibilities(x, y, 0, seed=0)



@pytest.mark.parametrize("change,task,error,pattern", [
    # before: NaN responsibilities without a word (inf: a RuntimeWarning, then NaN)
    (lambda x, y: (np.where(np.arange(10)[:, None] == 3, np.nan, x), y), "regression", ValueError,
     "x contains NaN or inf"),
    (lambda x, y: (x, np.where(np.arange(10) == 4, np.inf, y)), "regression", ValueError, "y contains NaN or inf"),
    # before: "cannot reshape array of size 4 into shape (10,newaxis)"
    (lambda x, y: (x, y[:4]), "regression", ValueError, r"y has shape \(4,\); expected \(10,\) or \(10, O\)"),
    # before: IndexError "arrays used as indices must be of integer (or boolean) type"
    (lambda x, y: (x, y + 0.5), "classification", TypeError, "y has dtype float64; expected integer class labels"),
    # before: -1 picked the last one-hot row, a class that is not there
    (lambda x, y: (x, np.where(np.arange(10) == 2, -1, y)), "classification", ValueError, r"y has labels in \[-1"),
])
def test_init_responsibilities_refuses_bad_data_by_name(change, task, error, pattern):
    x, y = random_problem(3, "softmax", N=10)
    y = y if task == "classification" else y.astype(float)
    x, y = change(x, y)
    with pytest.raises(error, match=pattern):
        init_responsibilities(x, y, 2, seed=0, task=task)


def test_em_recovers_two_lines_of_a_switching_regression():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (400, 1))
    y = np.where(x[:, 0] < 0, 1 + 2 * x[:, 0], -1 - 3 * x[:, 0]) + 0.05 * rng.standard_normal(400)
    model = HierarchicalMoE(1, 1, 2, seed=0)
    model.m_step(x, y, init_responsibilities(x, y, 2, seed=0))
    fit_em(model, x, y, max_iter=200, tol=1e-10)
    lines = sorted(map(tuple, model.params["V"][:, :, 0].round(1)))  # (slope, intercept) per expert
    assert lines == [(-3.0, -1.0), (2.0, 1.0)]
    np.testing.assert_allclose(np.exp(model.params["log_var"] / 2), 0.05, rtol=0.15)


# ----- gradients of the gradient-trained variant ---------------------------------------------------
@pytest.mark.parametrize("expert", ["gaussian", "softmax"])
@pytest.mark.parametrize("tree", TREES)
def test_forward_backward_gradcheck(expert, tree, rng):
    O = 3 if expert == "softmax" else 2
    model = HierarchicalMoE(3, O, tree, expert=expert, seed=1)
    for _, p in model.named_parameters():
        p[...] = rng.standard_normal(p.shape)
    errors = check_module(model, rng.standard_normal((5, 3)))
    assert max(errors.values()) < 1e-7


@pytest.mark.parametrize("expert", ["gaussian", "softmax"])
@pytest.mark.parametrize("tree", TREES)
def test_nll_grads_match_finite_differences(expert, tree, rng):
    O = 3 if expert == "softmax" else 2
    model = HierarchicalMoE(3, O, tree, expert=expert, seed=2)
    for _, p in model.named_parameters():
        p[...] = 0.5 * rng.standard_normal(p.shape)
    x = rng.standard_normal((7, 3))
    y = rng.integers(0, O, 7) if expert == "softmax" else rng.standard_normal((7, O))
    value = model.nll_grads(x, y)
    assert value == pytest.approx(-model.log_likelihood(x, y) / 7, rel=1e-12)
    for name, p in model.named_parameters():
        numeric = numerical_gradient(lambda _: -model.log_likelihood(x, y) / 7, p)
        assert rel_error(model.grads[name], numeric) < 1e-7, name


def test_classification_forward_is_the_log_mixture_so_cross_entropy_is_the_mixture_nll(rng):
    from numpy_moe.functional import cross_entropy

    model = HierarchicalMoE(2, 3, [2, 2], expert="softmax", seed=0)
    x, y = rng.standard_normal((9, 2)), rng.integers(0, 3, 9)
    assert cross_entropy(model.forward(x), y) == pytest.approx(-model.log_likelihood(x, y) / 9, rel=1e-12)


def test_classification_forward_and_backward_stay_exact_where_every_expert_gives_a_class_almost_nothing():
    # class 0's logit is x under both experts: at x = -800 its mixture probability e^-800 underflows. Before,
    # forward clipped log p at log(tiny) = -708.4 and backward divided by the underflowed 0 (NaN gradients)
    model = HierarchicalMoE(1, 2, 2, expert="softmax", seed=0)
    model.params["V"][...] = 0
    model.params["V"][:, 0, 0] = 1.0
    x, y = np.array([[-800.0], [1.0]]), np.array([0, 1])
    out = model.forward(x)
    # by hand: log p(0 | x) = x - log(1 + e^x) = -800 - log1p(e^-800) = -800 to double precision
    assert out[0, 0] == pytest.approx(-800.0, rel=1e-15)
    assert out[1, 1] == pytest.approx(-np.log1p(np.e), rel=1e-15)
    dx = model.backward(np.array([[-0.5, 0.0], [0.0, -0.5]]))  # the gradient of the mean NLL of y
    assert np.isfinite(dx).all()
    grads = {name: g.copy() for name, g in model.named_grads()}
    model.nll_grads(x, y)  # the same loss by its own formula (computed through log-sum-exp)
    for name, g in model.named_grads():
        np.testing.assert_allclose(grads[name], g, rtol=1e-12, atol=1e-15, err_msg=name)


# ----- the outside oracle: R's mixtools::hmeEM ------------------------------------------------------
def compare_to_mixtools(d):
    model, x, y, start_ll, history = em_on_mixtools_example(d)
    assert start_ll == pytest.approx(d["all_loglik"][0], abs=1e-9)  # same model, same start
    # mixtools stops when ℓ gains < 1e-8 per iteration (and solves the gate's M-step inexactly): it stops
    # short of the optimum by ~2e-7, ours runs on to 1e-13 per sample
    assert 0 <= history["log_likelihood"][-1] - d["loglik"] < 1e-6
    beta = np.column_stack([model.params["V"][:, 1, 0], model.params["V"][:, 0, 0]])  # (k, 2) as mixtools
    perm = min(permutations(range(2)), key=lambda p: np.abs(beta[list(p)] - d["beta"]).sum())
    perm = list(perm)
    np.testing.assert_allclose(beta[perm], d["beta"], atol=1e-4)
    np.testing.assert_allclose(np.exp(model.params["log_var"][perm] / 2), d["sigma"], rtol=1e-4)
    G = model.params["G0"][:, perm]
    w = G[:, 0] - G[:, 1]  # mixtools: P(expert 1 | x) = inv.logit(w0 + w1 x)
    np.testing.assert_allclose([w[1], w[0]], d["w"], atol=1e-3)
    np.testing.assert_allclose(model.posterior(x, y)[:, perm], d["posterior"], atol=1e-3)


def test_em_matches_mixtools_hmeEM_fixture():
    compare_to_mixtools(json.loads(FIXTURE.read_text()))


def _have_mixtools():
    if shutil.which("Rscript") is None:
        return False
    return subprocess.run(["Rscript", "-e", "library(mixtools)"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _have_mixtools(), reason="Rscript with the R package mixtools is not installed "
                    "(apt-get install r-base-core r-cran-mixtools); the fixture test covers the comparison")
def test_r_script_reproduces_the_fixture_and_matches(tmp_path):
    out = tmp_path / "hme.json"
    subprocess.run(["Rscript", str(R_SCRIPT), str(out)], check=True, capture_output=True, timeout=300)
    fresh, fixture = json.loads(out.read_text()), json.loads(FIXTURE.read_text())
    for key in ("x", "y", "start_beta", "start_sigma", "beta", "sigma", "w", "posterior"):
        np.testing.assert_allclose(fresh[key], fixture[key], rtol=1e-10, atol=1e-12, err_msg=key)
    compare_to_mixtools(fresh)
