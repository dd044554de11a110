"""Every experiment runs end to end in --quick mode (figures go to a temporary folder)."""
import pytest

from experiments.__main__ import describe, discover, main, run


@pytest.mark.parametrize("name", discover())
def test_experiment_runs_quick(name, tmp_path, capsys):
    assert describe(name), f"experiments/{name}.py needs a docstring whose first line describes it"
    run(name, ["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr()
    # every experiment reports progress (experiments._common.Progress prints its first step at once)
    assert " elapsed, " in out.out + out.err, f"{name} printed no progress line (use experiments._common.Progress)"


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


def test_all_help_prints_the_runners_help_with_every_experiments_options_and_runs_nothing(capsys, monkeypatch):
    import experiments.__main__ as runner

    monkeypatch.setattr(runner, "run", lambda *a, **k: pytest.fail("--help ran an experiment"))
    assert main(["all", "--help"]) == 0
    text = capsys.readouterr().out
    assert "python -m experiments NAME" in text and "root of the repository" in text
    for option in ("--quick", "--out", "--threads", "--backend", "--cifar-epochs"):
        assert option in text, option


def test_an_experiments_usage_line_names_the_command_to_type(capsys):
    with pytest.raises(SystemExit):
        run("wine", ["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m experiments wine") and "wine.py" not in text.splitlines()[0]


def test_progress_prints_at_most_every_interval_with_elapsed_time_and_an_estimate_of_what_remains():
    import io

    from experiments._common import Progress, format_seconds

    now = [0.0]
    out = io.StringIO()
    progress = Progress(10, what="demo", every=2.0, file=out, clock=lambda: now[0])
    printed = []
    for step in range(10):
        now[0] += 1.0  # one second per step
        printed.append(progress.step(f"step {step}"))
    # the first step, then one line every 2 s, and always the last
    assert printed == [True, False, True, False, True, False, True, False, True, True]
    lines = out.getvalue().splitlines()
    assert lines[0] == "[demo] 1/10 (10%) step 0 | 1 s elapsed, ~9 s left"
    assert lines[2] == "[demo] 5/10 (50%) step 4 | 5 s elapsed, ~5 s left"
    assert lines[-1].endswith("10 s elapsed, done")
    assert format_seconds(185) == "3 min 05 s" and format_seconds(3720) == "1 h 02 min"
    with pytest.raises(ValueError, match="total"):
        Progress(0)


def test_progress_fit_callback_reports_the_epoch_and_loss_of_either_trainer():
    import io
    import types

    from experiments._common import Progress

    out = io.StringIO()
    progress = Progress(2, every=0.0, file=out)
    progress.fit_callback("net")(0, None, types.SimpleNamespace(loss=[0.5]))
    progress.fit_callback("local")(1, None, {"train": [2.0, 0.25]})
    lines = out.getvalue().splitlines()
    assert "net: epoch 1, loss 0.5000" in lines[0] and "local: epoch 2, loss 0.2500" in lines[1]


@pytest.mark.parametrize("name, flag", [("bench", "--rounds"), ("bench", "--repeats"), ("bench", "--threads"),
                                        ("bench_experts", "--repeats"), ("bench_experts", "--threads"),
                                        ("lm_moe", "--seeds"), ("images", "--cifar-epochs")])
@pytest.mark.parametrize("value, message", [("0", "0 must be at least 1"), ("-3", "-3 must be at least 1"),
                                            ("two", "'two' is not an integer")])
def test_counts_on_the_command_line_must_be_positive(name, flag, value, message, capsys, tmp_path):
    # before, 0 read as "the default" (--rounds, --repeats) or "no limit" (--threads) and ran anyway
    import importlib
    module = importlib.import_module(f"experiments.{name}")
    with pytest.raises(SystemExit) as stop:
        module.main([flag, value, "--quick", "--out", str(tmp_path)])  # a broken check runs it: not into plots/
    assert stop.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


def test_a_failed_write_leaves_the_previous_figure_whole(tmp_path, monkeypatch):
    # before, savefig wrote straight into plots/NAME.png: a write that failed half-way (a full disk, an
    # interrupt) left a truncated PNG in place of the committed figure
    import types

    import matplotlib.pyplot as plt
    from PIL import Image, PngImagePlugin  # noqa: F401  (registers the PNG writer)

    from experiments._common import savefig

    def full_disk(image, fp, filename, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    (tmp_path / "figure.png").write_bytes(b"the committed figure")
    monkeypatch.setitem(Image.SAVE, "PNG", full_disk)
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    with pytest.raises(OSError, match="No space"):
        savefig(fig, types.SimpleNamespace(out=tmp_path), "figure.png")
    assert (tmp_path / "figure.png").read_bytes() == b"the committed figure"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # no partial file left behind
    assert not plt.get_fignums()  # the figure is closed all the same
    monkeypatch.undo()
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = savefig(fig, types.SimpleNamespace(out=tmp_path), "figure.png")
    assert path.read_bytes().startswith(b"\x89PNG") and [p.name for p in tmp_path.iterdir()] == ["figure.png"]


@pytest.mark.parametrize("name", ["tutorial_dense", "walkthrough_sparse", "walkthrough_modern_moe",
                                  "walkthrough_expert_parallel"])
def test_a_walk_through_run_as_a_script_refuses_an_unknown_argument(name, tmp_path, capsys):
    # before, these walk-throughs ignored what they did not know: a mistyped --qiuck ran the full
    # walk-through and overwrote its committed figure
    with pytest.raises(SystemExit) as stop:
        run(name, ["--qiuck", "--out", str(tmp_path)])
    assert stop.value.code == 2
    assert "unrecognized arguments: --qiuck" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_walk_through_run_cell_by_cell_in_a_console_ignores_the_consoles_arguments(monkeypatch, tmp_path):
    from experiments._common import parse_args

    monkeypatch.setattr("sys.argv", ["pydevconsole.py", "--port", "5000"])  # an editor's console, not the script
    args = parse_args(["--port", "5000", "--out", str(tmp_path)], "doc", notebook=True, name="tutorial_dense")
    assert args.out == tmp_path and not args.quick


@pytest.mark.parametrize("out, message", [("", "an empty path is not a folder"),
                                          ("a_file", "cannot use"), ("a_file/sub", "cannot use")])
def test_a_bad_out_folder_is_refused_at_the_command_line(out, message, tmp_path, capsys, monkeypatch):
    # before, --out "" wrote the figures into the current directory and a file as --out raised
    # FileExistsError from deep inside pathlib
    from experiments._common import parse_args

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        parse_args(["--out", out], "doc", name="wine")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --out" in err and message in err


@pytest.mark.parametrize("make, message", [(lambda p: p / "none", "is not a folder"),
                                           (lambda p: p, "lacks data_batch_1.bin")])
def test_a_wrong_cifar_folder_is_refused_before_the_digits_study_trains(make, message, tmp_path, capsys,
                                                                         monkeypatch):
    # before, the digits study trained in full and only then load_cifar10 raised FileNotFoundError
    import experiments.images as images

    monkeypatch.setattr(images, "run_digits", lambda args: pytest.fail("trained before checking --cifar"))
    with pytest.raises(SystemExit) as stop:
        images.main(["--cifar", str(make(tmp_path)), "--quick", "--out", str(tmp_path / "figures")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "argument --cifar" in err and message in err


def test_a_quick_run_without_out_writes_beside_the_committed_figures_not_over_them(tmp_path):
    # before, --quick without --out wrote into plots/, so `python -m experiments all --quick` replaced every
    # committed full-run figure with a small run's; now plots/quick/ (git-ignored) takes them
    from pathlib import Path

    from experiments._common import PLOTS, parse_args
    assert parse_args(["--quick"], "doc", name="x").out == PLOTS / "quick"
    assert parse_args([], "doc", name="x").out == PLOTS
    assert parse_args(["--quick", "--out", str(tmp_path)], "doc", name="x").out == tmp_path
    ignored = (Path(__file__).resolve().parents[1] / ".gitignore").read_text().splitlines()
    assert "/plots/quick/" in ignored, "plots/quick/ must be ignored by git"
