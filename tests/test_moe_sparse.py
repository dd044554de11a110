"""The sparse MoE layer: gradient checks for every gate / noise / capacity / router combination, zero
gradient for idle experts, sparse and dense dispatch agreeing, a worked example, and bad arguments."""
import numpy as np
import pytest

from numpy_moe import balance as B
from numpy_moe.backend import default_rng
from numpy_moe.gradcheck import check_module
from numpy_moe.layers import Linear, Sequential
from numpy_moe.experts import ExpertBank
from numpy_moe.moe import MoE

TOL = 1e-6  # a composed model: gate + dispatch + experts + balance losses (MATH.md §8)

VARIANTS = {
    "softmax_then_topk": dict(top_k=2),
    "topk_then_softmax": dict(top_k=2, gate="topk_then_softmax"),
    "top1": dict(top_k=1),
    "linear_experts": dict(top_k=2, hidden=None),
    "shazeer_noise": dict(top_k=2, gate="topk_then_softmax", noise="shazeer",
                          balance={"importance": 0.5, "load": 0.5}),
    "vmoe_noise": dict(top_k=2, noise="vmoe", noise_std=4.0, balance={"importance": 0.5, "load": 0.5}),
    "capacity": dict(top_k=2, capacity_factor=0.75),
    "capacity_batch_priority": dict(top_k=2, noise="vmoe", noise_std=4.0, capacity_factor=0.75,
                                    batch_priority=True, balance={"importance": 0.5, "load": 0.5}),
    "switch": dict(top_k=1, capacity_factor=1.0, balance={"switch": 0.5, "z_loss": 0.1}),
    "expert_choice": dict(router="expert_choice", capacity_factor=1.5, balance={"importance": 0.5, "z_loss": 0.1}),
}


def build(rng, hidden=6, **kwargs):
    moe = MoE(5, 3, 4, hidden=hidden, seed=0, **kwargs)
    for _, p in moe.named_parameters():  # nonzero biases and noise weights, as after training
        p += 0.3 * rng.standard_normal(p.shape)
    return moe


def frozen_forward(moe, model=None):
    """``model.forward`` (default: ``moe``) that replays one noise draw of ``moe`` and asserts that its
    routing and ReLU pattern never change."""
    seen = []

    def forward(x):
        moe.gate.rng = default_rng(9)
        y = (model or moe).forward(x)
        r = moe.routing
        state = [r.sample, r.expert, r.kept] + [h > 0 for h in moe.experts.hs[1:-1]]
        if seen:
            for a, b in zip(seen, state):
                np.testing.assert_array_equal(a, b, err_msg="routing or ReLU pattern changed under perturbation")
        else:
            seen.extend(s.copy() for s in state)
        return y
    return forward


@pytest.mark.parametrize("name", VARIANTS)
def test_gradients_wrt_input_and_every_parameter(name, rng):
    moe = build(rng, **VARIANTS[name])
    x = rng.standard_normal((12, 5))
    errors = check_module(moe, x, tol=TOL, forward=frozen_forward(moe))
    assert set(errors) == {"input"} | {name for name, _ in moe.named_parameters()}
    assert max(errors.values()) < TOL
    if "capacity" in name:
        assert moe.diagnostics["dropped"] > 0, "the capacity variants must actually drop assignments"
    if "balance" in VARIANTS[name]:
        assert moe.aux_loss > 0


def test_worked_example():
    # One sample x = (1, 1); three linear experts E_e(x) = (e + 1)(x1 + x2): 2, 4, 6.
    # Gate logits b = log(1, 2, 5): softmax = (1/8, 2/8, 5/8); top-2 keeps experts 2 and 1 with weights
    # 5/8 and 2/8 (softmax_then_topk does not renormalise), so y = 5/8 * 6 + 2/8 * 4 = 38/8 = 4.75.
    moe = MoE(2, 1, 3, top_k=2, seed=0)
    moe.gate.params["W"][:] = 0
    moe.gate.params["b"][:] = np.log([1, 2, 5])
    moe.experts.params["W"][:] = np.arange(1, 4)[:, None, None] * np.ones((3, 2, 1))
    moe.experts.params["b"][:] = 0
    assert moe.forward(np.ones((1, 2)))[0, 0] == pytest.approx(4.75, rel=1e-15)
    assert moe.routing.expert.tolist() == [2, 1]
    # topk_then_softmax renormalises over the kept two: (5/7, 2/7) -> 30/7 + 8/7 = 38/7.
    moe.gate.convention = "topk_then_softmax"
    assert moe.forward(np.ones((1, 2)))[0, 0] == pytest.approx(38 / 7, rel=1e-15)


def test_idle_expert_gets_exactly_zero_gradient(rng):
    moe = build(rng, top_k=2, balance={"importance": 0.5})
    moe.gate.params["b"][3] = -50.0  # expert 3 is never among the top 2
    x = rng.standard_normal((12, 5))
    moe.forward(x)
    moe.backward(rng.standard_normal((12, 3)))
    assert moe.diagnostics["samples_per_expert"][3] == 0
    for key, g in moe.experts.grads.items():
        assert not g[3].any(), f"idle expert 3 has a nonzero {key} gradient"
        assert g[:3].any()


def test_sparse_with_k_equal_e_matches_the_dense_layer(rng):
    # top_k = E with softmax_then_topk keeps the full softmax: the dense MoE, computed by sparse dispatch.
    x = rng.standard_normal((10, 5))
    dy = rng.standard_normal((10, 3))
    dense, sparse = MoE(5, 3, 4, hidden=6, seed=3), MoE(5, 3, 4, hidden=6, seed=3, top_k=4)
    np.testing.assert_allclose(sparse.forward(x), dense.forward(x), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(sparse.backward(dy), dense.backward(dy), rtol=1e-13, atol=1e-14)
    for (name, a), (_, b) in zip(sparse.named_grads(), dense.named_grads()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("dispatch", ["dense", "padded"])
@pytest.mark.parametrize("name", ["softmax_then_topk", "capacity_batch_priority", "expert_choice", "linear_experts",
                                  "shazeer_noise"])
def test_sparse_and_dense_dispatch_agree(name, dispatch, rng):
    if name == "expert_choice" and dispatch == "padded":
        pytest.skip("padded dispatch needs a top-k routing; test_padded_dispatch_refuses_expert_choice checks that")
    x = rng.standard_normal((12, 5))
    dy = rng.standard_normal((12, 3))
    kwargs = {k: v for k, v in VARIANTS[name].items()}
    a, b = build(np.random.default_rng(0), **kwargs), build(np.random.default_rng(0), dispatch=dispatch, **kwargs)
    a.gate.rng, b.gate.rng = default_rng(1), default_rng(1)
    np.testing.assert_allclose(a.forward(x), b.forward(x), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(a.backward(dy), b.backward(dy), rtol=1e-12, atol=1e-14)
    for (key, ga), (_, gb) in zip(a.named_grads(), b.named_grads()):
        np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-14, err_msg=key)


@pytest.mark.parametrize("activation", ["relu", "swiglu", "geglu", "gptoss_swiglu"])
def test_padded_dispatch_equals_sparse_dispatch_for_every_expert_type_and_passes_the_gradient_check(
        activation, check_fixed_choice):
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((20, 5)), rng.standard_normal((20, 3))
    layers = []
    for dispatch in ("sparse", "padded"):
        experts = ExpertBank(6, 5, 3, 4, seed=1, activation=activation)
        layer = MoE(5, 3, 6, seed=0, top_k=2, experts=experts, dispatch=dispatch, capacity_factor=0.7,
                    balance={"switch": 0.1})
        for _, p in layer.named_parameters():
            p += 0.3 * np.random.default_rng(5).standard_normal(p.shape)
        layers.append(layer)
    sparse, padded = layers
    np.testing.assert_allclose(padded.forward(x), sparse.forward(x), rtol=1e-13, atol=1e-14)
    assert padded.dispatch_now == "padded" and not padded.routing.kept.all(), "the check needs dropped assignments"
    np.testing.assert_allclose(padded.backward(dy), sparse.backward(dy), rtol=1e-12, atol=1e-14)
    for (key, ga), (_, gb) in zip(padded.named_grads(), sparse.named_grads()):
        np.testing.assert_allclose(ga, gb, rtol=1e-12, atol=1e-14, err_msg=key)
    assert max(check_fixed_choice(padded, x).values()) < 1e-6  # §8's pass mark for a layer with its experts


def test_padded_dispatch_refuses_expert_choice(rng):
    layer = MoE(5, 3, 4, hidden=6, seed=0, router="expert_choice", capacity_factor=1.0, dispatch="padded")
    with pytest.raises(ValueError, match="dispatch='padded' needs a top-k routing"):
        layer.forward(rng.standard_normal((8, 5)))


def test_diagnostics_count_kept_and_dropped(rng):
    moe = build(rng, top_k=2, capacity_factor=0.5)  # C = ceil(12 * 2 * 0.5 / 4) = 3
    moe.forward(rng.standard_normal((12, 5)))
    d = moe.diagnostics
    r = moe.routing
    assert d["samples_per_expert"].max() <= 3 and d["samples_per_expert"].sum() == 24 - d["dropped"]
    np.testing.assert_allclose(d["importance"], np.bincount(r.expert, weights=r.weight, minlength=4))
    dense = MoE(5, 3, 4, seed=0)
    dense.forward(rng.standard_normal((6, 5)))
    assert dense.diagnostics["samples_per_expert"].tolist() == [6] * 4 and dense.diagnostics["dropped"] == 0


def test_inside_sequential(rng):
    model = Sequential(build(rng, top_k=2, balance={"importance": 0.5}), Linear(3, 2, seed=1))
    x = rng.standard_normal((12, 5))
    errors = check_module(model, x, tol=TOL, forward=frozen_forward(model.layers[0], model))
    assert max(errors.values()) < TOL and "layers.0.gate.W" in errors and model.aux_loss > 0


def test_float32_and_eval_mode(rng):
    moe = MoE(5, 3, 4, hidden=6, seed=0, dtype="float32", top_k=2, noise="vmoe", balance={"importance": 0.1})
    x = rng.standard_normal((9, 5)).astype(np.float32)
    y = moe.forward(x)
    assert y.dtype == np.float32 and moe.backward(np.ones_like(y)).dtype == np.float32
    assert all(g.dtype == np.float32 for _, g in moe.named_grads())
    moe.eval()
    assert np.array_equal(moe.forward(x), moe.forward(x)), "evaluation must not add noise"


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(top_k=5), ValueError, "top_k=5 must be between 1 and n_experts=4"),
    (dict(top_k=2, gate="dense"), ValueError, "gate='dense' must be one of"),
    (dict(top_k=2, noise="gumbel"), ValueError, "noise='gumbel' must be one of"),
    (dict(router="hash"), ValueError, "router='hash' must be one of"),
    (dict(noise="vmoe"), ValueError, "need a sparse gate"),
    (dict(balance={"importance": 0.1}), ValueError, "need a sparse gate"),
    (dict(top_k=2, capacity_factor=0), ValueError, "capacity_factor=0 must be a finite number > 0"),
    (dict(router="expert_choice"), ValueError, "router='expert_choice' takes capacity_factor"),
    (dict(router="expert_choice", top_k=2, capacity_factor=1), ValueError, "no top_k or noise"),
    (dict(top_k=2, balance={"load": 0.1}), ValueError, "balance 'load' needs a noisy gate"),
    (dict(top_k=2, balance={"entropy": 0.1}), ValueError, "unknown loss 'entropy'"),
    (dict(top_k=2, balance=["importance"]), TypeError, "expected numpy_moe.balance loss objects"),
    (dict(top_k=2, dispatch="gather"), ValueError, "dispatch='gather' must be one of"),
])
def test_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        MoE(5, 3, 4, **kwargs)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(top_k=2),
    dict(top_k=2, balance={"seed000": 0.01}),
    dict(top_k=2, gate="topk_then_softmax", noise="shazeer", balance={"importance": 0.1, "load": 0.1}),
    dict(top_k=2, noise="vmoe", capacity_factor=1.05, batch_priority=True,
         balance={"importance": 0.005, "load": 0.005}),
    dict(top_k=1, capacity_factor=1.25, balance={"switch": 0.01, "z_loss": 0.001}),
    dict(router="expert_choice", capacity_factor=2),
    dict(top_k=2, balance=[B.Importance(0.01, source="gates"), B.ZLoss(1e-3)]),
], ids=str)
def test_the_variants_of_the_module_docstring_build_and_run(kwargs, rng):
    moe = MoE(6, 3, 4, hidden=5, seed=0, **kwargs)
    x = rng.standard_normal((20, 6))
    y = moe.forward(x)
    dx = moe.backward(np.ones_like(y))
    assert y.shape == (20, 3) and dx.shape == x.shape and np.isfinite(moe.aux_loss)
    assert all(np.isfinite(g).all() for _, g in moe.named_grads())


@pytest.mark.auto_dispatch
def test_auto_dispatch_runs_small_batches_dense_or_padded_and_large_ones_sparse():
    # MoEClassifier's layer on the digits (D=64, H=16, E=4, K=2): dense costs 6 n (E-K) (D H + H O) more flops,
    # below the sparse path's fixed cost up to n ~ 1000; a layer with E=16, H=128 goes padded, then sparse
    import numpy_moe.dispatch as M
    small = MoE(64, 10, 4, hidden=16, seed=0, top_k=2)
    big = MoE(64, 64, 16, hidden=128, seed=0, top_k=2)
    limit = (M.SPARSE_FIXED_US + M.SPARSE_PER_EXPERT_US * 4) * M.FLOPS_PER_US / (6 * 2 * (64 * 16 + 16 * 10))
    assert M.dense_is_cheaper(int(limit), 2, small.experts) and not M.dense_is_cheaper(int(limit) + 1, 2, small.experts)
    rng = np.random.default_rng(0)
    for layer, n, dense in [(small, 32, True), (small, 4096, False), (big, 32, False)]:
        layer.forward(rng.standard_normal((n, 64)))
        assert layer.dense_now == dense, (layer.n_experts, n)
    # the three-way choice agrees with dense_is_cheaper between dense and sparse; padded dispatch wins where
    # the busiest expert's rows times E are well below N E: 16 experts of 128 units at N = 16, not 16384
    for n in (int(limit), int(limit) + 1):
        assert (M.cheapest_dispatch(n, 2, small.experts, n) == "dense") == M.dense_is_cheaper(n, 2, small.experts)
    for n, expected in [(16, "padded"), (16384, "sparse")]:
        big.forward(rng.standard_normal((n, 64)))
        assert big.dispatch_now == expected, n


@pytest.mark.auto_dispatch
def test_auto_dispatch_on_a_small_batch_equals_sparse_dispatch_and_passes_the_gradient_check(check_fixed_choice):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 5))
    kwargs = dict(hidden=4, seed=1, top_k=2, balance={"importance": 0.1, "switch": 0.1})
    auto, sparse = MoE(5, 3, 4, **kwargs), MoE(5, 3, 4, dispatch="sparse", **kwargs)
    y = auto.forward(x)
    assert auto.dense_now and not getattr(sparse, "dense_now", False)
    np.testing.assert_allclose(y, sparse.forward(x), rtol=1e-12, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(auto.backward(dy), sparse.backward(dy), rtol=1e-12, atol=1e-14)
    for (name, a), (_, b) in zip(auto.named_grads(), sparse.named_grads()):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14, err_msg=name)
    errors = check_fixed_choice(auto, x)
    assert max(errors.values()) < 1e-6  # §8's pass mark for a layer with its experts
