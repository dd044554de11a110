"""State and persistence: nothing is lost and resuming is exact.

Every registered Module class, in float32 and float64, trained a few steps, then saved with numpy_moe.io,
deep-copied and pickled, must compute bit for bit what the original computes (forward, backward, every
gradient, and further training steps). Training resumed from a copy of the model, its optimiser and its
generator must end where uninterrupted training ends, bit for bit. A save, a load or an optimiser step
that fails must leave what was there before as it was.
"""
import copy
import pickle

import numpy as np
import pytest

from numpy_moe import functional as F
from numpy_moe import io
from numpy_moe.estimators import MoEClassifier, MoERegressor
from numpy_moe.moe import MoE
from numpy_moe.optim import FTRL, SGD, Adam
from numpy_moe.train import fit


# ----- estimators ---------------------------------------------------------------------------------
@pytest.mark.parametrize("make, y", [
    (lambda: MoEClassifier(top_k=2, noise="vmoe", epochs=2, random_state=0), np.arange(40) % 3),
    (lambda: MoERegressor(top_k=2, noise="shazeer", epochs=2, random_state=0), np.linspace(-1, 1, 40)),
])
def test_a_loaded_noisy_estimator_continues_training_reproducibly_from_its_random_state(make, y, tmp_path, rng):
    # The file holds no generator: partial_fit after loading starts a fresh one from random_state for the
    # shuffling, but the gate's noise came from the generator the loaded model was rebuilt with, an
    # unseeded one. Two loads of one file then trained to different models despite random_state=0.
    X = rng.standard_normal((40, 4))
    path = io.save(make().fit(X, y), tmp_path / "est.npz")
    first, second = io.load(path).partial_fit(X, y), io.load(path).partial_fit(X, y)
    for (name, p), (_, q) in zip(first.model_.named_parameters(), second.model_.named_parameters()):
        assert np.array_equal(p, q), name
    assert first.model_.gate.rng is first._rng  # the noise follows random_state, as in a fitted estimator


# ----- a save that fails leaves the target as it was and no temporary file -------------------------
def _listing(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.mark.parametrize("target, error, message", [
    ("", ValueError, "path='' is empty; pass a file name"),
    ("m.npz/", IsADirectoryError, "ends with a path separator"),
    ("gone/m.npz", FileNotFoundError, "cannot write .*m.npz: its directory .*gone does not exist"),
])
def test_a_save_to_a_path_that_cannot_be_a_file_writes_nothing_anywhere(target, error, message, tmp_path,
                                                                           monkeypatch):
    # An empty name or one ending in "/" has no file name: the temporary file was written, whole, into the
    # working directory's parent ("" -> abspath's dirname) or beside the directory, and only the rename
    # failed, with a message naming the temporary file ("No such file or directory: '/x/..a1b2.tmp' -> ''").
    # A missing directory gave that temporary file's name too, not the target's.
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    io.save(MoE(5, 3, 4, seed=0), work / "m.npz")
    before, files = (work / "m.npz").read_bytes(), _listing(tmp_path)
    with pytest.raises(error, match=message):
        io.save(MoE(5, 3, 4, seed=1), target)
    assert _listing(tmp_path) == files and (work / "m.npz").read_bytes() == before


# ----- an optimiser step that fails changes nothing ------------------------------------------------
def _state(optimizer):
    return pickle.dumps(vars(optimizer))  # every moment, accumulator and counter, bit for bit


@pytest.mark.parametrize("make", [lambda: Adam(0.01), lambda: SGD(0.01, momentum=0.9), lambda: FTRL(0.1, l1=0.01)])
def test_an_optimiser_step_that_fails_changes_neither_the_model_nor_the_optimiser(make, rng):
    # An optimiser keeps state per parameter name. Reused on a model whose experts have another width (the
    # same names, other shapes), its step updated the gate, then failed on the experts with numpy's
    # "operands could not be broadcast together": half the model stepped, t and the gate's moments advanced.
    X, y = rng.standard_normal((20, 5)), np.arange(20) % 3
    optimizer = make()
    fit(MoE(5, 3, 4, hidden=7, seed=0), X, y, optimizer=optimizer, epochs=1, seed=0)
    other = MoE(5, 3, 4, hidden=9, seed=1)
    other.backward(F.cross_entropy_backward(other.forward(X), y))
    params, state = {k: p.copy() for k, p in other.named_parameters()}, _state(optimizer)
    with pytest.raises(ValueError, match=r"holds state for 'experts.W1' of shape \(4, 5, 7\); the parameter "
                                         r"has shape \(4, 5, 9\)"):
        optimizer.step(other)
    assert all(np.array_equal(p, params[k]) for k, p in other.named_parameters()) and _state(optimizer) == state
