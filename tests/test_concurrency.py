"""Reproducibility: the same seeds give the same bits in separate processes, whatever PYTHONHASHSEED."""
import os
import subprocess
import sys
from pathlib import Path


_DIGESTS = """
import hashlib, sys
import numpy as np
from test_persistence_roundtrip import _all_examples, _in_dtype, _pass, _state_arrays, _train
for name, example in _all_examples().items():
    model = _in_dtype(example, "float64")  # rebuilt from its configuration: its seeds draw the weights again
    arrays = _pass(name, model, np.random.default_rng(7))
    _train(name, model, np.random.default_rng(8), steps=2)
    digest = hashlib.sha256()
    for a in arrays + _state_arrays(model):
        digest.update(np.ascontiguousarray(a).tobytes())
    print(name, digest.hexdigest())
"""


def test_every_registered_class_computes_the_same_bits_in_two_processes_with_other_hash_seeds():
    # forward, backward and two training steps of every example of tests/test_io.py (each registered Module class)
    # and the stateful ones of test_persistence_roundtrip; before, two examples built an MoE without a seed
    root = Path(__file__).resolve().parent.parent
    runs = []
    for hash_seed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]))
        done = subprocess.run([sys.executable, "-c", _DIGESTS], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(dict(line.rsplit(" ", 1) for line in done.stdout.splitlines()))
    assert len(runs[0]) >= 50
    assert runs[0] == runs[1], sorted(k for k in runs[0] if runs[0][k] != runs[1].get(k))
