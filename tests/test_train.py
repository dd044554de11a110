"""The training loop: it learns, it is reproducible, it stops cleanly on divergence, it checks input."""
import numpy as np
import pytest

from numpy_moe.layers import Linear
from numpy_moe.moe import MoE
from numpy_moe.optim import FTRL, SGD, Adam
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


@pytest.mark.parametrize("make_optimizer", [lambda: Adam(0.02), lambda: SGD(0.05, momentum=0.9, decay=0.8),
                                            lambda: FTRL(0.5, l1=1e-3)], ids=["adam", "sgd", "ftrl"])
def test_training_resumed_with_the_same_optimiser_and_generator_is_bit_identical(make_optimizer, rng):
    # 2 + 2 epochs against 4: the optimiser's moments, step count and decayed rate, the shuffling
    # Generator and the gate's aux-loss-free selection bias (a buffer moved by end_step) all carry over
    from numpy_moe.gates import ScoreGate
    X, y = blobs(rng)
    runs = []
    for split in ([4], [2, 2]):
        model = MoE(gate=ScoreGate(2, 4, top_k=2, bias_update=0.01, seed=1), out_features=3, hidden=6, seed=5)
        optimizer, shuffle = make_optimizer(), np.random.default_rng(9)
        for epochs in split:
            fit(model, X, y, optimizer=optimizer, epochs=epochs, batch_size=16, seed=shuffle)
        runs.append(model)
    assert np.abs(runs[0].gate.buffers["bias"]).max() > 0, "the selection bias must have moved"
    for (name, p), (_, q) in zip(runs[0].named_parameters(), runs[1].named_parameters()):
        assert np.array_equal(p, q), name
    assert np.array_equal(runs[0].gate.buffers["bias"], runs[1].gate.buffers["bias"])


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_in_the_first_epoch_puts_back_the_weights_fit_started_from(rng):
    X, y = blobs(rng)
    X = X * 1e300  # huge inputs: an SGD step at lr 10 sends the next batch's loss to NaN
    model = MoE(2, 3, n_experts=2, hidden=4, seed=0)
    start = {n: p.copy() for n, p in model.named_parameters()}
    opt = SGD(10.0, momentum=0.5)
    with pytest.raises(FloatingPointError, match=r"training diverged at epoch 1, batch \d+: loss=nan.*put back "
                                                 r"as they were at the start of fit"):
        fit(model, X, y, optimizer=opt, epochs=5, batch_size=16, seed=0)
    for name, p in model.named_parameters():
        assert np.array_equal(p, start[name]), f"{name} was not put back"
    assert opt.t == 0 and opt.velocity == {}, "the optimiser state was not put back"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_in_a_later_epoch_puts_back_the_end_of_the_last_good_epoch(rng):
    X, y = blobs(rng)
    model = MoE(2, 3, n_experts=2, hidden=4, seed=0)
    kept = {}

    def blow_up(epoch, model, history):  # after epoch 2, huge inputs with wrong labels: a loss of ~1e300
        kept.update({n: p.copy() for n, p in model.named_parameters()})
        if epoch == 1:  # fit shares X and y with this closure (float64 and int arrays are not copied)
            X[:] *= 1e300
            y[:] = (y + 1) % 3
    opt = SGD(0.1)
    with pytest.raises(FloatingPointError, match=r"at epoch 3, batch \d+.*as they were at the end of epoch 2"):
        fit(model, X, y, optimizer=opt, epochs=5, batch_size=16, seed=0, callback=blow_up)
    for name, p in model.named_parameters():
        assert np.array_equal(p, kept[name]), f"{name} is not the end-of-epoch-2 weight"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_divergence_puts_back_the_buffers_of_the_last_good_epoch(rng):
    # the test above has no buffers: here the selection bias moves after every step of the diverging epoch
    # (end_step) and must be put back with the weights
    from numpy_moe.gates import ScoreGate
    X, y = blobs(rng)
    model = MoE(gate=ScoreGate(2, 4, top_k=2, bias_update=0.01, seed=1), out_features=3, hidden=4, seed=0)
    kept = {}

    def blow_up(epoch, model, history):
        kept.update({n: b.copy() for n, b in model.named_buffers()})
        if epoch == 1:
            X[:] *= 1e300
            y[:] = (y + 1) % 3
    with pytest.raises(FloatingPointError, match=r"at epoch 3.*as they were at the end of epoch 2"):
        fit(model, X, y, optimizer=SGD(0.1), epochs=5, batch_size=16, seed=0, callback=blow_up)
    assert np.abs(kept["gate.bias"]).max() > 0, "the selection bias must have moved by then"
    for name, b in model.named_buffers():
        assert np.array_equal(b, kept[name]), f"{name} is not the end-of-epoch-2 buffer"


class Exploding(Linear):
    """A linear model whose gradients are multiplied by ``scale``: finite, but a step makes weights inf."""

    def backward(self, dy):
        dx = super().backward(dy)
        for k in self.grads:
            self.grads[k] = self.grads[k] * 1e300
        return dx


def test_a_step_that_makes_the_weights_non_finite_is_caught(rng):
    X, y = blobs(rng)
    model = Exploding(2, 3, seed=0)
    start = {n: p.copy() for n, p in model.named_parameters()}
    with pytest.raises(FloatingPointError, match=r"epoch 1, batch 1: the optimiser step made weights \['W'"):
        with np.errstate(over="ignore"):
            fit(model, X, y, optimizer=SGD(1e10), epochs=2, batch_size=16, seed=0)
    assert all(np.array_equal(p, start[n]) for n, p in model.named_parameters())


def test_a_growing_loss_is_divergence(rng):
    """Rule 3: an epoch loss 1000 times the first epoch's (here MSE on targets that jump by 1e3)."""
    X = rng.standard_normal((64, 2))
    y = rng.standard_normal((64, 1))
    model = Linear(2, 1, seed=0)

    def jump(epoch, model, history):
        if epoch == 0:
            y[:] *= 1e3  # the targets the closure shares with fit: epoch 2's MSE is ~1e6 times epoch 1's
    with pytest.raises(FloatingPointError, match=r"at epoch 2: the training loss .* is more than 1000 times"):
        fit(model, X, y, loss="mse", optimizer=SGD(1e-3), epochs=3, batch_size=64, seed=0, callback=jump)


def test_the_growth_rule_compares_with_at_least_one():
    """MATH.md §6.4: L_t > 1000 max(L_1, 1); a loss near 0 may grow by more than 1000 times without
    having diverged (the fits above only exercise references above 1)."""
    from numpy_moe import divergence
    divergence.check_epoch(999.0, 1e-6, 2)  # 1e9 times the reference, under 1000 * 1
    with pytest.raises(FloatingPointError, match="more than 1000 times"):
        divergence.check_epoch(1000.5, 1e-6, 2)
    divergence.check_epoch(1999.0, 2.0, 2)
    with pytest.raises(FloatingPointError, match="more than 1000 times"):
        divergence.check_epoch(2000.5, 2.0, 2)


def test_the_aux_loss_history_is_the_sample_weighted_mean_over_uneven_batches(rng):
    # 120 samples in batches of 50, 50, 20; a step of lr 1e-300 changes no weight, so every batch's
    # aux loss is that of the starting model on its samples, in fit's shuffled order
    X, y = blobs(rng)
    model = MoE(2, 3, n_experts=4, hidden=5, top_k=2, seed=0, balance={"importance": 0.5})
    order = np.random.default_rng(0).permutation(len(X))
    aux = []
    for start in range(0, len(X), 50):
        model.forward(X[order[start:start + 50]])
        aux.append(float(model.aux_loss) * len(order[start:start + 50]))
    assert len(set(aux)) == 3
    history = fit(model, X, y, optimizer=SGD(1e-300), epochs=1, batch_size=50, seed=0)
    assert history.aux_loss[0] == pytest.approx(sum(aux) / len(X), rel=1e-12)


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(y=np.array([0, 1, 3] * 40)), ValueError, r"y has labels in \[0, 3\]; expected labels in \[0, 2\]"),
    (dict(y=np.array([0, 1, -1] * 40)), ValueError, r"y has labels in \[-1, 1\]"),
    (dict(y=np.zeros(7, dtype=int)), ValueError, r"y has shape \(7,\); expected \(120,\)"),
    (dict(y=np.zeros(120)), TypeError, "y has dtype float64; expected integer class labels"),
    (dict(loss="hinge"), ValueError, "loss='hinge' must be one of"),
    (dict(epochs=0), ValueError, "epochs=0 must be an integer >= 1"),
    (dict(batch_size=-1), ValueError, "batch_size=-1 must be an integer >= 1"),
    # before: a ZeroDivisionError; "y has shape ()" (naming y for a missing y_val); y_val ignored without X_val;
    # "y has shape" for a y_val of the wrong length
    (dict(X=np.zeros((0, 2)), y=np.zeros(0, dtype=int), model=lambda: Linear(2, 3, seed=0)), ValueError,
     r"X has 0 rows \(shape \(0, 2\)\); expected at least 1"),
    (dict(X_val=np.zeros((4, 2))), ValueError, "X_val is given and y_val is None; pass both"),
    (dict(y_val=np.zeros(4, dtype=int)), ValueError, "X_val is None and y_val is given; pass both"),
    (dict(X_val=np.zeros((4, 2)), y_val=np.zeros(3, dtype=int)), ValueError, r"y_val has shape \(3,\); expected \(4,\)"),
    (dict(X_val=np.zeros((4, 2)), y_val=np.zeros((4, 2)), y=np.zeros((120, 3)), loss="mse",
          model=lambda: Linear(2, 3, seed=0)),
     ValueError, r"y_val has shape \(4, 2\); expected \(4, 3\) targets"),
    # before: "vars() argument must have __dict__ attribute" after the first batch; "'int' object is not
    # callable" after the first epoch; a NaN reference silently switched the growth rule off
    # before: "y has shape (120, 1)" for the (120,) y given, and numpy's "could not convert string to float"
    (dict(y=np.zeros(120), loss="mse"), ValueError, r"y has shape \(120,\); expected \(120, 3\) targets$"),
    (dict(y=np.array(["a"] * 120), loss="mse"), TypeError, "y must be an array of numbers"),
    (dict(optimizer="adam"), TypeError, "optimizer='adam' must be an optimiser of numpy_moe.optim"),
    (dict(callback=3), TypeError, "callback=3 must be None or a function"),
    (dict(reference_loss=float("nan")), ValueError, "reference_loss=nan must be a finite number"),
    (dict(reference_loss="1.0"), TypeError, "reference_loss='1.0' must be a finite number"),
])
def test_bad_arguments(kwargs, error, pattern, rng):
    X, y = blobs(rng)
    args = dict(X=X, y=y) | kwargs
    model = args.pop("model", lambda: MoE(2, 3, 2, seed=0))()
    with pytest.raises(error, match=pattern):
        fit(model, **args)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_the_first_epoch_is_judged_against_reference_loss_when_given(rng):
    """SGD at lr 10 takes the first epoch's loss to ~6e5 (from ~2.4 before training): divergence by default,
    not when the caller says the reference is 1e6 (an estimator passes the reference it already has)."""
    X, y = blobs(rng)
    with pytest.raises(FloatingPointError, match="at epoch 1: the training loss .* than 1000 times the loss"):
        fit(MoE(2, 3, n_experts=2, hidden=4, seed=0), X, y, optimizer=SGD(10.0), epochs=1, batch_size=16, seed=0)
    history = fit(MoE(2, 3, n_experts=2, hidden=4, seed=0), X, y, optimizer=SGD(10.0), epochs=1, batch_size=16,
                  seed=0, reference_loss=1e6)
    assert 1e3 < history.loss[0] < 1e9
