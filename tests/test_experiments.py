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
