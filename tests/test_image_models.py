"""Tests for numpy_moe.models: whole-model gradient checks on tiny configurations, structure, errors.

Gradient checks are float64, h = 1e-6, pass below 1e-6 (MATH.md §8, composed models), with respect to the
input and every parameter. Routing is piecewise constant, so each check replays one noise draw and
asserts that no discrete choice (top-k routing, ReLU pattern, max-pool position) changed while the
finite differences perturbed the model.
"""
import numpy as np
import pytest

from numpy_moe.backend import default_rng
from numpy_moe.gradcheck import check_module, numerical_gradient, rel_error
from numpy_moe.image_layers import MaxPool2d
from numpy_moe.layers import ReLU
from numpy_moe.models import ImageMoEClassifier, SparseMLP
from numpy_moe.moe import MoE

TOL = 1e-6


def moe_layers(model):
    return [m for m in model.modules() if isinstance(m, MoE)]


def discrete_state(model):
    """Every discrete choice of the last forward: routings, ReLU patterns (layers and experts), pool argmax."""
    state = []
    for m in model.modules():
        if isinstance(m, MoE):
            r = m.routing
            state += [r.sample, r.expert, r.kept] + [h > 0 for h in m.experts.hs[1:-1]]
        elif isinstance(m, ReLU):
            state.append(m.x > 0)
        elif isinstance(m, MaxPool2d):
            state.append(m.arg)
    return [s.copy() for s in state]


def frozen_forward(model):
    """``model.forward`` that replays one noise draw per gate and asserts the discrete state never changes."""
    seen = []

    def forward(x):
        for i, moe in enumerate(moe_layers(model)):
            moe.gate.rng = default_rng(100 + i)
        y = model.forward(x)
        state = discrete_state(model)
        if not seen:
            seen.extend(state)
        for a, b in zip(seen, state):
            np.testing.assert_array_equal(a, b, err_msg="a discrete choice changed under perturbation")
        return y
    return forward


def perturb(model, rng, scale=0.3):
    """Nonzero biases and LayerNorm scales, as after training (zeros hide wrong bias gradients)."""
    for _, p in model.named_parameters():
        p += scale * rng.standard_normal(p.shape)
    return model


def tiny_image_moe(balance, rng):
    return perturb(ImageMoEClassifier(in_channels=1, image_size=4, channels=(2, 3), hidden=4, n_classes=3,
                                      n_experts=4, top_k=2, balance=balance, balance_weight=0.5, seed=0), rng)


@pytest.mark.parametrize("balance", [None, "seed000", "importance_load"])
def test_image_moe_gradients(balance, rng):
    model = tiny_image_moe(balance, rng)
    x = rng.standard_normal((4, 1, 4, 4))
    errors = check_module(model, x, tol=TOL, forward=frozen_forward(model))
    assert set(errors) == {"input"} | {name for name, _ in model.named_parameters()}
    assert max(errors.values()) < TOL
    if balance == "importance_load":
        assert model.aux_loss > 0  # the check covered the balance losses' gradients


def test_seed000_balance_loss_changes_no_gradient(rng):
    # The seed's loss counts hard selections: it has a value but adds exactly nothing to any gradient.
    with_loss, without = tiny_image_moe("seed000", rng), tiny_image_moe(None, rng)
    for (_, a), (_, b) in zip(with_loss.named_parameters(), without.named_parameters()):
        b[...] = a
    x = rng.standard_normal((6, 1, 4, 4))
    dy = rng.standard_normal((6, 3))
    for m in (with_loss, without):
        m.forward(x)
        m.backward(dy)
    assert with_loss.aux_loss > 0 and without.aux_loss == 0
    for (name, ga), (_, gb) in zip(with_loss.named_grads(), without.named_grads()):
        np.testing.assert_array_equal(ga, gb, err_msg=name)


def test_image_moe_seed_layout_shapes():
    # Post 000 on CIFAR-10: 32x32x3 -> conv 32 -> pool -> conv 64 -> pool -> 64 * 8 * 8 = 4096 features,
    # 4 experts 4096 -> 512 -> 512, top 2, classifier 512 -> 10.
    model = ImageMoEClassifier(seed=0, hidden=16)
    assert model.moe.in_features == 64 * 8 * 8 and model.moe.n_experts == 4 and model.moe.gate.top_k == 2
    y = model.forward(np.zeros((2, 3, 32, 32)))
    assert y.shape == (2, 10)
    assert ImageMoEClassifier(in_channels=1, image_size=8, hidden=8).moe.in_features == 64 * 2 * 2
    assert model.moe.routing.expert.shape == (2 * 2,)  # two experts per sample


def tiny_sparse_mlp(rng, **kwargs):
    cfg = dict(image_size=4, in_channels=1, n_classes=3, patch_size=2, channels=4, depth=2, token_hidden=3,
               channel_hidden=5, n_experts=3, top_k=2, balance_weight=0.5, noise_std=4.0, seed=0)
    return perturb(SparseMLP(**(cfg | kwargs)), rng)


def test_sparse_mlp_gradients_all_sparse(rng):
    model = tiny_sparse_mlp(rng, sparse_blocks=(0, 1))
    x = rng.standard_normal((2, 1, 4, 4))
    errors = check_module(model, x, tol=TOL, forward=frozen_forward(model))
    assert set(errors) == {"input"} | {name for name, _ in model.named_parameters()}
    assert max(errors.values()) < TOL
    assert len(moe_layers(model)) == 4 and model.aux_loss > 0


def test_sparse_mlp_gradients_dense_then_sparse(rng):
    # A dense block's token-mixing MLP ends in a bias that adds the same value to every channel of a
    # token; every later consumer is a LayerNorm over channels, which removes it, so that bias has an
    # exactly zero gradient. It is checked on its own (both gradients tiny); everything else relatively.
    model = tiny_sparse_mlp(rng, sparse_blocks=(1,), top_k=1)
    x = rng.standard_normal((2, 1, 4, 4))
    forward = frozen_forward(model)
    invariant = "blocks.0.token.mixer.layers.2.b"
    R = rng.standard_normal((2, 3))

    def loss(_):
        return float((R * forward(x)).sum()) + model.aux_loss

    forward(x)
    analytic = {"input": model.backward(R)} | {k: g.copy() for k, g in model.named_grads()}
    params = dict(model.named_parameters())
    for name, a in analytic.items():
        n = numerical_gradient(loss, x if name == "input" else params[name])
        if name == invariant:
            assert np.abs(a).max() < 1e-12 and np.abs(n).max() < 1e-8
        else:
            assert rel_error(a, n) < TOL, name
    assert set(analytic) == {"input"} | set(params) and len(moe_layers(model)) == 2


def test_sparse_mlp_structure():
    model = SparseMLP(image_size=8, patch_size=2, channels=8, depth=4, n_experts=4, top_k=1, seed=0)
    S, C = 16, 8
    assert model.sparse_blocks == (2, 3)  # the second half by default
    moes = moe_layers(model)
    assert len(moes) == 4
    moe_s, moe_c = moes[0], moes[1]
    assert (moe_s.in_features, moe_c.in_features) == (2 * S, C)  # S1 = 2S rows of tokens, C channels
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8))
    assert model.forward(x).shape == (3, 10)
    assert moe_s.routing.expert.shape == (3 * C // 2,)  # N C1 rows, K = 1 expert each
    assert moe_c.routing.expert.shape == (3 * S,)  # N S rows


def test_models_are_seeded():
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8))
    for make in (lambda s: SparseMLP(seed=s), lambda s: ImageMoEClassifier(1, 8, hidden=8, seed=s)):
        a, b, c = make(1), make(1), make(2)
        np.testing.assert_array_equal(a.forward(x), b.forward(x))
        assert not np.allclose(a.forward(x), c.forward(x))


@pytest.mark.parametrize("make,match", [
    (lambda: ImageMoEClassifier(balance="std"), "balance='std'"),
    (lambda: ImageMoEClassifier(image_size=3), "image_size=3"),
    (lambda: ImageMoEClassifier(channels=(4,)), r"channels=\(4,\)"),
    (lambda: ImageMoEClassifier(top_k=5), "top_k=5"),
    (lambda: SparseMLP(image_size=8, patch_size=3), "patch_size=3 must divide image_size=8"),
    (lambda: SparseMLP(depth=2, sparse_blocks=(2,)), r"sparse_blocks=\(2,\)"),
    (lambda: SparseMLP(depth=2, sparse_blocks=(1.5,)), r"sparse_blocks=\(1.5,\) must be block indices \(ints\)"),
    (lambda: SparseMLP(channels=0), "channels=0"),
])
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_sparse_blocks_must_be_a_list():
    with pytest.raises(TypeError, match="sparse_blocks=1 must be a list of block indices"):
        SparseMLP(depth=2, sparse_blocks=1)


def test_forward_errors():
    with pytest.raises(ValueError, match="expected 8x8"):
        ImageMoEClassifier(1, 8, hidden=8).forward(np.zeros((1, 1, 6, 6)))
    with pytest.raises(ValueError, match="3 channels"):
        SparseMLP().forward(np.zeros((1, 3, 8, 8)))
    with pytest.raises(ValueError, match="4-D"):
        SparseMLP().forward(np.zeros((1, 64)))
    # their MoE layers need a sample: an empty batch is refused by name (before, a reshape error inside)
    for model in (SparseMLP(), ImageMoEClassifier(1, 8, hidden=8)):
        with pytest.raises(ValueError, match=r"x has 0 images \(shape \(0, 1, 8, 8\)\); expected at least 1"):
            model.forward(np.zeros((0, 1, 8, 8)))
