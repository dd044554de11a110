"""Tests for experiments/_bench_images.py (post 000's image model, numpy_moe against PyTorch per epoch).

The suite never needs torch: the benchmark must run, and say that it has no reference, without it.
Added time: about 2 s (one quick round on 256 images).
"""
import ast

import pytest

from experiments import _bench_images as bench


def test_without_torch_rows_have_no_reference(monkeypatch):
    monkeypatch.setattr(bench, "find_torch_python", lambda torch_python=None: None)
    steps = []

    class Progress:
        def step(self, detail=""):
            steps.append(detail)

    rows = bench.measure(rounds=1, quick=True, threads=1, progress=Progress())
    assert len(rows) == 1 and len(steps) == bench.n_steps(1, 1)
    row = rows[0]
    assert row["name"] == "post 000 image model, digits, batch 64, 1 thread"
    assert row["ours_ms"] > 0 and row["cpu_ours_ms"] > 0 and row["ours_loss"] > 0
    assert row["ref_ms"] is None and row["ratio_median"] is None and row["pass"] is None
    assert "(no torch)" in bench.format_rows(rows)


def test_row_ratios_per_round():
    # Round ratios 0.5, 2, 0.8 (ours / torch): median 0.8 <= 1 passes; ours' median epoch is 0.4 s.
    wall = {"numpy_moe": [0.1, 0.4, 0.8], "torch": [0.2, 0.2, 1.0]}
    row = bench._row(2, wall, wall, {"numpy_moe": 1.0, "torch": 1.1})
    assert row["ours_ms"] == pytest.approx(400) and row["ref_ms"] == pytest.approx(200)
    assert (row["ratio_median"], row["ratio_min"], row["ratio_max"]) == pytest.approx((0.8, 0.5, 2.0))
    assert row["pass"] is True and row["cpu_ratio_median"] == pytest.approx(0.8)
    wall["numpy_moe"][2] = 1.2  # ratios 0.5, 2, 1.2: median 1.2 misses
    assert bench._row(2, wall, wall, {})["pass"] is False


def test_torch_python_choice(monkeypatch):
    monkeypatch.setenv(bench.ENV_VAR, "/opt/py/bin/python")
    assert bench.find_torch_python("/x/python") == "/x/python"  # the argument first
    assert bench.find_torch_python() == "/opt/py/bin/python"  # then the environment variable
    monkeypatch.delenv(bench.ENV_VAR)
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: None)
    assert bench.find_torch_python() is None


def test_torch_worker_imports_only_torch_numpy_and_the_standard_library():
    tree = ast.parse(bench.TORCH_SCRIPT.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"json", "sys", "time", "numpy", "torch"}
