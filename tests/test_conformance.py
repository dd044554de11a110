"""Conformance fixtures (issue 13): export, check, and the PyTorch walk-through when torch is installed.

Measured time: about 2 s without torch (export takes about 0.1 s on the shared 2-core machine).
"""
import importlib.util
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from numpy_moe import conformance
from numpy_moe import presets as P

ROOT = Path(__file__).resolve().parent.parent


def test_export_writes_every_preset_quickly_and_check_accepts_the_fixtures_themselves(tmp_path):
    start = time.perf_counter()
    rc = subprocess.run([sys.executable, "-m", "numpy_moe.conformance", "export", str(tmp_path / "fx")], cwd=ROOT,
                        capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr
    assert time.perf_counter() - start < 60
    manifest = json.loads((tmp_path / "fx" / "manifest.json").read_text())
    assert set(manifest["presets"]) == set(P.PRESETS) - {"vmoe"}
    results = tmp_path / "results"
    results.mkdir()
    for preset, entry in manifest["presets"].items():
        with np.load(tmp_path / "fx" / entry["file"]) as npz:
            fx = dict(npz)
        assert fx["output"].shape == tuple(entry["input_shape"])
        assert any(k.startswith("grad/") and k != "grad/input" for k in fx)
        assert not fx["mask"].all()
        np.savez(results / entry["file"], **fx)
    ok = subprocess.run([sys.executable, "-m", "numpy_moe.conformance", "check", str(tmp_path / "fx"), str(results)],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "FAIL" not in ok.stdout and ok.stdout.count(" ok") > 100


def test_check_fails_on_a_wrong_array_and_says_which(tmp_path):
    conformance.export(tmp_path / "fx", ["qwen2_moe"])
    manifest, data = conformance.load(tmp_path / "fx")
    fx = data["qwen2_moe"]
    results = tmp_path / "results"
    results.mkdir()
    wrong = {"output": fx["output"], "grad/shared_expert_gate.weight": fx["grad/shared_expert_gate.weight"] * 1.001,
             "routing/experts": fx["routing/experts"][:, ::-1],  # another order of the same set: fine
             "routing/weights": fx["routing/weights"][:, ::-1]}
    np.savez(results / "qwen2_moe.npz", **wrong)
    lines = []
    assert not conformance.check(tmp_path / "fx", results, out=lines.append)
    failed = [line for line in lines if line.endswith("FAIL")]
    assert len(failed) == 1 and "grad/shared_expert_gate.weight" in failed[0]


def test_routing_differences_are_counted_per_token():
    fixture = {"routing/experts": np.array([[0, 1], [2, 3]])}
    rows = conformance.compare(fixture, {"routing/experts": np.array([[1, 0], [2, 0]])})
    assert rows == [("routing/experts", 1.0, 0.0, False)]


def test_an_empty_results_directory_is_reported(tmp_path):
    conformance.export(tmp_path / "fx", ["switch"])
    lines = []
    assert not conformance.check(tmp_path / "fx", tmp_path, out=lines.append)
    assert "no <preset>.npz results" in lines[-1]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
                    reason="the walk-through compares transformers' blocks, and torch/transformers are not "
                           "installed (never a numpy_moe dependency)")
def test_pytorch_walkthrough_passes(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "conformance_walkthrough.py"), str(tmp_path)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("presets, seed, error", [(["qwen2_moe", "no_such_preset"], 5, "no_such_preset"),
                                                  (["qwen2_moe"], -1, "seed=-1"), (["qwen2_moe"], 1.5, "seed=1.5")])
def test_a_bad_export_writes_nothing_and_leaves_an_earlier_export_as_it_was(tmp_path, presets, seed, error):
    # before, the preset before a bad one was rewritten with the new seed while the manifest kept the old one
    with pytest.raises((ValueError, TypeError), match=error):
        conformance.export(tmp_path / "new", presets, seed)
    assert not (tmp_path / "new").exists()
    conformance.export(tmp_path / "fx", ["qwen2_moe"], seed=0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "fx").iterdir()}
    with pytest.raises((ValueError, TypeError), match=error):
        conformance.export(tmp_path / "fx", presets, seed)
    assert {p.name: p.read_bytes() for p in (tmp_path / "fx").iterdir()} == before


def test_the_command_line_refuses_a_negative_seed_without_a_traceback(tmp_path):
    rc = subprocess.run([sys.executable, "-m", "numpy_moe.conformance", "export", str(tmp_path / "fx"), "--seed", "-1"],
                        cwd=ROOT, capture_output=True, text=True)
    assert rc.returncode == 2
    assert "seed=-1 must be an integer >= 0" in rc.stderr and "Traceback" not in rc.stderr
    assert not (tmp_path / "fx").exists()


def _check_cli(fixtures, results):
    return subprocess.run([sys.executable, "-m", "numpy_moe.conformance", "check", str(fixtures), str(results)],
                          cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("case, message", [
    ("no fixtures", r"fx/manifest.json is not the manifest of an export \(FileNotFoundError"),
    ("no results directory", "results directory .*nowhere does not exist"),
    ("a results file that is not a zip", r"results/switch.npz cannot be read as an .npz file of arrays"),
    ("a pickled results array", r"results/switch.npz cannot be read as an .npz file of arrays.*Object arrays cannot be loaded"),
])
def test_check_on_unreadable_input_exits_2_with_a_message(case, message, tmp_path):
    # before, each of these ended in a traceback (FileNotFoundError, BadZipFile, numpy's pickle refusal)
    # with exit status 1, the status of results that do not conform
    fx, results = tmp_path / "fx", tmp_path / "results"
    results.mkdir()
    if case != "no fixtures":
        conformance.export(fx, ["switch"])
    if case == "a results file that is not a zip":
        (results / "switch.npz").write_bytes(b"not an npz")
    if case == "a pickled results array":
        np.savez(results / "switch.npz", output=np.array([{"a": 1}], dtype=object))
    out = _check_cli(fx, tmp_path / "nowhere" if case == "no results directory" else results)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert re.search(message, out.stderr), out.stderr


def test_non_numeric_results_fail_their_row_instead_of_crashing():
    fixture = {"output": np.ones((2, 3)), "routing/experts": np.array([[0, 1], [2, 3]]),
               "routing/weights": np.full((2, 2), 0.5)}
    # before: numpy's "ufunc 'subtract' did not contain a loop" (strings), and take_along_axis on float experts
    rows = conformance.compare(fixture, {"output": np.full((2, 3), "1"), "routing/weights": np.full((2, 2), 0.5),
                                         "routing/experts": np.array([[0.0, 1.0], [2.0, 3.0]])})
    assert [(key, ok) for key, _, _, ok in rows] == [("output", False), ("routing/experts", True),
                                                     ("routing/weights", False)]


def test_export_into_a_path_that_is_a_file_exits_2_with_a_message(tmp_path):
    # before, a FileExistsError / NotADirectoryError traceback, and exit status 1
    (tmp_path / "taken").write_text("mine")
    for target in (tmp_path / "taken", tmp_path / "taken" / "fx"):
        out = subprocess.run([sys.executable, "-m", "numpy_moe.conformance", "export", str(target), "--preset",
                              "switch"], cwd=ROOT, capture_output=True, text=True)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        assert f"cannot write the fixtures into {target}" in out.stderr
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_write_failing_midway_leaves_an_earlier_export_as_it_was(tmp_path, monkeypatch):
    # before, the fixtures written before the failure were already replaced (new seed, old manifest)
    conformance.export(tmp_path / "fx", ["qwen2_moe", "switch"], seed=0)
    before = {p.name: p.read_bytes() for p in (tmp_path / "fx").iterdir()}
    savez, calls = np.savez, []

    def disk_full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return savez(*args, **kwargs)
    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        conformance.export(tmp_path / "fx", ["qwen2_moe", "switch"], seed=5)
    assert {p.name: p.read_bytes() for p in (tmp_path / "fx").iterdir()} == before  # no temporary file either


def test_a_preset_named_twice_is_written_and_counted_once(tmp_path):
    # before: "wrote 2 fixtures" for the one file
    out = subprocess.run([sys.executable, "-m", "numpy_moe.conformance", "export", str(tmp_path / "fx"), "--preset",
                          "switch", "--preset", "switch"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("wrote 1 fixtures"), out.stdout + out.stderr
    assert sorted(p.name for p in (tmp_path / "fx").iterdir()) == ["manifest.json", "switch.npz"]
