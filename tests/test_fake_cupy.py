"""The CuPy path without a GPU: tests/test_cupy.py run against a stand-in CuPy (tests/fakecupy).

CI has no GPU, so test_cupy.py skips there, and a change that mixes host and device arrays again (a module
taking its array module from the caller's NumPy input, a backward leaving a NumPy gradient on the host)
would pass CI and fail on the first GPU. The stand-in computes with NumPy and refuses what CuPy refuses: a
NumPy array given to a CuPy function, ufunc or operator, or assigned into a CuPy array. On the code before
the CuPy fixes of 2026-11-30 (5270cf4) it failed 46 of the 63 tests test_cupy.py then had; on an H200 that
code failed 928 tests of the suite for the same reasons.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
FAKE = TESTS / "fakecupy"


def _fake():
    """The stand-in module, imported from its folder without putting it on sys.path for the other tests."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("fake_cupy_selftest", FAKE / "cupy" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stand_in_refuses_what_cupy_refuses_and_computes_the_rest():
    cp = _fake()
    a = cp.asarray(np.arange(6.0).reshape(3, 2))
    host = np.ones((3, 2))
    assert type(a).__module__ == "cupy" and type(a.get()) is np.ndarray
    for mix in (lambda: a + host, lambda: host * a, lambda: a @ host.T, lambda: cp.exp(host),
                lambda: cp.einsum("nd,nd->n", a, host), lambda: cp.maximum.reduce(host)):
        with pytest.raises(TypeError, match="Unsupported type"):
            mix()
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        a[...] = host
    s = (a * 2).sum()
    assert type(s).__module__ == "cupy" and s.ndim == 0 and float(s) == 30.0  # a 0-d array, as CuPy's reductions
    np.testing.assert_array_equal(cp.exp(a).get(), np.exp(np.arange(6.0).reshape(3, 2)))
    assert not hasattr(cp, "errstate")  # CuPy has none; numpy_moe.backend.quiet_overflow must not need it


def test_the_gpu_tests_pass_against_the_stand_in():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FAKE), str(TESTS.parent)]))
    env.pop("NUMPY_MOE_BACKEND", None)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs",
                           str(TESTS / "test_cupy.py")], cwd=TESTS.parent, env=env, capture_output=True, text=True,
                          timeout=600)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
    assert proc.returncode == 0 and " passed" in summary and "skipped" not in summary and "failed" not in summary, (
        proc.stdout[-6000:] + proc.stderr[-2000:])
