"""SGD and Adam against step-by-step hand computations on a one-parameter model."""
import numpy as np
import pytest

from numpy_moe.layers import Module
from numpy_moe.optim import SGD, Adam


class Quadratic(Module):
    """A module with one parameter w and loss ½ w², so the gradient is w itself."""

    def __init__(self, w):
        super().__init__()
        self.params["w"] = np.array([w])
        self.grads["w"] = np.array([w])

    def set_grad(self):
        self.grads["w"] = self.params["w"].copy()


def run(opt, w0, steps):
    model = Quadratic(w0)
    trace = []
    for _ in range(steps):
        model.set_grad()
        opt.step(model)
        trace.append(float(model.params["w"][0]))
    return trace


def test_sgd_plain_and_decay():
    # w <- w - lr w = 0.9 w at lr 0.1
    assert run(SGD(0.1), 1.0, 3) == pytest.approx([0.9, 0.81, 0.729], rel=1e-15)
    opt, model = SGD(0.1, decay=0.5), Quadratic(1.0)
    model.set_grad(); opt.step(model); opt.end_epoch()
    model.set_grad(); opt.step(model)
    # epoch 1 at lr 0.1: 0.9; epoch 2 at lr 0.05: 0.9 - 0.05 * 0.9 = 0.855
    assert model.params["w"][0] == pytest.approx(0.855, rel=1e-15)


def test_sgd_momentum_by_hand():
    # v1 = g1 = 1, w1 = 1 - 0.1 = 0.9; v2 = 0.5 * 1 + 0.9 = 1.4, w2 = 0.9 - 0.14 = 0.76
    assert run(SGD(0.1, momentum=0.5), 1.0, 2) == pytest.approx([0.9, 0.76], rel=1e-14)


def test_adam_by_hand():
    # step 1: m = 0.1 g, v = 0.001 g², m̂ = g, v̂ = g²: w1 = w0 - lr * g / (|g| + eps) = 1 - 0.1 / (1 + 1e-8)
    # step 2: g = w1, m = 0.9*0.1 + 0.1*w1, v = 0.999*0.001 + 0.001*w1²,
    #         m̂ = m/0.19, v̂ = v/0.001999, w2 = w1 - 0.1 m̂ / (sqrt(v̂) + 1e-8)
    w1 = 1 - 0.1 / (1 + 1e-8)
    m_hat, v_hat = (0.09 + 0.1 * w1) / 0.19, (0.000999 + 0.001 * w1 ** 2) / (1 - 0.999 ** 2)
    expected = [w1, w1 - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)]
    assert run(Adam(0.1), 1.0, 2) == pytest.approx(expected, rel=1e-12)


def test_state_is_keyed_by_parameter_name():
    opt, model = Adam(0.1), Quadratic(1.0)
    model.set_grad()
    opt.step(model)
    assert set(opt.m) == {"w"}


@pytest.mark.parametrize("make,pattern", [
    (lambda: SGD(0), "lr=0 must be a finite number > 0"),
    (lambda: SGD(0.1, momentum=1.0), r"momentum=1.0 must be a finite number in \[0, 1\)"),
    (lambda: SGD(0.1, decay=0), r"decay=0 must be a finite number in \(0, 1\]"),
    (lambda: Adam(0.1, beta1=1.2), r"beta1=1.2 must be a finite number in \[0, 1\)"),
    (lambda: Adam(float("inf")), r"lr=inf must be a finite number > 0"),
    (lambda: SGD(float("nan")), r"lr=nan must be a finite number > 0"),
])
def test_bad_hyperparameters(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()


def test_adam_chunked_update_equals_whole_array_update():
    # A parameter larger than Adam.chunk is updated slice by slice; the numbers are those of one update of
    # the whole array (the same elementwise operations), bit for bit, over several steps, and the optimiser
    # state m, v stays the one array it was.
    rng = np.random.default_rng(0)

    class Params:
        def __init__(self, w):
            self.w = w.copy()

        def named_parameters(self):
            yield "w", self.w

        def named_grads(self):
            yield "w", self.g

    w0 = rng.standard_normal((3, 50, 7)).astype(np.float32)
    chunked, whole = Adam(0.01), Adam(0.01)
    chunked.chunk, whole.chunk = 64, w0.size  # 1050 elements: 17 slices, the last one shorter
    a, b = Params(w0), Params(w0)
    for _ in range(4):
        a.g = b.g = rng.standard_normal(w0.shape).astype(np.float32)
        chunked.step(a)
        whole.step(b)
    np.testing.assert_array_equal(a.w, b.w)
    np.testing.assert_array_equal(chunked.m["w"], whole.m["w"])
    np.testing.assert_array_equal(chunked.v["w"], whole.v["w"])
    assert not np.array_equal(a.w, w0)
