"""FrameworkBalance (the f·P loss as each framework scales it) and ProbsZLoss (issue 13).

Values at uniform and collapsed routing against the closed forms of docs/FRAMEWORKS.md, the identities
between conventions, and every gradient against central differences (float64, h = 1e-6, tolerance 1e-7:
one loss, MATH.md §8). Measured time: under 1 s.
"""
import numpy as np
import pytest

from numpy_moe.balance import FrameworkBalance, ProbsZLoss, SequenceBalance, SwitchLoss, ZLoss
from numpy_moe.balance.conventions import CONVENTIONS
from numpy_moe.gates import Routing, topk_indices
from numpy_moe.gradcheck import numerical_gradient, rel_error


def routing(logits, expert, top_k):
    N = logits.shape[0]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return Routing(sample=np.repeat(np.arange(N), top_k), expert=np.asarray(expert).reshape(-1),
                   weight=np.ones(N * top_k), kept=np.ones(N * top_k, bool), logits=logits, clean=logits,
                   sigma=None, eps=None, probs=p, top_k=top_k, convention="scored", scores=p)


# convention -> (value at uniform routing, value at collapsed routing) as functions of E, K
PER_K = (lambda E, K: 1, lambda E, K: E / K)
CLOSED_FORMS = {"hf": (lambda E, K: K, lambda E, K: E), "gshard": (lambda E, K: 1, lambda E, K: E),
                "deepspeed_topk": PER_K, "megablocks": PER_K, "megatron": PER_K}


def test_every_convention_has_its_closed_forms_here():
    assert set(CLOSED_FORMS) == set(CONVENTIONS)


@pytest.mark.parametrize("convention", list(CONVENTIONS))
@pytest.mark.parametrize("E,K", [(4, 1), (6, 2), (8, 3)])
def test_value_at_uniform_and_collapsed_routing(convention, E, K):
    """Uniform: equal logits (P_e = 1/E) and token n choosing experts n, n+1, ..., n+K-1 mod E (each expert
    chosen N K / E times). Collapsed: every token chooses experts 0..K-1 with p -> one-hot on expert 0."""
    N = 2 * E
    uniform = routing(np.zeros((N, E)), (np.arange(N)[:, None] + np.arange(K)) % E, K)
    collapsed_logits = np.tile(np.r_[60.0, np.zeros(E - 1)], (N, 1))
    collapsed = routing(collapsed_logits, np.tile(np.arange(K), (N, 1)), K)
    at_uniform, at_collapse = CLOSED_FORMS[convention]
    loss = FrameworkBalance(1.0, convention)
    assert loss(uniform) == pytest.approx(at_uniform(E, K), rel=1e-12)
    assert loss(collapsed) == pytest.approx(at_collapse(E, K), rel=1e-12)


def test_conventions_are_one_formula_up_to_a_constant(rng):
    """hf = K x DeepSeek's batch loss (SequenceBalance over the batch, softmax scores); gshard = SwitchLoss
    (first choice = the argmax); megatron = megablocks = deepspeed_topk = hf / K."""
    logits = rng.standard_normal((12, 5))
    r = routing(logits, topk_indices(logits, 2), 2)
    hf = FrameworkBalance(1.0, "hf")(r)
    assert hf == pytest.approx(2 * SequenceBalance(1.0, per_sequence=False)(r), rel=1e-12)
    for c in ("megatron", "megablocks", "deepspeed_topk"):
        assert FrameworkBalance(1.0, c)(r) == pytest.approx(hf / 2, rel=1e-12)
    assert FrameworkBalance(1.0, "gshard")(r) == pytest.approx(SwitchLoss(1.0)(r), rel=1e-12)


@pytest.mark.parametrize("loss", [FrameworkBalance(0.3, c) for c in CONVENTIONS]
                         + [FrameworkBalance(0.3, "hf", double_softmax=True), ProbsZLoss(0.2), ZLoss(0.2)],
                         ids=lambda loss: getattr(loss, "convention", type(loss).__name__)
                         + ("_double_softmax" if getattr(loss, "double_softmax", False) else ""))
def test_gradient_with_respect_to_the_logits(loss, rng):
    """The hard counts are fixed (the chosen experts stay those of the unperturbed logits)."""
    logits = rng.standard_normal((9, 5))
    expert = topk_indices(logits, 2)
    loss(routing(logits, expert, 2))
    got = loss.backward()["logits"]
    want = numerical_gradient(lambda z: loss(routing(z, expert, 2)), logits.copy())
    assert rel_error(got, want) < 1e-7


def test_z_loss_on_probabilities_barely_moves_with_the_logits(rng):
    """The bug's symptom: scaling the logits 10x multiplies the true z-loss ~100x but leaves the
    probability version inside its band (log E, log(E - 1 + e)]."""
    logits = rng.standard_normal((50, 8))
    r, r10 = routing(logits, topk_indices(logits, 2), 2), routing(10 * logits, topk_indices(logits, 2), 2)
    assert ZLoss(1.0)(r10) > 20 * ZLoss(1.0)(r)
    for value in (ProbsZLoss(1.0)(r), ProbsZLoss(1.0)(r10)):
        assert np.log(8) ** 2 < value <= np.log(7 + np.e) ** 2


def test_bad_convention_is_named():
    with pytest.raises(ValueError, match="convention='fairseq'"):
        FrameworkBalance(0.1, "fairseq")


def test_double_softmax_flattens_p_towards_uniform(rng):
    """transformers #45120: the second softmax brings P close to 1/E, so the value sits near K whatever
    the routing; the intended loss sees the imbalance."""
    logits = 4 * rng.standard_normal((64, 8))
    logits[:, 0] += 6  # most tokens prefer expert 0
    r = routing(logits, topk_indices(logits, 2), 2)
    right, bug = FrameworkBalance(1.0, "hf")(r), FrameworkBalance(1.0, "hf", double_softmax=True)(r)
    assert right > 3 and abs(bug - 2) < 0.3, (right, bug)
