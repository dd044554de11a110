"""HashGate (hash layers, Roller et al. 2021, MATH.md §10.12): the table lookup with weight 1, the same table in
another process, the balanced hash by hand and its load bound, io round trip of the table, gradients reaching
the experts only, bad keys."""
import subprocess
import sys

import numpy as np
import pytest

from numpy_moe import io
from numpy_moe.experts import ExpertBank
from numpy_moe.gates import HashGate, TopKGate
from numpy_moe.moe import MoE


def test_hash_gate_routes_each_key_to_its_table_entry_with_weight_one(rng):
    gate = HashGate(5, 4, 10, seed=0)
    keys = rng.integers(0, 10, 30)
    r = gate.forward(rng.standard_normal((30, 5)), keys=keys)
    assert np.array_equal(r.expert, gate.buffers["table"][keys].astype(int))
    assert np.all(r.weight == 1) and gate.n_parameters() == 0
    assert set(gate.buffers["table"].tolist()) <= {0.0, 1.0, 2.0, 3.0}


def test_hash_table_is_the_same_in_another_process():
    code = ("from numpy_moe.gates import HashGate; "
            "print(HashGate(3, 8, 50, seed=7).buffers['table'].astype(int).tolist())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=".")
    assert other.stdout.strip() == str(HashGate(3, 8, 50, seed=7).buffers["table"].astype(int).tolist())


def test_balanced_hash_by_hand_and_its_load_bound(rng, tmp_path):
    # counts 5, 3, 3, 2, 1 over 2 experts: 0 -> e0 (5), 1 -> e1 (3), 2 -> e1 (6), 3 -> e0 (7), 4 -> e1 (7)
    keys = [0] * 5 + [1] * 3 + [2] * 3 + [3] * 2 + [4]
    gate = HashGate(3, 2, 5, kind="balanced").balance(keys)
    assert gate.buffers["table"].tolist() == [0, 1, 1, 0, 1]
    # every key once: within one token of equal
    distinct = rng.permutation(23)
    g = HashGate(3, 4, 23, kind="balanced").balance(distinct)
    load = np.bincount(g.forward(np.zeros((23, 3)), keys=distinct).expert, minlength=4)
    assert load.max() - load.min() <= 1
    # Zipf-like counts: the spread is at most the largest key count (greedy LPT), far below the random hash's
    zipf = rng.choice(40, size=2000, p=1 / np.arange(1, 41) / (1 / np.arange(1, 41)).sum())
    g = HashGate(3, 8, 40, kind="balanced").balance(zipf)
    load = np.bincount(g.forward(np.zeros((2000, 3)), keys=zipf).expert, minlength=8)
    assert load.max() - load.min() <= np.bincount(zipf).max()
    loaded = io.load(io.save(g, tmp_path / "hash.npz"))
    assert np.array_equal(loaded.buffers["table"], g.buffers["table"])


def test_hash_layer_gradients_reach_the_experts_only(rng, check_fixed_choice):
    keys = rng.integers(0, 6, 12)
    layer = MoE(gate=HashGate(5, 3, 6, seed=0), experts=ExpertBank(3, 5, 2, 4, seed=1))
    errors = check_fixed_choice(layer, rng.standard_normal((12, 5)), keys=keys)
    assert not any(name.startswith("gate.") for name in errors)


def test_hash_bad_input(rng):
    gate = HashGate(3, 2, 5)
    x = np.zeros((3, 3))
    with pytest.raises(ValueError, match=r"keys range over \[0, 5\]; expected keys in \[0, n_keys=5\)"):
        gate.forward(x, keys=[0, 5, 1])
    with pytest.raises(ValueError, match=r"keys range over \[-1"):
        gate.forward(x, keys=[0, -1, 1])
    with pytest.raises(TypeError, match="expected integers"):
        gate.forward(x, keys=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"expected \(3,\)"):
        gate.forward(x, keys=[0, 1])
    with pytest.raises(ValueError, match="needs the samples' keys"):
        MoE(gate=HashGate(3, 2, 5), experts=ExpertBank(2, 3, 2)).forward(x)
    with pytest.raises(ValueError, match="keys are read by a HashGate only"):
        MoE(gate=TopKGate(3, 2, 1), experts=ExpertBank(2, 3, 2)).forward(x, keys=[0, 1, 2])
    with pytest.raises(ValueError, match="keys are read by a HashGate only"):
        MoE(3, 2, 2, hidden=4).forward(x, keys=[0, 1, 2])  # a dense layer too
    with pytest.raises(ValueError, match="kind='random'"):
        gate.balance([0, 1])
    with pytest.raises(ValueError, match="kind='md5'"):
        HashGate(3, 2, 5, kind="md5")
