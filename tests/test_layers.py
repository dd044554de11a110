"""Linear, activations, MLP and Sequential: gradients, the Module contract, init, dtype, bad input."""
import inspect

import numpy as np
import pytest

from numpy_moe.gradcheck import check_module
from numpy_moe.layers import MLP, Linear, Module, NoForwardPassError, ReLU, Sequential, Tanh

TOL_LAYER, TOL_MODEL = 1e-7, 1e-6  # MATH.md §8: single layers, composed models


def test_linear_gradients(rng):
    assert max(check_module(Linear(5, 3, seed=0), rng.standard_normal((6, 5)), tol=TOL_LAYER).values()) < TOL_LAYER


def test_linear_forward_is_x_w_plus_b(rng):
    layer = Linear(5, 3, seed=0)
    layer.params["b"][:] = rng.standard_normal(3)
    x = rng.standard_normal((4, 5))
    np.testing.assert_allclose(layer.forward(x), x @ layer.params["W"] + layer.params["b"], rtol=1e-14)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_mlp_gradients(activation, rng):
    mlp = MLP(5, (8, 6), 3, activation=activation, seed=0)
    # Zero biases can put a ReLU pre-activation exactly at the kink (a sample whose hidden units are all
    # off feeds exactly 0 forward); random biases keep every pre-activation away from it (MATH.md §8).
    for _, p in mlp.named_parameters():
        p += 0.5 * rng.standard_normal(p.shape) * (p.ndim == 1)
    errors = check_module(mlp, rng.standard_normal((7, 5)), tol=TOL_MODEL)
    assert len(errors) == 1 + 6  # the input and W, b of three Linear layers


def test_activation_modules_match_their_formulas(rng):
    x = rng.standard_normal((3, 4))
    np.testing.assert_array_equal(ReLU().forward(x), np.maximum(x, 0))
    np.testing.assert_allclose(Tanh().forward(x), np.tanh(x), rtol=1e-15)
    check_module(Tanh(), x, tol=TOL_LAYER)


def test_named_parameters_are_dotted_and_match_grads():
    model = Sequential(Linear(4, 5, seed=0), ReLU(), MLP(5, 3, 2, seed=1))
    names = [n for n, _ in model.named_parameters()]
    assert names == ["layers.0.W", "layers.0.b", "layers.2.layers.0.W", "layers.2.layers.0.b",
                     "layers.2.layers.2.W", "layers.2.layers.2.b"]
    assert names == [n for n, _ in model.named_grads()]
    for m in model.modules():
        assert m.params.keys() == m.grads.keys()
    assert model.n_parameters() == 4 * 5 + 5 + 5 * 3 + 3 + 3 * 2 + 2


def test_backward_overwrites_grads_instead_of_accumulating(rng):
    layer = Linear(3, 2, seed=0)
    x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    layer.forward(x)
    layer.backward(dy)
    first = layer.grads["W"].copy()
    layer.forward(x)
    layer.backward(dy)
    np.testing.assert_array_equal(layer.grads["W"], first)


def test_train_eval_reach_every_module():
    model = Sequential(Linear(2, 2, seed=0), MLP(2, 3, 1, seed=0))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_same_seed_same_weights_and_init_scale():
    a, b = Linear(400, 300, init="he", seed=7), Linear(400, 300, init="he", seed=7)
    np.testing.assert_array_equal(a.params["W"], b.params["W"])
    # He: std sqrt(2/400) = 0.0707; Glorot: sqrt(2/700) = 0.0535. 120k draws: the sample std is
    # within 1% of the target with overwhelming probability (its relative sd is 1/sqrt(2 n) = 0.2%).
    assert a.params["W"].std() == pytest.approx(np.sqrt(2 / 400), rel=0.01)
    assert Linear(400, 300, seed=7).params["W"].std() == pytest.approx(np.sqrt(2 / 700), rel=0.01)
    with pytest.raises(ValueError, match="init='xavier' must be 'he' or 'glorot'"):
        Linear(2, 2, init="xavier")


def test_float32_layers_keep_float32_and_match_float64(rng):
    x = rng.standard_normal((5, 4))
    m32, m64 = MLP(4, 6, 2, seed=3, dtype="float32"), MLP(4, 6, 2, seed=3)
    y32 = m32.forward(x)
    assert y32.dtype == np.float32 and all(p.dtype == np.float32 for _, p in m32.named_parameters())
    np.testing.assert_allclose(y32, m64.forward(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,error,pattern", [
    (np.zeros(4), ValueError, r"x has ndim=1 \(shape \(4,\)\); expected a 2-D array"),
    (np.zeros((2, 5)), ValueError, r"x has 5 features \(shape \(2, 5\)\); expected 4"),
    (np.array([[0.0, np.nan, 0.0, 0.0]]), ValueError, "x contains NaN or inf"),
    (np.array([[0.0, np.inf, 0.0, 0.0]]), ValueError, "x contains NaN or inf"),
    (np.zeros((2, 4), dtype=int), TypeError, "x has dtype int64; expected a floating dtype"),
])
def test_bad_input_is_rejected_with_a_clear_message(bad, error, pattern):
    with pytest.raises(error, match=pattern):
        Linear(4, 3, seed=0).forward(bad)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="in_features=0 must be an integer >= 1"):
        Linear(0, 3)
    with pytest.raises(TypeError, match="dtype=int32 must be float32 or float64"):
        Linear(2, 3, dtype="int32")
    with pytest.raises(ValueError, match="activation='gelu' must be one of"):
        MLP(2, 3, 1, activation="gelu")


def test_sequential_refuses_a_module_it_already_holds(rng):
    # a module keeps its last forward for its backward, so one instance at two places in a stack gets the
    # second forward's cache in both backwards: before, the gradients of Sequential(lin, act, lin) and of a
    # shared ReLU were wrong by 0.5-1.3 (relative) without a word, and an optimiser stepped lin twice
    lin, act = Linear(3, 3, seed=0), ReLU()
    with pytest.raises(ValueError, match=r"layers 0 and 2 are the same Linear"):
        Sequential(lin, act, lin)
    with pytest.raises(ValueError, match=r"layers 1 and 3 are the same ReLU"):
        Sequential(Linear(3, 3, seed=0), act, Linear(3, 3, seed=1), act)
    with pytest.raises(ValueError, match=r"layers 0 and 1 are the same Linear"):  # also inside a child
        Sequential(Sequential(lin), lin)
    check_module(Sequential(lin, act, Linear(3, 3, seed=1)), rng.standard_normal((4, 3)))  # distinct: fine


def _required_args(method):
    """Arguments for each required positional parameter of ``method`` (any value: the check comes first)."""
    params = inspect.signature(method).parameters.values()
    return [np.ones((2, 3)) for p in params if p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD]


def test_backward_before_forward_raises_a_runtime_error_naming_the_class_for_every_registered_module():
    # Every backward read a cache its forward leaves (self.x, self.routing, ...): called first it raised an
    # AttributeError about that attribute (MoE and SoftMoE a ValueError of their own). Module checks it once
    # for every subclass: the forward records that it ran.
    from test_io import _examples
    wrong, without = {}, []
    for name, model in _examples().items():
        if type(model).backward is Module.backward:  # no backward at all (LocalExperts, the BalanceLoss base)
            without.append(name)
            continue
        try:
            model.backward(*_required_args(model.backward))
        except RuntimeError as err:
            if not str(err).startswith(f"{type(model).__name__}.backward called before forward"):
                wrong[name] = f"RuntimeError: {err}"
        except Exception as err:  # noqa: BLE001 (the old AttributeErrors are what the test is about)
            wrong[name] = f"{type(err).__name__}: {err}"
        else:
            wrong[name] = "no error"
    assert not wrong, wrong
    assert sorted(without) == ["numpy_moe.balance.losses:BalanceLoss", "numpy_moe.classic:LocalExperts"]


def test_backward_after_a_forward_that_raised_is_refused_and_a_good_forward_allows_it_again():
    layer = Linear(3, 2, seed=0)
    x = np.ones((4, 3))
    layer.forward(x)
    layer.backward(np.ones((4, 2)))
    with pytest.raises(ValueError, match="x has 5 features"):
        layer.forward(np.ones((4, 5)))  # the wrong width: what the cache holds is no longer this forward's
    with pytest.raises(NoForwardPassError, match="Linear.backward called before forward"):
        layer.backward(np.ones((4, 2)))
    layer.forward(x)
    np.testing.assert_array_equal(layer.backward(np.ones((4, 2))), np.ones((4, 2)) @ layer.params["W"].T)


def test_the_grouped_pass_and_a_class_of_your_own_are_checked_too():
    from numpy_moe.conv_moe import ConvMoE2d
    from numpy_moe.experts import ExpertBank
    bank = ExpertBank(3, 4, 2, hidden=5, seed=0)
    with pytest.raises(NoForwardPassError, match="ExpertBank.backward_grouped called before forward_grouped"):
        bank.backward_grouped(np.ones((2, 2)))
    bank.forward_grouped(np.ones((2, 4)), [0, 1, 2, 2])
    assert bank.backward_grouped(np.ones((2, 2))).shape == (2, 4)
    with pytest.raises(NoForwardPassError, match="ExpertBank.backward called before forward"):
        bank.backward(np.ones((3, 2, 2)))  # the dense pass has not run

    class Double(Module):  # defined by a user: no code of its own for the check
        def forward(self, x):
            self.x = x
            return 2 * x

        def backward(self, dy):
            return 2 * dy

    with pytest.raises(NoForwardPassError, match="Double.backward called before forward"):
        Double().backward(np.ones(2))
    conv = ConvMoE2d(1, 2, 3, n_experts=2, seed=0)  # its gate() runs a forward of its own and puts the cache back
    conv.gate(np.ones((1, 1, 4, 4)))
    with pytest.raises(NoForwardPassError, match="ConvMoE2d.backward called before forward"):
        conv.backward(np.ones((1, 2, 2, 2)))


def test_a_forward_that_raises_after_its_super_forward_returned_is_refused_too():
    # The subclass's forward and Linear's are both checked: Linear's recorded that it returned, then the
    # subclass's own check raised, and the backward went on with that half-finished pass (review of the
    # check: it set the flag only on return, so the inner call's True stayed).
    class Bounded(Linear):
        def forward(self, x):
            y = super().forward(x)
            if np.abs(y).max() > 1e3:
                raise ValueError("output out of range")
            return y

    layer = Bounded(3, 2, seed=0)
    layer.forward(np.ones((4, 3)))
    with pytest.raises(ValueError, match="out of range"):
        layer.forward(np.full((4, 3), 1e6))
    with pytest.raises(NoForwardPassError, match="Bounded.backward called before forward"):
        layer.backward(np.ones((4, 2)))
    layer.forward(np.ones((4, 3)))  # a good forward allows it again
    assert layer.backward(np.ones((4, 2))).shape == (4, 3)
