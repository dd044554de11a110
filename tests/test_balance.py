"""Balance losses: values against loop/scipy references, gradients by finite differences with respect
to the gate logits and, through the gate, its parameters and the input; the post-000 loss's zero gradient."""
import numpy as np
import pytest
from scipy.special import logsumexp, softmax
from scipy.stats import norm

from numpy_moe import balance as B
from numpy_moe.backend import default_rng
from numpy_moe.gating import ExpertChoiceGate, TopKGate, route_topk, routing_backward
from numpy_moe.gradcheck import numerical_gradient, rel_error
from numpy_moe.moe import MoE

TOL = 1e-7  # a loss of one gate: a single layer (MATH.md §8)
N, E, K = 8, 4, 2


def cv2(v):
    return np.var(v) / (np.mean(v) ** 2 + 1e-10)  # the epsilon of functional.cv_squared


def reference(loss, h, clean, sigma, convention):
    """Each loss from its definition (MATH.md §3), with loops where the definition has them."""
    top = np.argsort(-h, axis=1)[:, :K]
    rows = np.arange(len(h))[:, None]
    if isinstance(loss, B.Importance):
        if loss.source == "softmax":
            return cv2(softmax(clean, axis=1).sum(0))
        G = np.zeros_like(h)
        G[rows, top] = softmax(h, axis=1)[rows, top] if convention == "softmax_then_topk" \
            else softmax(h[rows, top], axis=1)
        return cv2(G.sum(0))
    if isinstance(loss, B.ShazeerLoad):
        t = np.array([[np.sort(np.delete(h[n], e))[::-1][K - 1] for e in range(E)] for n in range(len(h))])
        return cv2(norm.cdf((clean - t) / sigma).sum(0))
    if isinstance(loss, B.VMoELoad):
        T = np.sort(h, axis=1)[:, ::-1][:, K - 1:K]
        return cv2((1 - norm.cdf((T - clean) / sigma)).mean(0))
    if isinstance(loss, B.SwitchLoss):
        f = np.bincount(h.argmax(1), minlength=E) / len(h)
        return E * (f * softmax(h, axis=1).mean(0)).sum()
    return (logsumexp(h, axis=1) ** 2).mean()  # ZLoss


LOSSES = [B.Importance(0.7, "gates"), B.Importance(0.7, "softmax"), B.ShazeerLoad(0.7), B.VMoELoad(0.7),
          B.SwitchLoss(0.7), B.ZLoss(0.7)]


def noisy_logits(rng):
    clean = 2 * rng.standard_normal((N, E))
    return clean, rng.uniform(0.5, 1.5, (N, E)), rng.standard_normal((N, E))


@pytest.mark.parametrize("convention", ["softmax_then_topk", "topk_then_softmax"])
@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: f"{type(l).__name__}-{getattr(l, 'source', '')}")
def test_value_matches_reference(loss, convention, rng):
    clean, sigma, eps = noisy_logits(rng)
    h = clean + eps * sigma
    value = loss(route_topk(h, K, convention, clean, sigma, eps))
    assert value == pytest.approx(0.7 * reference(loss, h, clean, sigma, convention), rel=1e-12)


@pytest.mark.parametrize("convention", ["softmax_then_topk", "topk_then_softmax"])
@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: f"{type(l).__name__}-{getattr(l, 'source', '')}")
def test_gradient_wrt_clean_logits_and_noise_scale(loss, convention, rng):
    # logits = clean + eps * sigma with the draw eps fixed; the loss is a function of (clean, sigma)
    clean, sigma, eps = noisy_logits(rng)
    r0 = route_topk(clean + eps * sigma, K, convention, clean, sigma, eps)

    def f(_):
        r = route_topk(clean + eps * sigma, K, convention, clean, sigma, eps)
        np.testing.assert_array_equal(r.expert, r0.expert, err_msg="routing changed under perturbation")
        return loss(r)

    loss(r0)
    dclean, dsigma = routing_backward(r0, loss.backward())
    assert rel_error(dclean, numerical_gradient(f, clean)) < TOL
    assert rel_error(dsigma, numerical_gradient(f, sigma)) < TOL


def gate_check(gate, loss, x, tol=TOL):
    """Check loss(gate(x)) against finite differences w.r.t. the input and every gate parameter."""
    def forward():
        gate.rng = default_rng(5)  # the same noise draw each time (ignored by the expert-choice gate)
        return gate.forward(x)

    r0 = forward()
    loss(r0)
    dx = gate.backward(loss.backward())

    def f(_):
        r = forward()
        np.testing.assert_array_equal(r.expert, r0.expert, err_msg="routing changed under perturbation")
        np.testing.assert_array_equal(r.sample, r0.sample, err_msg="routing changed under perturbation")
        return loss(r)

    errors = {"input": rel_error(dx, numerical_gradient(f, x))}
    errors.update({k: rel_error(gate.grads[k], numerical_gradient(f, p)) for k, p in gate.params.items()})
    assert max(errors.values()) < tol, errors
    return errors


@pytest.mark.parametrize("convention", ["softmax_then_topk", "topk_then_softmax"])
@pytest.mark.parametrize("noise", ["shazeer", "vmoe"])
@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: f"{type(l).__name__}-{getattr(l, 'source', '')}")
def test_gradient_through_the_gate(loss, noise, convention, rng):
    gate = TopKGate(5, E, top_k=K, convention=convention, noise=noise, noise_std=4.0, seed=0)
    for p in gate.params.values():
        p += 0.5 * rng.standard_normal(p.shape)
    gate_check(gate, loss, rng.standard_normal((N, 5)))


@pytest.mark.parametrize("loss", [B.Importance(0.7, "gates"), B.Importance(0.7, "softmax"), B.SwitchLoss(0.7),
                                  B.ZLoss(0.7)], ids=lambda l: f"{type(l).__name__}-{getattr(l, 'source', '')}")
def test_gradient_through_the_expert_choice_gate(loss, rng):
    gate = ExpertChoiceGate(5, E, capacity_factor=1.5, seed=0)
    gate.params["b"] += rng.standard_normal(E)
    gate_check(gate, loss, rng.standard_normal((N, 5)))


def test_seed000_value_by_hand():
    # top-2 of 3 experts for 4 samples: expert 0 chosen 4 times, expert 1 3 times, expert 2 once.
    # shares c / sum c = (0.5, 0.375, 0.125), mean 1/3; sample std (ddof=1, as torch.std) =
    # sqrt(((1/6)² + (1/24)² + (5/24)²) / 2) = 0.190941; times the weight 0.01.
    r = route_topk(np.array([[3.0, 2, 1], [3, 1, 2], [3, 2, 1], [2, 3, 1]]), 2, "softmax_then_topk")
    assert B.Seed000Loss(0.01)(r) == pytest.approx(0.01 * np.sqrt((1 / 36 + 1 / 576 + 25 / 576) / 2), rel=1e-12)


def test_seed000_loss_has_exactly_zero_gradient_wrt_every_parameter(rng):
    # The seed's balance loss is a function of hard counts: no parameter moves it. Finite differences of
    # the auxiliary loss alone are exactly 0.0, and training gradients with and without it are identical.
    x = rng.standard_normal((16, 5))
    with_loss = MoE(5, 3, 4, hidden=6, seed=0, top_k=2, balance={"seed000": 1.0})
    without = MoE(5, 3, 4, hidden=6, seed=0, top_k=2)
    assert with_loss.forward(x) is not None and with_loss.aux_loss > 0.01

    def aux(_):
        with_loss.forward(x)
        return with_loss.aux_loss

    for name, p in list(with_loss.named_parameters()) + [("input", x)]:
        assert not numerical_gradient(aux, p).any(), f"post-000 loss moved with {name}"
    dy = rng.standard_normal((16, 3))
    with_loss.forward(x)
    without.forward(x)
    assert np.array_equal(with_loss.backward(dy), without.backward(dy))
    for (name, a), (_, b) in zip(with_loss.named_grads(), without.named_grads()):
        assert np.array_equal(a, b), name


def test_load_losses_need_noise_and_k_below_e(rng):
    clean = rng.standard_normal((5, 4))
    with pytest.raises(ValueError, match="needs a top-k gate with noise"):
        B.ShazeerLoad(0.1)(route_topk(clean, 2, "softmax_then_topk"))
    with pytest.raises(ValueError, match="needs a top-k gate with noise"):
        B.VMoELoad(0.1)(route_topk(clean, 2, "softmax_then_topk"))
    r = route_topk(clean, 4, "softmax_then_topk", clean, np.ones((5, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="top_k < n_experts; got top_k=4, n_experts=4"):
        B.ShazeerLoad(0.1)(r)


def test_bad_weight_and_source():
    with pytest.raises(ValueError, match="importance weight=-1 must be a finite number >= 0"):
        B.Importance(-1)
    with pytest.raises(ValueError, match="source='probs' must be 'gates' or 'softmax'"):
        B.Importance(0.1, source="probs")
