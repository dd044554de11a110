"""Golden values from outside numpy_moe: hand-computed numbers in other projects' own tests (issue 13).

The inputs and expected values are those of the cited test files; the tests are written here. Each
tolerance is the cited test's (assertAlmostEqual places=6: 1e-6 absolute, float32 there, float64 here).
"""
import numpy as np

from numpy_moe.balance import FrameworkBalance, Importance, SwitchLoss, VMoELoad
from numpy_moe.gates import Routing, topk_indices
from numpy_moe.presets.dropping import deepspeed_capacity, deepspeed_keep


def routing(logits, top_k, clean=None, sigma=None):
    N, E = logits.shape
    idx = topk_indices(logits, top_k)
    with np.errstate(divide="ignore"):
        p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return Routing(sample=np.repeat(np.arange(N), top_k), expert=idx.reshape(-1), weight=np.ones(N * top_k),
                   kept=np.ones(N * top_k, bool), logits=logits, clean=logits if clean is None else clean,
                   sigma=sigma, eps=None, probs=p, top_k=top_k, convention="scored", scores=p)


# google-research/vmoe vmoe/nn/routing_test.py, NoisyTopExpertsPerItemRouterTest: gates given as probabilities
VMOE_GATES = np.array([[.5, .4, .1], [.3, .3, .4], [.1, .2, .7], [.8, .2, .0]])


def test_vmoe_gshard_auxiliary_loss():
    """test_gshard_auxiliary_loss: mean_gates [1.7, 1.1, 1.2] / 4, mean_top1 [2, 0, 2] / 4 -> 1.0875."""
    with np.errstate(divide="ignore"):
        r = routing(np.log(VMOE_GATES), 1)  # softmax(log g) = g
    assert abs(FrameworkBalance(1.0, "gshard")(r) - 1.0875) < 1e-6
    assert abs(SwitchLoss(1.0)(r) - 1.0875) < 1e-6  # the same formula (Switch eq. 4)


def test_vmoe_importance_auxiliary_loss():
    """test_importance_auxiliary_loss: CV² of [1.7, 1.1, 1.2] (population std) = 0.03874999."""
    with np.errstate(divide="ignore"):
        r = routing(np.log(VMOE_GATES), 2)
    assert abs(Importance(1.0, source="softmax")(r) - 0.03874999) < 1e-6


def test_vmoe_load_auxiliary_loss_with_a_fixed_noise_draw():
    """test_load_auxiliary_loss: 3 items, 3 experts, k = 2, noise_std 0.1, the test's noise -> 0.48573864536489236."""
    logits = np.array([[.9, .06, .04], [.7, .18, .12], [.85, .05, .1]])
    noise = np.array([[-.037, .026, -.018], [-.074, .045, -.015], [-.067, -.059, .073]])
    r = routing(logits + noise, 2, clean=logits, sigma=np.full((3, 3), .1))
    assert abs(VMoELoad(1.0)(r) - 0.48573864536489236) < 1e-6


def sparse_dispatch(expert, kept, slot, E, C):
    """The (S, E, C) dispatch mask DeepSpeed returns, as the set of its nonzero (token, expert, slot)."""
    N, K = expert.shape
    return {(n, int(expert[n, k]), int(slot[n, k])) for n in range(N) for k in range(K) if kept[n, k]}


def deepspeed_case(logits, k, policy):
    """DeepSpeed topkgating(logits, k, capacity_factor=1, min_capacity=1, drop_policy=policy)'s dispatch."""
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx = topk_indices(p, k)
    C = deepspeed_capacity(logits.shape[0], logits.shape[1], k, capacity_factor=1, min_capacity=1)
    # 'probs' ranks by the kept logits (topkgating scatters top_gate = topk(logits) values): by the softmax
    # probabilities token 1 (p = 0.188) would beat token 3 (p = 0.167) for expert 1 of DS_LOGITS2, the test's
    # mask keeps token 3 (logit 0.6714 > 0.6332)
    kept, slot = deepspeed_keep(idx, np.take_along_axis(logits, idx, 1), logits.shape[1], C, policy)
    return C, sparse_dispatch(idx, kept, slot, logits.shape[1], C)


# microsoft/DeepSpeed tests/unit/moe/test_moe.py, TestTopkGate: hand-written dispatch masks (token, expert, slot)
DS_LOGITS = np.array([[0.11, 0.2, 0.1, 0.3], [0.3, 0.4, 0.11, 0.1], [0.11, 0.1, 0.6, 0.5], [0.1, 0.11, 0.7, 0.8]])
DS_LOGITS2 = np.array([[0.5858, 0.4801, 0.6269, 0.5397, 0.9722, 0.7034],
                       [0.5445, 0.6332, 0.4519, 0.6308, 0.0519, 0.6450],
                       [0.4874, 0.8110, 0.7467, 0.8474, 0.0277, 0.3068],
                       [0.8570, 0.6714, 0.5310, 0.3274, 0.4836, 0.9892]])


def test_deepspeed_topk_drop_by_probability_and_by_position():
    for scale in (1, 2):  # the test runs on two ranks, rank r scaling the logits by r + 1
        C, probs = deepspeed_case(DS_LOGITS * scale, 2, "probs")
        assert C == 2
        assert probs == {(0, 1, 0), (1, 0, 0), (1, 1, 1), (2, 2, 0), (2, 3, 0), (3, 2, 1), (3, 3, 1)}
        _, position = deepspeed_case(DS_LOGITS * scale, 2, "position")
        assert position == {(0, 1, 0), (0, 3, 0), (1, 0, 0), (1, 1, 1), (2, 2, 0), (2, 3, 1), (3, 2, 1)}
        C, probs = deepspeed_case(DS_LOGITS2 * scale, 3, "probs")
        assert C == 2
        assert probs == {(0, 2, 0), (0, 4, 0), (0, 5, 0), (1, 3, 0), (2, 1, 0), (2, 2, 1), (2, 3, 1), (3, 0, 0),
                         (3, 1, 1), (3, 5, 1)}
        _, position = deepspeed_case(DS_LOGITS2 * scale, 3, "position")
        assert position == {(0, 2, 0), (0, 4, 0), (0, 5, 0), (1, 1, 0), (1, 3, 0), (1, 5, 1), (2, 1, 1), (2, 2, 1),
                            (2, 3, 1), (3, 0, 0)}
