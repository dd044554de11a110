"""Every experiment runs end to end in --quick mode (figures go to a temporary folder)."""
import pytest

from experiments.__main__ import describe, discover, main, run


@pytest.mark.parametrize("name", discover())
def test_experiment_runs_quick(name, tmp_path):
    assert describe(name), f"experiments/{name}.py needs a docstring whose first line describes it"
    run(name, ["--quick", "--out", str(tmp_path)])


def test_runner_lists_and_rejects_unknown_names(capsys):
    assert main([]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in discover())
    assert main(["no_such_experiment"]) == 2


def test_bench_timed_stages_count_the_gate_and_experts_and_then_restore_the_layer():
    import numpy as np

    from experiments.bench import timed_stages
    from numpy_moe.moe import MoE

    rng = np.random.default_rng(0)
    layer = MoE(8, 4, 4, hidden=16, seed=0, top_k=2)
    x, dy = rng.standard_normal((64, 8)), rng.standard_normal((64, 4))
    y0 = layer.forward(x)
    with timed_stages(layer, sync=lambda: None) as spent:
        assert spent == {"gate": 0.0, "experts": 0.0}
        layer.forward(x)
        after_forward = dict(spent)
        layer.backward(dy)
    assert 0 < after_forward["gate"] < spent["gate"] and 0 < after_forward["experts"] < spent["experts"]
    for module in (layer.gate, layer.experts):  # the timing wrappers are gone, the layer is unchanged
        assert not {"forward", "backward", "forward_grouped", "backward_grouped"} & set(vars(module))
    np.testing.assert_array_equal(layer.forward(x), y0)


def test_bench_floor_runs_every_required_product_once_in_the_layers_order():
    import types

    import numpy as np

    from experiments.bench import gemm_floor
    from numpy_moe.moe import MoE

    layer = MoE(8, 4, 3, hidden=16, seed=0, top_k=2)
    calls = []

    def matmul(a, b, out):  # records (stage, rows of a, columns of b) instead of multiplying
        calls.append((stage, a.shape[0], b.shape[1]))

    xp = types.SimpleNamespace(float32=np.float32, ones=np.ones, empty=np.empty, matmul=matmul)
    offsets = [0, 5, 5, 12]  # expert 1 has no rows: it gets no products
    steps = gemm_floor(layer, 6, offsets, xp)
    assert [s for s, _ in steps] == ["gate", "experts", "experts", "gate"]
    for stage, fn in steps:
        fn()
    forward = [(5, 16), (5, 4), (7, 16), (7, 4)]  # X W1, Z W2 per expert with rows
    # Zᵀ dY, dY W2ᵀ, Xᵀ dA, dA W1ᵀ per expert with rows
    backward = [(16, 4), (5, 16), (8, 16), (5, 8), (16, 4), (7, 16), (8, 16), (7, 8)]
    assert calls == ([("gate", 6, 3)] + [("experts", *c) for c in forward + backward]
                     + [("gate", 8, 3), ("gate", 6, 8)])
