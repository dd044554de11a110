"""ExpertBank: dense and grouped passes, their gradients, and their agreement."""
import numpy as np
import pytest

from numpy_moe.experts import ExpertBank
from numpy_moe.gradcheck import check_module, numerical_gradient, rel_error

TOL = 1e-7  # one layer of stacked experts (MATH.md §8)


@pytest.mark.parametrize("hidden", [None, 6])
def test_dense_gradients(hidden, rng):
    bank = ExpertBank(3, 4, 2, hidden=hidden, seed=0)
    assert max(check_module(bank, rng.standard_normal((5, 4)), tol=TOL).values()) < TOL


@pytest.mark.parametrize("kwargs", [dict(hidden=None), dict(hidden=5), dict(hidden=5, activation="swiglu"),
                                    dict(hidden=5, activation="gptoss_swiglu")])
def test_a_batch_per_expert_gradients_and_agreement_with_each_expert_alone(kwargs, rng):
    """x (E, C, D), expert e on its own rows x[e] (the sparse layer's padded dispatch)."""
    bank = ExpertBank(3, 4, 2, seed=0, **kwargs)
    for _, p in bank.named_parameters():
        p += 0.3 * rng.standard_normal(p.shape)
    x = rng.standard_normal((3, 5, 4))
    out = bank.forward(x)
    for e in range(3):
        np.testing.assert_allclose(out[e], bank.forward(x[e])[e], rtol=1e-13, atol=1e-14)
    R = rng.standard_normal(out.shape)

    def loss(_):
        return float((R * bank.forward(x)).sum())

    bank.forward(x)
    dx = bank.backward(R)
    assert dx.shape == x.shape
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    for key, p in bank.params.items():
        assert rel_error(bank.grads[key], numerical_gradient(loss, p)) < TOL, key


def test_dense_forward_is_each_expert_on_every_sample(rng):
    bank = ExpertBank(3, 4, 2, hidden=5, seed=0)
    p = bank.params
    x = rng.standard_normal((6, 4))
    out = bank.forward(x)
    for e in range(3):
        expected = np.maximum(x @ p["W1"][e] + p["b1"][e], 0) @ p["W2"][e] + p["b2"][e]
        np.testing.assert_allclose(out[e], expected, rtol=1e-13)


@pytest.mark.parametrize("kwargs", [dict(hidden=None), dict(hidden=5), dict(hidden=5, activation="swiglu"),
                                    dict(hidden=5, activation="geglu", bias=True)])
def test_grouped_pass_gradients_with_an_empty_expert(kwargs, rng):
    """Every expert type (the gated-linear ones perturbed off their initial weights)."""
    bank = ExpertBank(3, 4, 2, seed=0, **kwargs)
    for _, p in bank.named_parameters():
        p += 0.3 * rng.standard_normal(p.shape)
    x = rng.standard_normal((7, 4))
    offsets = [0, 3, 3, 7]  # expert 1 receives no rows
    R = rng.standard_normal((7, 2))

    def loss(_):
        return float((R * bank.forward_grouped(x, offsets)).sum())

    bank.forward_grouped(x, offsets)
    dx = bank.backward_grouped(R)
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    for key, p in bank.params.items():
        assert rel_error(bank.grads[key], numerical_gradient(loss, p)) < TOL, key
        assert not bank.grads[key][1].any(), f"expert 1 got no rows, its {key} gradient must be exactly 0"


@pytest.mark.parametrize("kwargs", [dict(), dict(activation="swiglu", bias=True), dict(activation="geglu", bias=True)])
def test_grouped_and_dense_agree(kwargs, rng):
    bank = ExpertBank(3, 4, 2, hidden=5, seed=1, **kwargs)
    for _, p in bank.named_parameters():  # off the initial weights (biases start at 0)
        p += 0.3 * rng.standard_normal(p.shape)
    x = rng.standard_normal((6, 4))
    dout = rng.standard_normal((3, 6, 2))
    dense = bank.forward(x)
    dx_dense = bank.backward(dout)
    g_dense = {k: v.copy() for k, v in bank.grads.items()}
    grouped = bank.forward_grouped(np.concatenate([x] * 3), [0, 6, 12, 18])
    dx_grouped = bank.backward_grouped(dout.reshape(18, 2)).reshape(3, 6, 4).sum(axis=0)
    np.testing.assert_allclose(grouped, dense.reshape(18, 2), rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dx_grouped, dx_dense, rtol=1e-12, atol=1e-14)
    for k in g_dense:
        np.testing.assert_allclose(bank.grads[k], g_dense[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_grouped_forwards_of_changing_block_sizes_each_match_the_dense_pass(rng):
    """The ReLU's zeros are kept between grouped forwards and reused while they are long enough: a long
    block, then shorter ones, then a longer one, then another dtype must each give the dense pass's rows."""
    banks = {dtype: ExpertBank(3, 4, 2, hidden=5, seed=1, dtype=dtype) for dtype in ("float64", "float32")}
    for bank in banks.values():  # off the initial weights, so that the biases and the ReLU matter
        for _, p in bank.named_parameters():
            p += (0.3 * rng.standard_normal(p.shape)).astype(p.dtype)
    for dtype, sizes in [("float64", [9, 2, 0]), ("float64", [1, 3, 2]), ("float64", [4, 12, 1]),
                         ("float32", [5, 0, 14])]:
        bank, tol = banks[dtype], dict(rtol=1e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-13, atol=1e-14)
        x = rng.standard_normal((sum(sizes), 4)).astype(dtype)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        grouped, dense = bank.forward_grouped(x, offsets), bank.forward(x)
        for e in range(3):
            lo, hi = offsets[e], offsets[e + 1]
            np.testing.assert_allclose(grouped[lo:hi], dense[e, lo:hi], **tol)
        assert not bank._zeros.any(), "the ReLU's zeros are only read"


def test_n_experts_must_be_positive():
    with pytest.raises(ValueError, match="n_experts=0 must be an integer >= 1"):
        ExpertBank(0, 3, 2)


@pytest.mark.parametrize("hidden, activation", [(None, "relu"), (5, "relu"), (5, "swiglu")])
def test_every_expert_on_no_samples_gives_empty_outputs_and_zero_gradients(hidden, activation):
    # the dense pass's backward reshaped with -1, which NumPy cannot resolve for 0 rows
    bank = ExpertBank(3, 4, 2, hidden, seed=0, activation=activation)
    y = bank.forward(np.zeros((0, 4)))
    assert y.shape == (3, 0, 2)
    dx = bank.backward(np.zeros(y.shape))
    assert dx.shape == (0, 4)
    for key, g in bank.grads.items():
        assert g.shape == bank.params[key].shape and not g.any(), key
