"""The benchmark's batch-size sweep: its PyTorch reference columns (the suite never needs torch: a stand-in
answers for the torch subprocess) and its torch worker's imports."""
import ast
from pathlib import Path

import numpy as np

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
