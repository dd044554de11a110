"""The mini-batch training loop.

``fit(model, X, y, ...)`` shuffles with its own seeded Generator each epoch, runs forward, the data
loss plus the model's auxiliary loss, backward, one optimiser step and ``model.end_step()`` (buffer
updates) per batch, and returns a :class:`History`.

Divergence (the rule of numpy_moe.divergence: a non-finite loss, gradient or weight, or an epoch loss
1000 times the first epoch's, or the first epoch's 1000 times the loss before training) stops training
with ``FloatingPointError`` naming the epoch and the cause,
after putting back the parameters, buffers and optimiser state of the end of the last complete epoch (of
the start of ``fit`` when the first epoch diverges): ``fit`` never leaves NaN or inf weights behind.
"""
import time
from dataclasses import dataclass, field

from . import divergence
from . import functional as F
from .backend import asarray, default_rng, get_array_module
from .optim import Adam
from .validation import check_input, check_labels, check_positive_int, check_real

LOSSES = {"cross_entropy": (F.cross_entropy, F.cross_entropy_backward), "mse": (F.mse, F.mse_backward)}


@dataclass
class History:
    """Per-epoch record of a :func:`fit` run (lists of floats, one entry per epoch)."""
    loss: list = field(default_factory=list)       # mean data loss + aux loss over the epoch's batches
    aux_loss: list = field(default_factory=list)   # mean auxiliary (balance) loss
    val_loss: list = field(default_factory=list)   # data loss on (X_val, y_val), when given
    time: list = field(default_factory=list)       # seconds per epoch


def _check_targets(y, loss, n_outputs, n_samples, dtype, name="y"):
    if loss == "cross_entropy":
        return check_labels(y, n_outputs, n_samples, name)
    try:
        y = asarray(y, dtype=dtype)
    except (TypeError, ValueError):  # numpy's message ("could not convert string to float") names no argument
        raise TypeError(f"{name} must be an array of numbers (float targets for loss='mse'), got "
                        f"{type(y).__name__} {y!r:.60}") from None
    xp = get_array_module(y)
    shape = tuple(y.shape)  # as given: the message names it, not the (N, 1) a 1-D y becomes
    if y.ndim == 1:
        y = y[:, None]
    if y.shape != (n_samples, n_outputs):
        raise ValueError(f"{name} has shape {shape}; expected ({n_samples}, {n_outputs}) targets"
                         + (f" or ({n_samples},)" if n_outputs == 1 else ""))
    if not bool(xp.isfinite(y).all()):
        raise ValueError(f"{name} contains NaN or inf; expected finite targets")
    return y


def _check_model(model):
    """A model is a numpy_moe Module (or anything with its forward, backward, eval and named_parameters)."""
    if not all(callable(getattr(model, m, None)) for m in ("forward", "backward", "eval", "named_parameters")):
        raise TypeError(f"model={model!r:.80} must be a numpy_moe Module (forward, backward, eval, "
                        "named_parameters)")


def predict(model, X):
    """Forward ``X`` in evaluation mode (no noise), restoring the model's mode afterwards."""
    _check_model(model)  # None raised "'NoneType' object has no attribute 'training'"
    was_training = model.training
    model.eval()
    try:
        return model.forward(X)
    finally:
        model.train(was_training)


def fit(model, X, y, loss="cross_entropy", optimizer=None, epochs=10, batch_size=32, seed=None,
        X_val=None, y_val=None, callback=None, verbose=False, reference_loss=None):
    """Train ``model`` in place by mini-batch gradient descent.

    Parameters
    ----------
    model : a Module mapping (N, D) to (N, O); its ``aux_loss`` is added to the data loss.
    X : (N, D) floats. y : (N,) integer labels in [0, O) for "cross_entropy", (N, O) or (N,) for "mse".
    loss : "cross_entropy" or "mse". optimizer : an Optimizer (default Adam(lr=1e-3)).
    epochs, batch_size : ints >= 1. seed : shuffling seed (int or numpy Generator).
    X_val, y_val : optional held-out data, evaluated after each epoch.
    callback : optional ``callback(epoch, model, history)`` called after each epoch.
    verbose : print one line per epoch.
    reference_loss : what the divergence rule compares the first epoch's loss with; None (default): the
        model's loss on X before training, which costs one forward pass (a caller that trains epoch by
        epoch passes the value it already has).

    Returns
    -------
    History
    """
    if not isinstance(loss, str) or loss not in LOSSES:  # a list: 'unhashable type'
        raise ValueError(f"loss={loss!r} must be one of {sorted(LOSSES)}")
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    _check_model(model)
    X = check_input(X, None, model.dtype, "X", min_rows=1)  # the epoch's loss is a mean over the rows
    N = X.shape[0]
    loss_f, loss_b = LOSSES[loss]
    n_out = predict(model, X[:1]).shape[1]
    y = _check_targets(y, loss, n_out, N, model.dtype)
    if (X_val is None) != (y_val is None):
        raise ValueError(f"X_val is {'None' if X_val is None else 'given'} and y_val is "
                         f"{'None' if y_val is None else 'given'}; pass both (validation data) or neither")
    if X_val is not None:
        X_val = check_input(X_val, X.shape[1], model.dtype, "X_val", min_rows=1)
        y_val = _check_targets(y_val, loss, n_out, X_val.shape[0], model.dtype, "y_val")
    optimizer = Adam(1e-3) if optimizer is None else optimizer
    if not all(callable(getattr(optimizer, m, None)) for m in ("step", "end_epoch")):
        raise TypeError(f"optimizer={optimizer!r:.60} must be an optimiser of numpy_moe.optim (Adam(lr), SGD(lr), "
                        "FTRL(alpha)) or an object with step(model) and end_epoch()")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback={callback!r:.60} must be None or a function callback(epoch, model, history)")
    if reference_loss is not None:
        reference_loss = check_real(reference_loss, "reference_loss")  # NaN would switch the growth rule off
    rng = default_rng(seed)
    history = History()
    initial = float(loss_f(predict(model, X), y)) if reference_loss is None else float(reference_loss)
    model.train()
    for epoch in range(epochs):
        t0 = time.perf_counter()
        saved = divergence.snapshot(model, optimizer)
        try:
            total, aux_total = _epoch(model, X, y, loss_f, loss_b, optimizer, batch_size, rng, epoch + 1)
            divergence.check_epoch(total / N, history.loss[0] if history.loss else initial, epoch + 1)
        except FloatingPointError as err:
            divergence.restore(model, optimizer, saved)
            kept = f"the end of epoch {epoch}" if epoch else "the start of fit"
            raise FloatingPointError(f"{err}; the weights, buffers and optimiser state were put back as they were "
                                     f"at {kept}: lower the learning rate or standardise the inputs") from None
        optimizer.end_epoch()
        history.loss.append(total / N)
        history.aux_loss.append(aux_total / N)
        if X_val is not None:
            history.val_loss.append(loss_f(predict(model, X_val), y_val))
        history.time.append(time.perf_counter() - t0)
        if verbose:
            val = f", val loss {history.val_loss[-1]:.4f}" if X_val is not None else ""
            print(f"epoch {epoch + 1:>4}/{epochs}: loss {history.loss[-1]:.4f}{val} "
                  f"({history.time[-1]:.2f} s)")
        if callback is not None:
            callback(epoch, model, history)
    return history


def _epoch(model, X, y, loss_f, loss_b, optimizer, batch_size, rng, epoch):
    """One shuffled pass; returns the sums over samples of the batch loss and of the aux loss."""
    N = X.shape[0]
    order = asarray(rng.permutation(N))
    total = aux_total = 0.0
    for b, start in enumerate(range(0, N, batch_size)):
        idx = order[start:start + batch_size]
        xb, yb = X[idx], y[idx]
        out = model.forward(xb)
        aux = float(model.aux_loss)
        value = float(loss_f(out, yb)) + aux
        model.backward(loss_b(out, yb))
        divergence.check_step(model, value, epoch, b + 1)
        divergence.step(optimizer, model, epoch, b + 1)
        model.end_step()  # state that is not a gradient (a selection bias) updates after the step
        total += value * len(idx)
        aux_total += aux * len(idx)
    return total, aux_total

