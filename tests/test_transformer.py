"""Tests for numpy_moe.models.transformer: every backward against finite differences in float64, the
attention against a direct loop, causality, the embedding's scatter-add by hand, the MoE sublayer's token
masks, sequence lengths and hash keys, and the whole language model with its routing held fixed.

Tolerances (MATH.md §8): single layers pass below 1e-7 (h = 1e-6, float64); composed models (blocks, the
whole LM with MoE sublayers and balance losses) below 1e-6, as tests/test_moe_modern.py. Measured worst
errors are near 1e-9. A top-k routing is piecewise constant, so the composed checks assert that no
perturbation changed which experts any token went to (the gradient exists only where it does not).
"""
import numpy as np
import pytest

from numpy_moe import balance as B
from numpy_moe import functional as F
from numpy_moe.experts import ExpertBank
from numpy_moe.gates import HashGate, ScoreGate
from numpy_moe.gradcheck import check_module, numerical_gradient, rel_error
from numpy_moe.models.transformer import (CausalSelfAttention, DenseFeedForward, Embedding, MoEFeedForward,
                                          PositionEmbedding, TransformerBlock, TransformerLM)
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam

TOL_LAYER, TOL_MODEL = 1e-7, 1e-6


def perturbed(model, rng, scale=0.3):
    """Parameters moved off their initial values (as after training), so no check sits at a special point."""
    for _, p in model.named_parameters():
        p += scale * rng.standard_normal(p.shape)
    return model


def frozen(model, forward):
    """``forward`` that asserts every MoE layer of ``model`` routes every token as in the first call."""
    seen = []

    def run(x):
        y = forward(x)
        state = [m.routing.expert.copy() for m in model.modules() if isinstance(m, MoE)]
        if seen:
            for a, b in zip(seen, state):
                np.testing.assert_array_equal(a, b, err_msg="routing changed under perturbation")
        else:
            seen.extend(state)
        return y
    return run


def attention_loop(att, x):
    """Causal attention by loops over sequences, heads and positions (the definition, MATH.md §15.2)."""
    B_, T, D = x.shape
    H = att.n_heads
    Dh = D // H
    qkv = x @ att.qkv.params["W"] + att.qkv.params["b"]
    q, k, v = qkv[..., :D], qkv[..., D:2 * D], qkv[..., 2 * D:]
    z = np.zeros((B_, T, D))
    for b in range(B_):
        for h in range(H):
            cols = slice(h * Dh, (h + 1) * Dh)
            for t in range(T):
                scores = np.array([q[b, t, cols] @ k[b, s, cols] / np.sqrt(Dh) for s in range(t + 1)])
                a = np.exp(scores - scores.max())
                a /= a.sum()
                z[b, t, cols] = sum(a[s] * v[b, s, cols] for s in range(t + 1))
    return z @ att.proj.params["W"] + att.proj.params["b"]


def test_attention_equals_the_loop_and_is_causal(rng):
    att = perturbed(CausalSelfAttention(6, 3, seed=0), rng)
    x = rng.standard_normal((2, 5, 6))
    y = att.forward(x)
    np.testing.assert_allclose(y, attention_loop(att, x), rtol=0, atol=1e-12)
    A = att.attention
    assert np.all(A[..., np.triu_indices(5, 1)[0], np.triu_indices(5, 1)[1]] == 0)  # nothing from the future
    np.testing.assert_allclose(A.sum(axis=-1), 1, atol=1e-15)
    x2 = x.copy()
    x2[:, 3] += 10.0  # change position 3: positions 0-2 must not notice
    y2 = att.forward(x2)
    np.testing.assert_array_equal(y2[:, :3], y[:, :3])
    assert np.abs(y2[:, 3:] - y[:, 3:]).min() > 0


def test_attention_gradients(rng):
    att = perturbed(CausalSelfAttention(6, 2, seed=0), rng)
    errors = check_module(att, rng.standard_normal((2, 4, 6)), tol=TOL_LAYER)
    assert set(errors) == {"input", "qkv.W", "qkv.b", "proj.W", "proj.b"}


def test_embedding_backward_is_a_scatter_add_worked_by_hand(rng):
    emb = Embedding(4, 2, seed=0)
    tokens = np.array([[1, 1, 3]])
    y = emb.forward(tokens)
    np.testing.assert_array_equal(y[0], emb.params["W"][[1, 1, 3]])
    dy = np.array([[[1.0, 2.0], [10.0, 20.0], [-1.0, 0.5]]])
    assert emb.backward(dy) is None  # ids have no gradient
    # id 1 was read at positions 0 and 1: its row gets both gradients; ids 0 and 2 were not read
    np.testing.assert_array_equal(emb.grads["W"], [[0, 0], [11, 22], [0, 0], [-1, 0.5]])
    errors = check_module(perturbed(emb, rng), rng.integers(0, 4, (3, 5)), tol=TOL_LAYER, check_input=False)
    assert set(errors) == {"W"}


def test_position_embedding_gradients_and_unused_rows(rng):
    pos = perturbed(PositionEmbedding(6, 3, seed=0), rng)
    x = rng.standard_normal((2, 4, 3))
    assert set(check_module(pos, x, tol=TOL_LAYER)) == {"input", "P"}
    pos.forward(x)
    pos.backward(np.ones((2, 4, 3)))
    np.testing.assert_array_equal(pos.grads["P"][:4], 2)  # two sequences add at each used position
    np.testing.assert_array_equal(pos.grads["P"][4:], 0)  # positions 4 and 5 were not used
    with pytest.raises(ValueError, match="max_len=6"):
        pos.forward(np.zeros((1, 7, 3)))


def test_token_cross_entropy_gradient_and_mask(rng):
    logits, target = rng.standard_normal((3, 4, 5)), rng.integers(0, 5, (3, 4))
    mask = np.ones((3, 4), dtype=bool)
    mask[0, 2:] = mask[2, 3] = False
    for m in (mask, None):
        numeric = numerical_gradient(lambda z: F.token_cross_entropy(z, target, m), logits)
        assert rel_error(F.token_cross_entropy_backward(logits, target, m), numeric) < TOL_LAYER
    # the mean over the counted tokens is the row-wise cross-entropy of those tokens alone
    assert F.token_cross_entropy(logits, target, mask) == pytest.approx(
        F.cross_entropy(logits[mask], target[mask]), rel=1e-14)
    assert np.all(F.token_cross_entropy_backward(logits, target, mask)[~mask] == 0)  # padding: no gradient


def test_a_float32_model_under_a_mask_keeps_float32_gradients_and_a_mask_counting_nothing_is_refused(rng):
    lm = TransformerLM(6, d_model=4, n_heads=2, n_layers=1, max_len=5, hidden=4, seed=0, dtype="float32")
    tokens = rng.integers(0, 6, (2, 5))
    mask = np.ones((2, 5), dtype=bool)
    mask[1, 3:] = False
    lm.loss_and_grads(tokens, tokens, mask)  # the mask's weights m / n must not promote the gradient
    assert {name: g.dtype for name, g in lm.named_grads()} == {name: np.float32 for name, _ in lm.named_grads()}
    logits = rng.standard_normal((2, 5, 6)).astype(np.float32)
    assert F.token_cross_entropy_backward(logits, tokens, mask).dtype == np.float32
    with pytest.raises(ValueError, match="mask is False everywhere"):  # before: a NaN loss and NaN gradients
        lm.loss_and_grads(tokens, tokens, np.zeros((2, 5), dtype=bool))
    with pytest.raises(ValueError, match="mask is False everywhere"):
        F.token_cross_entropy_backward(logits, tokens, np.zeros((2, 5), dtype=bool))


@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_dense_feed_forward_and_block_gradients(activation, rng):
    ffn = perturbed(DenseFeedForward(4, 5, activation=activation, seed=0), rng)
    x = rng.standard_normal((2, 3, 4))
    check_module(ffn, x, tol=TOL_LAYER)
    block = perturbed(TransformerBlock(4, 2, DenseFeedForward(4, 5, activation=activation, seed=1), seed=0), rng)
    errors = check_module(block, x, tol=TOL_MODEL)
    assert {"input", "norm1.gamma", "attn.qkv.W", "norm2.beta", "ffn.net.layers.2.W"} <= set(errors)


def test_moe_feed_forward_masks_the_padding_and_balances_each_sequence(rng):
    # SequenceBalance per sequence over the real tokens only: the value and the gradients must equal those
    # of the layer run on the real tokens alone with their own sequence lengths
    moe = perturbed(MoE(4, 4, 3, hidden=5, top_k=2, balance=[B.SequenceBalance(0.5)], seed=0), rng)
    ffn = MoEFeedForward(moe)
    x = rng.standard_normal((2, 5, 4))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=bool)
    ffn.forward(x, mask=mask)
    padded_aux = ffn.aux_loss
    alone = MoE.from_config(moe.get_config())
    for (_, p), (_, q) in zip(alone.named_parameters(), moe.named_parameters()):
        p[...] = q
    alone.forward(x[mask], seq_lengths=[3, 5])
    assert padded_aux == pytest.approx(alone.aux_loss, rel=1e-13) and padded_aux > 0
    errors = check_module(ffn, x, tol=TOL_MODEL, forward=frozen(ffn, lambda z: ffn.forward(z, mask=mask)))
    assert {"input", "moe.gate.W", "moe.experts.W1"} <= set(errors)


def test_moe_feed_forward_routes_a_hash_gate_on_the_token_ids(rng):
    gate = HashGate(4, 3, n_keys=6, seed=0)
    ffn = MoEFeedForward(MoE(gate=gate, experts=ExpertBank(3, 4, 4, 5, seed=1)))
    tokens = rng.integers(0, 6, (2, 5))
    ffn.forward(rng.standard_normal((2, 5, 4)), tokens=tokens)
    np.testing.assert_array_equal(ffn.moe.routing.expert, gate.buffers["table"][tokens.ravel()].astype(int))
    with pytest.raises(ValueError, match="token ids"):
        ffn.forward(rng.standard_normal((2, 5, 4)))


def tiny_lm(kind, rng):
    """The language models under the whole-model check: two blocks, D = 4, routing frozen."""
    common = dict(vocab_size=6, d_model=4, n_heads=2, n_layers=2, max_len=5, hidden=3, seed=0)
    if kind == "top2 tied, sequence balance":
        lm = TransformerLM(**common, moe=dict(n_experts=3, top_k=2, balance=[B.SequenceBalance(0.5), B.ZLoss(0.1)]))
    elif kind == "sigmoid score gate untied, one dense block":
        moe = MoE(gate=ScoreGate(4, 3, top_k=2, score="sigmoid", normalize=True, seed=1),
                  experts=ExpertBank(3, 4, 4, 3, seed=2, activation="swiglu"), balance=[B.SwitchLoss(0.5)])
        lm = TransformerLM(**common, moe=[None, moe], tied=False)
    else:
        raise KeyError(kind)
    return perturbed(lm, rng)


@pytest.mark.parametrize("kind", ["top2 tied, sequence balance", "sigmoid score gate untied, one dense block"])
def test_whole_language_model_gradients_with_routing_held_fixed(kind, rng):
    lm = tiny_lm(kind, rng)
    tokens = rng.integers(0, 6, (2, 5))
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=bool)
    errors = check_module(lm, tokens, tol=TOL_MODEL, check_input=False,
                          forward=frozen(lm, lambda t: lm.forward(t, mask)))
    assert set(errors) == {n for n, _ in lm.named_parameters()}
    assert lm.aux_loss > 0
    assert ("head.W" in errors) == (not lm.tied)


def test_loss_and_grads_is_the_token_cross_entropy_and_training_lowers_it(rng):
    lm = TransformerLM(6, d_model=8, n_heads=2, n_layers=1, max_len=6, hidden=8, seed=0,
                       moe=dict(n_experts=2, top_k=1, balance={"switch": 0.01}))
    tokens = rng.integers(1, 6, (4, 7))
    x, y, m = tokens[:, :-1], tokens[:, 1:], tokens[:, 1:] != 0
    first = lm.loss_and_grads(x, y, m)
    assert first == pytest.approx(F.token_cross_entropy(lm.forward(x, m), y, m), rel=1e-14)
    opt = Adam(0.03)
    for _ in range(30):
        opt.step(lm)
        last = lm.loss_and_grads(x, y, m)
    assert last < 0.5 * first  # one fixed batch: the model can memorise it


def test_bad_input_names_the_argument():
    lm = TransformerLM(5, d_model=4, n_heads=2, n_layers=1, max_len=3, hidden=4, seed=0)
    with pytest.raises(TypeError, match="tokens has dtype float64"):
        lm.forward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"ids from 0 to 5.*\[0, 5\)"):
        lm.forward(np.array([[0, 5]]))
    with pytest.raises(ValueError, match="max_len=3"):
        lm.forward(np.zeros((1, 4), dtype=int))
    with pytest.raises(ValueError, match="mask"):
        lm.forward(np.zeros((1, 3), dtype=int), mask=np.ones((1, 2), dtype=bool))
    with pytest.raises(ValueError, match="n_heads=3 must divide d_model=4"):
        TransformerLM(5, d_model=4, n_heads=3)
    with pytest.raises(ValueError, match="n_layers=2"):
        TransformerLM(5, d_model=4, n_heads=2, n_layers=2, moe=[None])
    shared = MoE(4, 4, 2, top_k=1, balance={"switch": 0.01}, seed=0)
    with pytest.raises(ValueError, match="same MoE layer twice"):
        TransformerLM(5, d_model=4, n_heads=2, n_layers=2, moe=[shared, shared])
    with pytest.raises(ValueError, match="moe_layers"):
        TransformerLM(5, d_model=4, n_heads=2, n_layers=2, moe=dict(n_experts=2, top_k=1), moe_layers=[2])
    with pytest.raises(ValueError, match=r"moe_layers=\[1.7\] must be block indices \(ints\)"):  # not block 1
        TransformerLM(5, d_model=4, n_heads=2, n_layers=2, moe=dict(n_experts=2, top_k=1), moe_layers=[1.7])
    with pytest.raises(ValueError, match="out_features = in_features"):
        MoEFeedForward(MoE(4, 3, 2, top_k=1, seed=0))


def test_no_position_or_no_sequence_is_refused_by_name():
    # before: T = 0 failed in the attention's softmax ('zero-size array to reduction operation maximum') and
    # B = 0 returned a NaN loss with only a RuntimeWarning
    lm = TransformerLM(5, d_model=4, n_heads=2, n_layers=1, max_len=3, hidden=4, seed=0)
    with pytest.raises(ValueError, match=r"tokens has T=0 positions \(shape \(2, 0\)\); expected at least 1"):
        lm.forward(np.zeros((2, 0), dtype=int))
    with pytest.raises(ValueError, match=r"x has T=0 positions \(shape \(2, 0, 4\)\); expected at least 1"):
        CausalSelfAttention(4, 2, seed=0).forward(np.zeros((2, 0, 4)))
    assert lm.forward(np.zeros((0, 3), dtype=int)).shape == (0, 3, 5)  # logits for no sequence: fine
    with pytest.raises(ValueError, match="no token to average over"):
        lm.loss_and_grads(np.zeros((0, 3), dtype=int), np.zeros((0, 3), dtype=int))
    with pytest.raises(ValueError, match="no token to average over"):
        F.token_cross_entropy_backward(np.zeros((0, 3, 5)), np.zeros((0, 3), dtype=int))


@pytest.mark.parametrize("moe", [
    dict(n_experts=3),                                                      # dense softmax gate
    dict(n_experts=3, router="expert_choice", capacity_factor=2.0),         # expert choice
    dict(n_experts=4, top_k=2, gate="topk_then_softmax", noise="shazeer",
         balance={"importance": 0.1, "load": 0.1}),                         # Shazeer et al. 2017
    dict(n_experts=4, top_k=1, capacity_factor=1.0, balance={"switch": 0.01, "z_loss": 0.001}),  # Switch
])
def test_every_keyword_moe_configuration_trains_inside_the_model(moe, rng):
    lm = TransformerLM(6, d_model=4, n_heads=2, n_layers=2, max_len=5, hidden=3, seed=0, moe=moe)
    tokens = rng.integers(1, 6, (3, 6))
    x, y = tokens[:, :-1], tokens[:, 1:]
    mask = np.ones(x.shape, dtype=bool)
    mask[0, 3:] = False
    loss = lm.loss_and_grads(x, y, mask)
    assert np.isfinite(loss) and len(lm.moe_layers()) == 2
    assert lm.moe_layers()[0] is not lm.moe_layers()[1]
    grads = dict(lm.named_grads())
    assert all(grads[n].shape == p.shape and np.all(np.isfinite(grads[n])) for n, p in lm.named_parameters())
    assert np.abs(grads["blocks.0.ffn.moe.gate.W"]).max() > 0  # the router learns through the whole model
