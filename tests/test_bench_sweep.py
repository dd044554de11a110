"""The benchmark's batch-size sweep: its PyTorch reference columns (the suite never needs torch: a stand-in
answers for the torch subprocess) and its torch worker's imports."""
import ast
from pathlib import Path

import numpy as np
import pytest

from experiments import bench
from experiments._common import parse_args


def fake_torch_round(shapes, sizes, repeats, threads, torch_python):
    """torch_sweep_round's answer with made-up times: dense 10 µs, top-k 30 (sparse) and 12 (dense dispatch)."""
    us = {f"{s}/{n}": {"dense": 10.0, "topk_sparse": 30.0, "topk_dense": 12.0}
          for s in range(len(shapes)) for n in sizes}
    return {"us": us, "threads": threads, "torch": "stand-in"}


def test_sweep_prints_torch_reference_columns_and_judges_numpy_moe_alone(monkeypatch, tmp_path, capsys):
    calls = []

    def fake(*args):
        calls.append(args)
        return fake_torch_round(*args)

    monkeypatch.setattr(bench, "torch_sweep_round", fake)
    args = parse_args(["--quick", "--out", str(tmp_path), "--repeats", "1"], bench.__doc__, extra=bench.options,
                      name="bench")
    targets = bench.sweep_section(args, 2, args, threads=1, torch_python="/stand-in/python")
    out = capsys.readouterr().out
    assert len(calls) == 2  # one torch subprocess per round
    assert calls[0][1] == [16, 64, 256] and calls[0][0] == bench.SWEEP_SHAPES
    # torch's top-k is the faster of its two dispatches: 12 against 10 -> 1.20 in every round and at every N
    assert out.count("1.20 [1.20-1.20]") == 2 * 3
    assert "torch top-k/dense" in out
    assert len(targets) == len(bench.SWEEP_SHAPES)  # the targets are numpy_moe's: torch adds none
    for name, ratio, target in targets:
        assert target == 1.0 and len(ratio) == 2 and "torch" not in name
        assert not np.allclose(ratio, 1.2)
    assert (tmp_path / "bench_batch.png").is_file()


def test_sweep_without_torch_has_no_torch_columns(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "torch_sweep_round", lambda *a: (_ for _ in ()).throw(AssertionError("called")))
    args = parse_args(["--quick", "--out", str(tmp_path), "--repeats", "1"], bench.__doc__, extra=bench.options,
                      name="bench")
    bench.sweep_section(args, 1, args)
    out = capsys.readouterr().out.replace(str(tmp_path), "")  # the temporary folder's name holds "torch"
    assert "torch" not in out and "top-k/dense" in out


def test_torch_sweep_worker_imports_only_torch_numpy_and_the_standard_library():
    script = Path(bench.__file__).resolve().parent / "_torch_sweep.py"
    tree = ast.parse(script.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"json", "statistics", "sys", "time", "numpy", "torch"}


def test_faster_from_names_the_batch_size_from_which_top_k_stays_faster():
    sizes = [16, 64, 256, 1024]
    assert bench.faster_from(sizes, [[0.5, 0.7]] * 4) == "at every N"
    assert bench.faster_from(sizes, [[1.5], [0.9], [0.5], [0.4]]) == "from N = 64"
    assert bench.faster_from(sizes, [[0.5], [1.2], [0.9], [0.8]]) == "from N = 256"  # it must stay below 1
    assert bench.faster_from(sizes, [[0.5], [0.5], [0.5], [1.1]]) == "at no N"  # slower at the largest N
    assert bench.faster_from(sizes, [[0.9, 1.3, 1.2]] + [[0.5]] * 3) == "from N = 64"  # medians, not single rounds


@pytest.mark.auto_dispatch  # the real choice of dispatch: the bound's layer runs by dense dispatch at N = 16
def test_selection_bound_times_the_layers_own_selection():
    from experiments import _selection_bound as sb
    from numpy_moe.gates.softmax import route_topk

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((33, 4)).astype(np.float32)
    logits[5] = [0.5, 1.5, 0.5, 1.5]  # ties: the lower index first, as numpy_moe's top-k
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    dg = rng.standard_normal((33, 4)).astype(np.float32)
    g, dweight = sb.selection(logits, probs, dg, 2)
    r = route_topk(logits, 2, "softmax_then_topk")
    want = np.zeros_like(probs)
    want[r.sample, r.expert] = probs[r.sample, r.expert]
    np.testing.assert_array_equal(g, want)
    np.testing.assert_array_equal(dweight.reshape(-1), dg[r.sample, r.expert])
    out = sb.measure(sizes=(16,), repeats=1, calls=4)
    assert set(out[16]) == {"selection", "dense", "topk", "dispatch"} and out[16]["dispatch"] == "dense"
    assert min(out[16][k] for k in ("selection", "dense", "topk")) > 0


def test_a_failing_torch_worker_raises_with_its_stderr(tmp_path):
    import sys

    (tmp_path / "in.json").write_text("{}")
    with pytest.raises(RuntimeError, match="the torch sweep failed:(.|\n)*_torch_sweep.py"):
        # without torch the worker's import fails, with torch its empty spec does: the traceback is the message
        bench.run_torch_worker(sys.executable, "_torch_sweep.py", tmp_path / "in.json", "the torch sweep")
