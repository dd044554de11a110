"""The divergence rule shared by every training loop: train.fit, the classic trainer and the estimators.

Training has diverged, and stops with ``FloatingPointError`` naming the epoch and the cause, when

1. the loss of a batch is NaN or inf, or a gradient holds NaN or inf (checked *before* the optimiser
   step, so that step is never applied);
2. a weight is NaN or inf after an optimiser step (a finite gradient times a huge learning rate), or the
   optimiser refuses a step whose state would overflow (:func:`step`);
3. the training loss of an epoch exceeds ``GROWTH_FACTOR`` (1000) times a reference, or 1000 when the
   reference is below 1 (a loss that was already near 0 may wander by rounding without having diverged).
   The reference is the training loss of the first epoch; for the first epoch itself it is the loss of
   the model before training, so that a run that explodes within its first epoch is caught too.

Each loop then puts back a state from before the divergence (see its docstring): no loop returns, or
leaves behind, a model with non-finite weights.
"""
import copy
import math

from .backend import get_array_module, quiet_overflow

GROWTH_FACTOR = 1000.0


def _finite(a):
    """True when every entry of ``a`` is finite. For float arrays first one BLAS dot of ``a`` with itself, half the
    time of isfinite(a).all(): squares cannot cancel, so an inf or NaN entry makes the sum inf or NaN, and a finite
    sum means finite entries; only a sum that is not finite (a non-finite entry, or squares beyond the range)
    looks at the entries (NumPy warns of that overflow unless, as in :func:`_non_finite`, it is told not to)."""
    xp = get_array_module(a)
    if a.dtype.kind == "f" and a.size:
        flat = a.reshape(-1)
        if bool(xp.isfinite(flat @ flat)):
            return True
    return bool(xp.isfinite(a).all())


def _non_finite(named_arrays):
    with quiet_overflow():  # entries near the range's top overflow the sums of squares: the entries then decide
        return [name for name, a in named_arrays if not _finite(a)]


def check_step(model, loss, epoch, batch):
    """Rule 1: raise if the batch's ``loss`` or a gradient of ``model`` is not finite (before the step).

    ``loss`` may be None for trainers that do not compute it per batch (the classic update rules).
    """
    bad = _non_finite(model.named_grads())
    if bad or (loss is not None and not math.isfinite(loss)):
        what = (f"loss={loss}" if loss is not None else "") + (", " if loss is not None and bad else "")
        what += f"non-finite gradients in {bad[:3]}" if bad else ""
        raise FloatingPointError(f"training diverged at epoch {epoch}, batch {batch}: {what}")


def check_weights(model, epoch, batch):
    """Rule 2: raise if a parameter of ``model`` is not finite after the optimiser step."""
    bad = _non_finite(model.named_parameters())
    if bad:
        raise FloatingPointError(f"training diverged at epoch {epoch}, batch {batch}: the optimiser step made "
                                 f"weights {bad[:3]} NaN or inf (learning rate too large?)")


def step(optimizer, model, epoch, batch):
    """``optimizer.step(model)``, then rule 2. An update the optimiser refuses (FloatingPointError: a gradient
    whose square overflows Adam's or FTRL's state, numpy_moe.optim) is a divergence at this epoch and batch."""
    try:
        optimizer.step(model)
    except FloatingPointError as err:
        raise FloatingPointError(f"training diverged at epoch {epoch}, batch {batch}: {err}") from None
    check_weights(model, epoch, batch)


def check_epoch(loss, reference, epoch):
    """Rule 3 (and rule 1 for the epoch's loss): raise if ``loss`` is not finite or has grown more than
    GROWTH_FACTOR times ``reference`` (the first epoch's training loss; for epoch 1 the loss before
    training; None: no reference)."""
    if not math.isfinite(loss):
        raise FloatingPointError(f"training diverged at epoch {epoch}: the training loss is {loss}")
    if reference is not None and loss > GROWTH_FACTOR * max(reference, 1.0):
        what = "the loss before training" if epoch == 1 else "the first epoch's"
        raise FloatingPointError(f"training diverged at epoch {epoch}: the training loss {loss:.4g} is more than "
                                 f"{GROWTH_FACTOR:g} times {what} {reference:.4g}")


def snapshot(model, optimizer):
    """Copies of ``model``'s parameters and buffers and of the optimiser's state, for :func:`restore`."""
    return ([p.copy() for _, p in model.named_parameters()], [b.copy() for _, b in model.named_buffers()],
            copy.deepcopy(vars(optimizer)))


def restore(model, optimizer, saved):
    """Put back a :func:`snapshot` (in place: the arrays the model holds keep their identity)."""
    params, buffers, state = saved
    for (_, p), old in zip(model.named_parameters(), params):
        p[...] = old
    for (_, b), old in zip(model.named_buffers(), buffers):
        b[...] = old
    vars(optimizer).clear()
    vars(optimizer).update(state)
