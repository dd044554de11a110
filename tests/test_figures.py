"""What the figures and their descriptions say is computed, not written by hand (issue 19, items 3 and 5)."""
import types
from pathlib import Path

import numpy as np

import numpy_moe.estimators as estimators
from experiments.local_experts import Run, panel_title
from numpy_moe.datasets import make_circles
from numpy_moe.moe import MoE

ROOT = Path(__file__).resolve().parent.parent


def test_a_region_panel_names_the_seed_and_the_experts_used():
    run = types.SimpleNamespace(accuracy=0.95, seed=3, used=5, k=8)
    assert panel_title("k=8", run) == "k=8: accuracy 0.950 (seed 3), 5 of 8 experts used"
    assert panel_title("k=8", run, lines=[1, 4]).endswith("\n2 of them draw a line in their own region")


def test_a_run_counts_the_experts_whose_gate_wins_a_test_point():
    """One epoch of 8 competitive experts: the count is the number of distinct argmax experts of the gate
    on the test set, recomputed here from the trained model."""
    data = make_circles(200, seed=0)
    run = Run(data, "competitive", 8, "FTRL", epochs=1, seed=0)
    winners = np.unique(run.gate(data[1]).argmax(axis=1))
    assert run.used == winners.size and 1 <= run.used <= 8
    assert panel_title("k=8", run).endswith(f"{winners.size} of 8 experts used")


def test_top_1_share_and_share_of_the_assignments_are_described_apart():
    """The estimators' expert_usage_ is a top-1 share of the samples; a sparse layer's samples_per_expert
    counts all K assignments of every sample: no text may call either "share of samples per expert"."""
    assert "top-1 share" in estimators.__doc__
    assert "N K" in MoE.diagnostics.__doc__ and "top-1 share" in MoE.diagnostics.__doc__
    assert "share of samples per expert" not in (ROOT / "README.md").read_text()
