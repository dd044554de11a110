"""The helpers of the studies that isolate one change: experiments/balance.py and experiments/sparse_mlp.py."""
import pytest

from experiments.balance import NOISY_IL, RUNS, SWITCH, WEIGHTS, config, imbalance
from experiments.sparse_mlp import CONFIG, active_parameters, matched_dense_config
from numpy_moe.models import SparseMLP


def test_imbalance_gives_maxvio_and_the_sample_cv_of_a_hand_worked_load():
    # loads (6, 2, 0, 0): mean 2, max / mean - 1 = 2; deviations (4, 0, -2, -2), 24 / 3 = 8, sqrt(8) / 2
    maxvio, cv = imbalance([6, 2, 0, 0])
    assert maxvio == pytest.approx(2.0) and cv == pytest.approx(8 ** 0.5 / 2)
    assert imbalance([5, 5, 5, 5]) == (0.0, 0.0)
    # top-2 of 4 at its worst (two experts take every row): MaxVio 1
    assert imbalance([10, 10, 0, 0])[0] == pytest.approx(1.0)


def test_the_sweep_changes_one_thing_and_its_zero_weights_are_the_noise_only_and_unbalanced_runs():
    assert config(NOISY_IL, 0.0) == RUNS["(c) noise only"] == {"noise": "vmoe"}
    assert config(SWITCH, 0.0) == RUNS["(a) no balance loss"] == {}
    assert config(NOISY_IL, 0.1) == RUNS["(d) noise + importance + load"]
    assert config(SWITCH, 0.1) == RUNS["(e) Switch loss"]
    for w in WEIGHTS[1:]:
        assert config(NOISY_IL, w) == {"noise": "vmoe", "balance": {"importance": w, "load": w}}
        assert config(SWITCH, w) == {"balance": {"switch": w}}
    with pytest.raises(ValueError, match="loss"):
        config("z_loss", 0.1)


def test_the_parameter_matched_mixer_is_dense_and_within_one_percent_of_sparse_mlps_total():
    sparse = SparseMLP(**CONFIG)
    dense, count = matched_dense_config(CONFIG)
    model = SparseMLP(**dense)
    assert dense["sparse_blocks"] == () and not model.sparse_blocks
    assert count == model.n_parameters()
    assert abs(count / sparse.n_parameters() - 1) < 0.01
    # wider than the same-shape Mixer, in the same token : channel ratio
    assert dense["token_hidden"] > CONFIG["token_hidden"]
    assert dense["channel_hidden"] * CONFIG["token_hidden"] == dense["token_hidden"] * CONFIG["channel_hidden"]
    # Sparse-MLP has about three times the same-shape Mixer's parameters
    same_shape = SparseMLP(**CONFIG | dict(sparse_blocks=())).n_parameters()
    assert 2.5 < sparse.n_parameters() / same_shape < 3.5


def test_active_parameters_drop_the_unpicked_experts_of_every_moe_layer():
    sparse = SparseMLP(**CONFIG)
    moes = [m for m in sparse.modules() if hasattr(m, "experts") and hasattr(m, "gate")]
    assert len(moes) == 2 * len(sparse.sparse_blocks)
    expert_params = sum(m.experts.n_parameters() for m in moes)
    # top-2 of 4: a row uses half of each layer's experts
    assert active_parameters(sparse) == sparse.n_parameters() - expert_params // 2
    dense = SparseMLP(**CONFIG | dict(sparse_blocks=()))
    assert active_parameters(dense) == dense.n_parameters()
