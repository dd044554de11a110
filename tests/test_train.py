"""The training loop: it learns, it is reproducible, it stops cleanly on divergence, it checks input."""
import numpy as np
import pytest

from numpy_moe.moe import MoE
from numpy_moe.optim import SGD, Adam
from numpy_moe.train import fit, predict


def blobs(rng, n=120):
    """Three well-separated Gaussian blobs in 2-D, labels 0..2."""
    centres = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, n)
    return centres[y] + 0.5 * rng.standard_normal((n, 2)), y


def test_training_reduces_the_loss_and_classifies(rng):
    X, y = blobs(rng)
    model = MoE(2, 3, n_experts=3, hidden=8, seed=0)
    history = fit(model, X, y, optimizer=Adam(0.02), epochs=30, batch_size=16, seed=0)
    assert history.loss[-1] < 0.2 * history.loss[0]
    assert (predict(model, X).argmax(axis=1) == y).mean() > 0.97
    assert len(history.time) == 30 and history.aux_loss == [0.0] * 30


def test_regression_with_mse_and_validation(rng):
    X = rng.uniform(-1, 1, (200, 1))
    y = np.abs(X[:, 0])
    model = MoE(1, 1, n_experts=2, seed=0)
    history = fit(model, X, y, loss="mse", optimizer=Adam(0.05), epochs=60, batch_size=32, seed=0,
                  X_val=X[:50], y_val=y[:50])
    assert len(history.val_loss) == 60 and history.val_loss[-1] < 0.01 < history.val_loss[0]


def test_same_seed_gives_bit_identical_training(rng):
    X, y = blobs(rng)
    outs = []
    for _ in range(2):
        model = MoE(2, 3, n_experts=3, hidden=8, seed=5)
        fit(model, X, y, optimizer=Adam(0.02), epochs=3, batch_size=16, seed=9)
        outs.append(predict(model, X))
    assert np.array_equal(outs[0], outs[1])


class RecordingSGD(SGD):
    """SGD that remembers the weights as they were after its last completed step."""

    def step(self, model):
        super().step(model)
        self.last = {n: p.copy() for n, p in model.named_parameters()}


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_raises_and_leaves_the_last_finite_weights(rng):
    X, y = blobs(rng)
    X = X * 1e300  # huge inputs: an SGD step at lr 10 sends the next batch's loss to NaN
    model = MoE(2, 3, n_experts=2, hidden=4, seed=0)
    opt = RecordingSGD(10.0)
    with pytest.raises(FloatingPointError, match=r"training diverged at epoch 1, batch \d+ \(loss=nan"):
        fit(model, X, y, optimizer=opt, epochs=5, batch_size=16, seed=0)
    for name, p in model.named_parameters():
        assert np.isfinite(p).all(), name
        assert np.array_equal(p, opt.last[name]), f"{name} was changed by the diverging step"


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(y=np.array([0, 1, 3] * 40)), ValueError, r"y has labels in \[0, 3\]; expected labels in \[0, 2\]"),
    (dict(y=np.array([0, 1, -1] * 40)), ValueError, r"y has labels in \[-1, 1\]"),
    (dict(y=np.zeros(7, dtype=int)), ValueError, r"y has shape \(7,\); expected \(120,\)"),
    (dict(y=np.zeros(120)), TypeError, "y has dtype float64; expected integer class labels"),
    (dict(loss="hinge"), ValueError, "loss='hinge' must be one of"),
    (dict(epochs=0), ValueError, "epochs=0 must be an integer >= 1"),
    (dict(batch_size=-1), ValueError, "batch_size=-1 must be an integer >= 1"),
])
def test_bad_arguments(kwargs, error, pattern, rng):
    X, y = blobs(rng)
    args = dict(y=y) | kwargs
    with pytest.raises(error, match=pattern):
        fit(MoE(2, 3, 2, seed=0), X, **args)
