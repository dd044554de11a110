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

from numpy_moe import io
from numpy_moe.estimators import MoEClassifier, MoERegressor


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
