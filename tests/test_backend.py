"""The backend: module selection, conversion, special functions, and the no-direct-numpy rule."""
import ast
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numpy_moe import backend

PACKAGE = Path(__file__).resolve().parent.parent / "numpy_moe"
# Modules at the edges of the package talk to NumPy-only libraries (matplotlib, scikit-learn, .npz
# files, data loading) and may import numpy; everything else must ask the backend.
EDGE_MODULES = {"backend.py", "datasets.py", "data_images.py", "data_text.py", "plotting.py", "estimators/__init__.py", "estimators/base.py", "estimators/moe.py",
                "estimators/local.py", "estimators/hme.py",
                "io/__init__.py", "io/archive.py", "io/records.py", "io/registry.py", "io/checkpoint.py", "io/state.py",
                "presets/weights.py", "conformance/__init__.py"}  # framework state dicts and fixture files are NumPy


def imported_roots(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_compute_modules_do_not_import_numpy_or_scipy():
    offenders = [
        f"{p.relative_to(PACKAGE)} imports {root}"
        for p in sorted(PACKAGE.rglob("*.py")) if str(p.relative_to(PACKAGE)) not in EDGE_MODULES
        for root in imported_roots(p) if root in ("numpy", "scipy", "cupy", "cupyx")
    ]
    assert not offenders, "compute code must use backend.get_array_module(): " + "; ".join(offenders)


def test_the_scan_catches_a_direct_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np\nfrom scipy.special import ndtr\n")
    assert list(imported_roots(bad)) == ["numpy", "scipy"]


def test_default_backend_is_numpy():
    assert backend.get_backend() == "numpy"
    assert backend.get_array_module() is np
    assert backend.get_array_module(np.zeros(3)) is np


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="backend='torch' must be one of"):
        backend.set_backend("torch")


def test_cupy_request_fails_with_an_actionable_error_without_cupy_or_gpu():
    try:
        import cupy  # noqa: F401
        has_cupy = True
    except ImportError:
        has_cupy = False
    if has_cupy:
        pytest.skip("CuPy is installed here; the missing-CuPy message cannot be provoked")
    with pytest.raises(ImportError, match="CuPy is not installed.*cupy-cuda12x"):
        backend.set_backend("cupy")
    assert backend.get_backend() == "numpy", "a failed switch must leave the backend unchanged"


def test_environment_variable_selects_the_backend():
    env = dict(os.environ, NUMPY_MOE_BACKEND="cupy")
    code = "import numpy_moe.backend"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed; the environment switch would succeed")
    except ImportError:
        pass
    assert proc.returncode != 0 and "CuPy is not installed" in proc.stderr


def test_to_numpy_and_asarray_round_trip():
    a = backend.asarray([1.0, 2.0], dtype="float32")
    assert a.dtype == np.float32
    assert isinstance(backend.to_numpy(a), np.ndarray)


def test_ndtr_is_the_normal_cdf():
    x = np.linspace(-6, 6, 25)
    expected = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(backend.ndtr(x), expected, rtol=1e-12, atol=1e-15)


def test_result_dtype_accepts_only_float32_and_float64():
    assert backend.result_dtype("float32") == np.float32
    with pytest.raises(TypeError, match="dtype=int64 must be float32 or float64"):
        backend.result_dtype("int64")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("N", [4, 4000])  # N x 5 below / above 16384 values: the gather path, the CSR product
def test_combine_rows_is_a_weighted_sum_of_gathered_rows(dtype, K, N):
    rng = np.random.default_rng(0)
    values = rng.standard_normal((7, 5)).astype(dtype)
    index = rng.integers(0, 7, size=(N, K))
    index[0] = 2  # one row gathered K times by the same sample
    weight = rng.standard_normal((N, K))  # float64 weights: the result keeps the dtype of values
    weight[1] = 0.0
    expected = np.zeros((N, 5))
    for k in range(K):
        expected += weight[:, k:k + 1] * values[index[:, k]].astype(np.float64)
    out = backend.combine_rows(values, index, weight)
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == (N, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-6)


def test_combine_rows_rejects_rows_out_of_range():
    values = np.ones((3, 2))
    for bad in (3, -1):
        with pytest.raises(IndexError, match="index has entries .* the array has 3 rows"):
            backend.combine_rows(values, np.array([[0, bad]]), np.ones((1, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N", [4, 4000])  # the gather path and the CSR kernel
def test_combine_rows_adds_into_out_in_place(dtype, N):
    rng = np.random.default_rng(1)
    values = rng.standard_normal((9, 6)).astype(dtype)
    index, weight = rng.integers(0, 9, size=(N, 2)), rng.standard_normal((N, 2))
    start = rng.standard_normal((N, 6)).astype(dtype)
    out = start.copy()
    assert backend.combine_rows(values, index, weight, out=out) is out
    expected = start.astype(np.float64) + sum(weight[:, k:k + 1] * values[index[:, k]].astype(np.float64)
                                              for k in range(2))
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-5)
    zeros = np.zeros((N, 6), dtype=dtype)  # into zeros: the new array's values, bit for bit
    np.testing.assert_array_equal(backend.combine_rows(values, index, weight, out=zeros),
                                  backend.combine_rows(values, index, weight))


def test_combine_rows_without_scipys_kernel_or_into_a_strided_block_gives_the_same(monkeypatch):
    # SciPy's private CSR kernel is used when it is there and out is C-contiguous; otherwise the public
    # product: the same sums either way
    rng = np.random.default_rng(2)
    values, index, weight = rng.standard_normal((50, 8)), rng.integers(0, 50, (3000, 3)), rng.standard_normal((3000, 3))
    direct = backend.combine_rows(values, index, weight)
    wide = np.zeros((3000, 16))
    strided = backend.combine_rows(values, index, weight, out=wide[:, ::2])
    np.testing.assert_array_equal(strided, direct)
    np.testing.assert_array_equal(wide[:, 1::2], 0)
    monkeypatch.setattr(backend, "_csr_matvecs", None)
    np.testing.assert_array_equal(backend.combine_rows(values, index, weight), direct)
    out = np.ones((3000, 8))
    np.testing.assert_array_equal(backend.combine_rows(values, index, weight, out=out), 1 + direct)


@pytest.mark.parametrize("out", [np.zeros((5, 3)), np.zeros((4, 2)), np.zeros((4, 3), dtype=np.float32)])
def test_combine_rows_refuses_an_out_of_another_shape_or_dtype(out):
    with pytest.raises(ValueError, match="out has shape"):
        backend.combine_rows(np.ones((3, 3)), np.zeros((4, 1), dtype=int), np.ones((4, 1)), out=out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_take_rows_is_fancy_indexing_with_or_without_out(dtype):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((50, 7)).astype(dtype)
    index = np.concatenate([rng.integers(0, 50, 40), [0, 49, 49]])  # the ends and a repeat
    np.testing.assert_array_equal(backend.take_rows(a, index), a[index])
    big = np.full((60, 7), np.nan, dtype=dtype)
    got = backend.take_rows(a, index, out=big[5:48])  # a block of rows of a larger array, as the experts use
    assert np.shares_memory(got, big)
    np.testing.assert_array_equal(big[5:48], a[index])
    assert np.isnan(big[:5]).all() and np.isnan(big[48:]).all()


@pytest.mark.parametrize("bad", [-1, 50])
def test_check_rows_refuses_rows_outside_the_array(bad):
    backend.check_rows(np.array([0, 49, 3]), 50)
    backend.check_rows(np.array([], dtype=int), 0)
    with pytest.raises(IndexError, match="rows has entries .* the array has 50 rows"):
        backend.check_rows(np.array([0, bad, 3]), 50)


def test_grouped_experts_refuse_rows_outside_the_input_rather_than_clip_them():
    # take_rows gathers with mode="clip", so the range is checked first: a bad row must not become row 0 or N - 1
    from numpy_moe.experts import ExpertBank
    bank = ExpertBank(2, 3, 2, 4, seed=0)
    x = np.ones((5, 3))
    for bad in (-1, 5):
        with pytest.raises(IndexError, match="the array has 5 rows"):
            bank.forward_grouped(x, [0, 2, 3], rows=np.array([0, 1, bad]))


@pytest.mark.parametrize("shape", [(0, 3), (1, 3), (511, 4), (512, 4), (1000, 7), (2055, 3), (2, 3, 700, 5)])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_sum_rows_is_the_sum_over_the_rows_for_every_shape_and_layout(shape, layout):
    # float64 values, so any order of summation agrees with NumPy's sum to 1e-12
    a = np.random.default_rng(0).standard_normal(shape)
    if layout == "F":
        a = np.asfortranarray(a)
    elif layout == "strided":
        a = np.repeat(a, 2, axis=-1)[..., ::2]  # the same values, every other column of a wider array
    expected = a.sum(axis=-2)
    np.testing.assert_allclose(backend.sum_rows(a), expected, rtol=1e-12, atol=1e-12)
    out = np.full(expected.shape, np.nan)
    assert backend.sum_rows(a, out=out) is out
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


def f32_rows(N, H, seed=0):
    """(N, H) float32 rows of mean 1: their sum is large against each entry, so adding the rows one after the
    other rounds at every step (NumPy's ``sum(axis=0)`` over a C-ordered array does)."""
    return (np.random.default_rng(seed).random((N, H)) + 0.5).astype(np.float32)


def relative_error(got, rows):
    """max over columns of |got - the float64 sum| / sum |rows|; float32 rounding of the result alone is 3e-8."""
    rows = np.asarray(rows, dtype=np.float64)
    return float(np.max(np.abs(np.asarray(got, dtype=np.float64) - rows.sum(axis=-2)) / np.abs(rows).sum(axis=-2)))


def test_sum_rows_float32_error_does_not_grow_with_the_rows():
    # measured over seeds 0-4: 3e-7 to 7e-7 against 6e-6 to 8e-6 for NumPy's sum(axis=0), which adds the rows one
    # after the other (at N = 1e6, not run here: 8e-7 against 2e-5); 1e-6 = 17 float32 epsilons
    a = f32_rows(1 << 16, 16)
    assert relative_error(backend.sum_rows(a), a) < 1e-6
    assert relative_error(backend.sum_rows(a.reshape(4, -1, 16)), a.reshape(4, -1, 16)) < 1e-6


class _FakeBackend:
    """A stand-in for CuPy's module (this machine may have no GPU): its asarray records what it is given."""
    __name__ = "fake_cupy"

    def __init__(self):
        self.moved = []

    def asarray(self, a, dtype=None):
        self.moved.append(type(a).__name__ + str(getattr(a, "shape", "")))
        return a if hasattr(a, "__cuda_array_interface__") else np.asarray(a, dtype=dtype)


def test_numpy_arrays_select_numpy_under_another_backend_and_non_arrays_the_backend(monkeypatch):
    fake = _FakeBackend()
    monkeypatch.setitem(backend._state, "xp", fake)
    assert backend.get_array_module(np.zeros(2)) is np  # CuPy's get_array_module answers so too
    assert backend.get_array_module(None, np.float64(1.0)) is np
    assert backend.get_array_module() is fake
    assert backend.get_array_module(None, 3.0, [1.0]) is fake


def test_on_backend_moves_host_arrays_and_lists_and_keeps_device_arrays(monkeypatch):
    fake = _FakeBackend()
    monkeypatch.setitem(backend._state, "xp", fake)
    device = type("ndarray", (), {"__module__": "cupy._core.core"})()  # what a CuPy array's type looks like
    assert backend.on_backend(device) is device and fake.moved == []
    out = backend.on_backend([[1.0, 2.0]])
    assert isinstance(out, np.ndarray) and out.shape == (1, 2) and fake.moved == ["ndarray(1, 2)"]  # via the host

    class CudaTensor:  # already on the GPU (a torch CUDA tensor, say): CuPy takes it as it is, not via the host
        __cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 3}

        def __array__(self, dtype=None, copy=None):
            raise AssertionError("copied through the host")
    fake.moved.clear()
    backend.on_backend(CudaTensor())
    assert fake.moved == ["CudaTensor"]


def test_a_backward_pass_moves_a_numpy_gradient_onto_the_backend_as_forward_moves_x(monkeypatch):
    # Under CuPy, forward copies a NumPy x to the GPU (check_input); a NumPy dy must go there too, or the
    # backward products mix a host and a device array and CuPy refuses them ("Unsupported type").
    from numpy_moe.gates import TopKGate
    from numpy_moe.layers import Linear
    layer, gate = Linear(3, 2, seed=0), TopKGate(3, 3, 2, seed=0)
    layer.forward(np.ones((4, 3)))
    routing = gate.forward(np.ones((4, 3)))
    fake = _FakeBackend()
    monkeypatch.setitem(backend._state, "xp", fake)
    layer.backward(np.ones((4, 2)))
    gate.backward({"weight": np.ones(routing.weight.shape)})  # a routing gradient: its arrays go there too
    assert "ndarray(4, 2)" in fake.moved and f"ndarray{routing.weight.shape}" in fake.moved  # (the stand-in's
    # asarray returns NumPy arrays, so a second check may move them again; CuPy's arrays stay put)
