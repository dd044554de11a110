"""The gradient checker itself: it must agree with closed forms and must fail on a wrong backward."""
import numpy as np
import pytest

from numpy_moe.gradcheck import check_module, numerical_gradient, rel_error
from numpy_moe.layers import Linear


def test_numerical_gradient_matches_a_closed_form(rng):
    # f(x) = sum(sin(x) * x²) has df/dx = cos(x) x² + 2 x sin(x)
    x = rng.standard_normal((3, 4))
    numeric = numerical_gradient(lambda v: float((np.sin(v) * v ** 2).sum()), x)
    exact = np.cos(x) * x ** 2 + 2 * x * np.sin(x)
    assert rel_error(numeric, exact) < 1e-9


def test_numerical_gradient_restores_its_input(rng):
    x = rng.standard_normal(5)
    before = x.copy()
    numerical_gradient(lambda v: float((v ** 3).sum()), x)
    assert np.array_equal(x, before)


def test_rel_error_definition():
    a, b = np.array([1.0, 2.0]), np.array([1.0, 2.5])
    assert rel_error(a, b) == pytest.approx(0.5 / 2.5)
    np.testing.assert_allclose(rel_error(a, b, elementwise=True), [0.0, 0.5 / 4.5])
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0


class BrokenLinear(Linear):
    """Linear with the bias gradient off by a factor of 2: the checker must notice."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["b"] = 2 * self.grads["b"]
        return dx


def test_check_module_passes_a_correct_layer(rng):
    errors = check_module(Linear(4, 3, seed=0), rng.standard_normal((5, 4)))
    assert set(errors) == {"input", "W", "b"} and max(errors.values()) < 1e-7


def test_check_module_fails_with_a_table_on_a_wrong_gradient(rng):
    with pytest.raises(AssertionError) as info:
        check_module(BrokenLinear(4, 3, seed=0), rng.standard_normal((5, 4)))
    message = str(info.value)
    assert "gradient check failed" in message and "rel error" in message
    failing = [line for line in message.splitlines() if line.endswith("FAIL")]
    assert len(failing) == 1 and failing[0].startswith("b "), message


class NaNLinear(Linear):
    """Linear whose bias gradient is NaN: a NaN error must fail the check, not pass it."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["b"] = self.grads["b"] * np.nan
        return dx


class NaNOutputLinear(Linear):
    """Linear whose output (so the loss and every numerical gradient) is NaN."""

    def forward(self, x):
        return super().forward(x) * np.nan


@pytest.mark.parametrize("layer", [NaNLinear, NaNOutputLinear])
def test_check_module_fails_on_a_nan_gradient(layer, rng):
    # Before: rel_error was NaN and `NaN > tol` is False, so check_module returned {'b': nan, ...} as a pass
    with pytest.raises(AssertionError, match="gradient check failed") as info:
        check_module(layer(4, 3, seed=0), rng.standard_normal((5, 4)))
    assert any(line.endswith("FAIL") for line in str(info.value).splitlines())


class RowBiasLinear(Linear):
    """Linear whose bias gradient has the right numbers in the wrong shape (1, O) instead of (O,)."""

    def backward(self, dy):
        dx = super().backward(dy)
        self.grads["b"] = self.grads["b"][None, :]
        return dx


class FlatInputLinear(Linear):
    """Linear whose input gradient comes back flattened, (N D,) instead of (N, D)."""

    def backward(self, dy):
        return super().backward(dy).ravel()


@pytest.mark.parametrize("layer,pattern", [(RowBiasLinear, r"b \(1, 3\), expected \(3,\)"),
                                           (FlatInputLinear, r"input \(8,\), expected \(2, 4\)")])
def test_check_module_names_a_gradient_of_the_wrong_shape(layer, pattern, rng):
    # Before: an IndexError from building the table (compared by broadcasting, the values may even agree)
    with pytest.raises(AssertionError, match=pattern):
        check_module(layer(4, 3, seed=0), rng.standard_normal((2, 4)))


@pytest.mark.parametrize("dtype", [np.int64, np.float32])
def test_numerical_gradient_refuses_arrays_that_are_not_float64(dtype):
    # Before: for the integers [1, 2, 3], x + h was stored as x and x - h as x - 1, so the "gradient" of
    # sum(x²) came out [5e5, 1.5e6, 2.5e6]; in float32 it was [1.967, 3.815, 5.722] for [2, 4, 6], and
    # check_module on a correct float32 layer reported FAIL
    with pytest.raises(TypeError, match=f"x has dtype {np.dtype(dtype)}; finite differences need a float64"):
        numerical_gradient(lambda v: float((v.astype(float) ** 2).sum()), np.array([1, 2, 3], dtype=dtype))
    with pytest.raises(TypeError, match="finite differences need"):
        check_module(Linear(4, 3, seed=0, dtype="float32"), np.ones((2, 4), dtype=np.float32))


def test_check_module_refuses_a_float32_model_before_any_forward_naming_the_parameter():
    # Before: with float64 x, the input's differences ran first through the float32 layer (2 N D + 2 forwards,
    # float32 rounding), then numerical_gradient refused the parameter W as "x has dtype float32"
    layer, calls = Linear(4, 3, seed=0, dtype="float32"), []

    def forward(z):
        calls.append(1)
        return layer.forward(z)

    with pytest.raises(TypeError, match="parameter W has dtype float32; finite differences need float64"):
        check_module(layer, np.ones((2, 4)), forward=forward)
    assert not calls
