"""numpy_moe.parallel: the expert-parallel layer equals the single-process MoE, on 1, 2 and 4 MPI ranks.

The distributed checks run under ``mpiexec`` as subprocesses (tests/mpi_scripts/), 4 ranks oversubscribed
on 2 cores (MPICH's mpiexec allows more ranks than cores without a flag), each with a timeout; a failure
shows every rank's output. They need the ``[mpi]`` extra, which ``make test`` installs. On the shared
2-core development machine this file takes about 30 s (the 4-rank check with its finite differences
11-15 s of it); the quick expert_parallel experiment in test_experiments adds about 10 s.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "tests" / "mpi_scripts"
TOL = 1e-12


def mpiexec():
    pytest.importorskip("mpi4py", reason="the [mpi] extra is not installed: pip install -e '.[mpi]'")
    path = Path(sys.executable).parent / "mpiexec"
    if not path.exists():
        pytest.skip("no mpiexec beside the Python interpreter: pip install mpich")
    return str(path)


def launch(n, script, *args, timeout=120):
    """Run ``mpiexec -n n python script args``; returns (exit code, stdout + stderr of every rank).

    The ranks run in their own process group, killed whole when the timeout expires (the test then fails
    with what they printed): a hang cannot stall the suite.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    if n > (os.cpu_count() or 1):  # oversubscribed: a waiting rank sleeps instead of spinning (3x faster)
        env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
    proc = subprocess.Popen([mpiexec(), "-n", str(n), sys.executable, str(SCRIPTS / script), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"mpiexec -n {n} {script} did not finish in {timeout} s; its ranks printed:\n{out}")
    return proc.returncode, out


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_expert_parallel_layer_equals_the_single_process_moe(ranks):
    """Outputs, balance losses, every gradient to 1e-12, the same dropped assignments, bytes = formula,
    the all-to-all against its adjoint and finite differences through the distributed layer."""
    code, out = launch(ranks, "check_equal.py", "--gradcheck")
    assert code == 0, f"mpiexec -n {ranks} check_equal.py failed:\n{out}"
    result = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
    print(json.dumps(result, indent=1))
    for mode in ("dropless", "padded"):
        errors = result[mode]
        assert {"output", "balance loss", "input gradient", "gate.W gradient", "gate.W_noise gradient",
                "experts.W1 gradient", "experts.W gradient"} <= set(errors), errors
        for quantity, value in errors.items():
            if quantity == "finite differences":
                assert value <= 1e-7, (mode, quantity, value)  # the house tolerance for one layer
            elif quantity != "dropped":
                assert value <= TOL, (mode, quantity, value)
    assert result["padded"]["dropped"] > 0 and result["dropless"]["dropped"] == 0
    assert result["adjoint"] <= 1e-13


def test_bad_input_raises_the_same_error_on_every_rank_and_an_empty_rank_works():
    code, out = launch(2, "check_errors.py", timeout=60)
    assert code == 0 and "OK rank 0" in out and "OK rank 1" in out, out


def test_a_rank_that_raises_mid_step_aborts_every_rank_with_its_message():
    code, out = launch(2, "check_abort.py", timeout=60)
    assert code != 0, out
    assert "rank 1 of 2 failed" in out and "fails on purpose" in out, out
    assert "rank 0 finished the step" not in out, out


def test_numpy_moe_never_imports_mpi4py_until_a_communicator_is_made():
    code = ("import sys, numpy_moe, numpy_moe.moe, numpy_moe.parallel; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_without_mpi4py_the_error_says_how_to_install_it(monkeypatch):
    from numpy_moe.parallel import ExpertParallelMoE, mpi

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import mpi4py now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'numpy-moe\[mpi\]'"):
        mpi()
    with pytest.raises(ImportError, match="mpiexec -n N"):
        ExpertParallelMoE(4, 2, 4, top_k=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="ring"), "mode='ring' must be one of"),
    (dict(mode="padded"), "mode='padded' sends fixed blocks .* pass capacity_factor"),
    (dict(capacity_factor=1.0), "mode='dropless' drops no token"),
    (dict(top_k=None), "a dense gate sends every sample to every expert"),
])
def test_bad_modes_are_refused_before_any_communication(kwargs, message):
    from numpy_moe.parallel import ExpertParallelMoE

    with pytest.raises(ValueError, match=message):
        ExpertParallelMoE(4, 2, 4, **{"top_k": 1, **kwargs})
