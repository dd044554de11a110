"""experiments.bench shortens OpenBLAS's spin for its own run only (--blas-spin short, the default) and
puts it back, so that studies run after it in the same process (``python -m experiments all``) keep theirs;
``--blas-spin loaded`` leaves it as OpenBLAS was loaded."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from numpy_moe import workers

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = r"""
import sys
from numpy_moe import workers
from experiments import bench
before = workers.blas_spin_exponent()
bench.main(["--quick", "--only", "layer", "--out", sys.argv[2]] + sys.argv[3:])
print("SPIN", before, workers.blas_spin_exponent(), workers.n_threads())
"""


@pytest.mark.parametrize("choice, header", [("short", "set for this run by workers.set_blas_spin; 2**28 as loaded"),
                                            ("loaded", "2**28 cycles after a product (as loaded")])
def test_bench_sets_the_short_spin_for_its_run_and_puts_it_back(tmp_path, choice, header):
    if workers.blas_spin_exponent() is None:
        pytest.skip("NumPy's BLAS here is not OpenBLAS with pthreads: there is no spin to set")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "NUMPY_MOE_THREADS")}
    env["NUMPY_MOE_TORCH_PYTHON"] = ""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(ROOT), str(tmp_path), "--blas-spin", choice],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert header in out.stdout
    assert [line for line in out.stdout.splitlines() if line.startswith("SPIN")] == ["SPIN 28 28 1"]


def test_bench_measures_with_the_spin_as_loaded_where_it_cannot_be_set(monkeypatch, tmp_path, capsys):
    from experiments import bench

    def refuse(exponent=20):
        raise RuntimeError("an OpenBLAS without openblas_read_env; nothing was changed")

    monkeypatch.setattr(workers, "blas_spin_exponent", lambda: 28)
    monkeypatch.setattr(workers, "set_blas_spin", refuse)
    monkeypatch.setenv("NUMPY_MOE_TORCH_PYTHON", "")
    bench.main(["--quick", "--only", "layer", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "--blas-spin short not possible here (an OpenBLAS without openblas_read_env" in out
    assert "2**28 cycles after a product (as loaded" in out
