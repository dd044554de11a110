"""Finite-difference gradient checking, the protocol of MATH.md §8.

Public and meant to be read: the teaching walkthroughs use it to verify a hand-written backward.

- :func:`numerical_gradient` - central differences ``(f(x + h e_i) - f(x - h e_i)) / 2h``, one coordinate
  at a time, perturbing ``x`` in place and restoring it.
- :func:`rel_error` - ``max|a - b| / max(1e-12, max|a|, max|b|)`` (or elementwise).
- :func:`check_module` - checks a Module's input gradient and every parameter gradient against finite
  differences of the scalar ``L = sum(R * forward(x)) + aux_loss`` with a fixed random R, and raises
  with a table of the worst error per tensor when any exceeds the tolerance.

Work in float64: with h = 1e-6 the truncation error is O(h²) ~ 1e-12 and the rounding error
~ 1e-16 / h ~ 1e-10 relative, well under the 1e-7 pass mark.
"""
from .backend import default_rng, get_array_module, to_numpy
from .validation import check_real


def numerical_gradient(f, x, h=1e-6):
    """Central-difference gradient of the scalar function ``f`` at ``x``.

    Parameters
    ----------
    f : callable, ``f(x) -> float``; it may read ``x`` directly (x is perturbed in place).
    x : float64 array of any shape (C-contiguous, writeable), perturbed in place one coordinate at a time and
        restored, also when ``f`` raises.
    h : step.

    Returns
    -------
    grad : array of x's shape, dF/dx.
    """
    h = check_real(h, "h", 0, low_open=True)  # h = 0 divided by zero; h < 0 flips no sign but is not a step
    xp = get_array_module(x)
    if not hasattr(x, "dtype"):  # a list cannot be perturbed in place
        raise TypeError(f"x is a {type(x).__name__}; finite differences need a float64 array")
    if x.dtype != xp.float64:  # an integer x keeps x ± h at x, x - 1: garbage; float32 rounds h by percents
        raise TypeError(f"x has dtype {x.dtype}; finite differences need a float64 array (MATH.md §8: in float32 "
                        "the step h = 1e-6 is rounded by percents), e.g. a module built with dtype='float64'")
    grad = xp.zeros_like(x)
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous so that it can be perturbed in place")
    if not getattr(x.flags, "writeable", True):
        raise ValueError("x is read-only; it is perturbed in place: pass a writeable copy (x.copy())")
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = float(flat[i])
        try:
            flat[i] = old + h
            fp = f(x)
            flat[i] = old - h
            fm = f(x)
        finally:  # an f that raises (a check that the routing held) must not leave the caller's x moved by h
            flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return grad


def rel_error(a, b, elementwise=False):
    """Relative error of ``a`` against ``b``.

    ``max|a - b| / max(1e-12, max|a|, max|b|)``; with ``elementwise=True`` the array
    ``|a - b| / max(1e-12, |a| + |b|)``.
    """
    xp = get_array_module(a, b)
    a, b = xp.asarray(a, dtype=xp.float64), xp.asarray(b, dtype=xp.float64)
    if elementwise:
        return xp.abs(a - b) / xp.maximum(1e-12, xp.abs(a) + xp.abs(b))
    if a.size == 0:
        return 0.0
    scale = max(1e-12, float(xp.abs(a).max()), float(xp.abs(b).max()))
    return float(xp.abs(a - b).max()) / scale


def _report(rows, tol):
    """A fixed-width table of (tensor, shape, rel error, worst index, analytic, numeric)."""
    head = f"{'tensor':<28} {'shape':<16} {'rel error':>10} {'worst at':<14} {'analytic':>13} {'numeric':>13}"
    lines = [head, "-" * len(head)]
    for name, shape, err, idx, a, n in rows:
        flag = "" if err <= tol else "  FAIL"  # NaN fails: NaN <= tol is False
        lines.append(f"{name:<28} {str(shape):<16} {err:>10.2e} {str(idx):<14} {a:>13.6e} {n:>13.6e}{flag}")
    return "\n".join(lines)


def check_module(module, x, h=1e-6, tol=1e-7, seed=0, forward=None, check_input=True, verbose=False):
    """Check ``module.backward`` (input and every parameter) against finite differences.

    Parameters
    ----------
    module : a Module (``forward``, ``backward``, ``named_parameters``, ``named_grads``, ``aux_loss``).
    x : float64 input of shape (N, ...), perturbed in place during the check and restored; a read-only or
        non-contiguous x is checked through a copy.
    h : finite-difference step. tol : pass mark for every tensor's :func:`rel_error`.
    seed : seeds the fixed random projection R that turns the output into a scalar.
    forward : callable ``forward(x) -> y`` to use instead of ``module.forward``, e.g. one that resets
        a noise generator so every evaluation sees the same draw.
    check_input : also check dL/dx (False for integer inputs or inputs that are not differentiated).
    verbose : print the table even when every tensor passes.

    Returns
    -------
    errors : dict tensor name -> relative error ("input" for x).

    Raises
    ------
    AssertionError with the table of worst errors per tensor when any error exceeds ``tol`` or is NaN (a
    NaN or inf in the analytic or numerical gradient); naming the tensor when a gradient's shape is not
    that of its tensor.

    Notes
    -----
    L = sum(R * y) + module.aux_loss, so dL/dy = R and ``module.backward(R)`` must return dL/dx and
    fill ``grads`` including the auxiliary loss's gradient.
    """
    h, tol = check_real(h, "h", 0, low_open=True), check_real(tol, "tol", 0)  # h = 0: ZeroDivisionError
    if not hasattr(x, "dtype"):  # perturbed in place: an array (a list raised an AttributeError midway)
        raise TypeError(f"x is a {type(x).__name__}; check_module perturbs x in place, so it must be a float64 "
                        "array")
    # every array the check differentiates must be float64, refused here, before a single forward, naming it
    # (numerical_gradient refuses it too, but only once the input's differences have run, in float32, and
    # calling a float32 parameter "x")
    for name, a in [("x", x)] * bool(check_input) + [(f"parameter {n}", p) for n, p in module.named_parameters()]:
        if a.dtype.kind != "f" or a.dtype.itemsize != 8:
            raise TypeError(f"{name} has dtype {a.dtype}; finite differences need float64 (MATH.md §8: in float32 "
                            "the step h = 1e-6 is rounded by percents): build the module with dtype='float64'")
    fwd = forward or module.forward
    xp = get_array_module(x)
    if not (x.flags.c_contiguous and getattr(x.flags, "writeable", True)):  # numerical_gradient perturbs it in place
        x = xp.array(x, order="C", copy=True)
    y = fwd(x)
    # R where y is: a NumPy x given to a model on the GPU gives a CuPy y
    R = get_array_module(y).asarray(default_rng(seed).standard_normal(y.shape), dtype=y.dtype)

    def loss(_):
        return float((R * fwd(x)).sum()) + float(module.aux_loss)

    fwd(x)
    dx = module.backward(R)
    analytic = {"input": dx} if check_input else {}
    analytic.update({name: g.copy() for name, g in module.named_grads()})
    params = dict(module.named_parameters())
    wrong = [f"{name} {tuple(a.shape)}, expected {tuple((x if name == 'input' else params[name]).shape)}"
             for name, a in analytic.items() if tuple(a.shape) != tuple((x if name == "input" else params[name]).shape)]
    if wrong:  # compared by broadcasting they could pass, or fail with an IndexError in the table
        raise AssertionError(f"gradient check failed: gradients of the wrong shape: {'; '.join(wrong)}")
    rows, errors = [], {}
    for name, a in analytic.items():
        target = x if name == "input" else params[name]
        n = numerical_gradient(loss, target, h)
        err = rel_error(a, n)
        errors[name] = err
        a, n = to_numpy(a), to_numpy(n)
        idx = tuple(int(i) for i in _unravel_index(abs(a - n).argmax(), a.shape)) if a.size else ()
        rows.append((name, tuple(a.shape), err, idx, float(a[idx]) if a.size else 0.0,
                     float(n[idx]) if a.size else 0.0))
    table = _report(rows, tol)
    # `not err <= tol` rather than `err > tol`: a NaN error (a NaN or inf gradient, or a NaN loss) compares
    # False with everything and must fail, not pass
    if not all(err <= tol for err in errors.values()):
        raise AssertionError(f"gradient check failed (tol={tol:.0e}, h={h:.0e}):\n{table}")
    if verbose:
        print(table)
    return errors


def _unravel_index(flat_index, shape):
    """The multi-index of ``flat_index`` in an array of ``shape`` (C order)."""
    idx = []
    for dim in reversed(shape):
        flat_index, r = divmod(int(flat_index), dim)
        idx.append(r)
    return tuple(reversed(idx))
