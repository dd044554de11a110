"""The experiments run as documented (``python experiments/NAME.py`` from the root, cell by cell in a kernel
started in experiments/), and every walk-through ends with exercises."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.__main__ import discover

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"
BOOTSTRAP = 'sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))'
WALKTHROUGHS = sorted(n for n in discover() if n.startswith("walkthrough_") or n == "tutorial_dense")


def run(args, cwd, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("name", discover())
def test_every_experiment_puts_the_repository_root_on_the_path_before_it_imports_from_it(name):
    source = (EXPERIMENTS / f"{name}.py").read_text()
    lines = source.splitlines()
    assert BOOTSTRAP in lines, (f"experiments/{name}.py lacks the bootstrap of the other experiments (copy the "
                                "`_here = ...` and `sys.path.insert(...)` lines from the top of any of them)")
    ours = ("experiments", "numpy_moe")
    first = min(node.lineno for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ours
                or isinstance(node, ast.Import) and any(a.name.split(".")[0] in ours for a in node.names))
    assert lines.index(BOOTSTRAP) + 1 < first, f"experiments/{name}.py imports from the repository before the bootstrap"


@pytest.mark.parametrize("name", ["walkthrough_expert_parallel", "bench_experts"])  # a walk-through, a study
def test_python_experiments_name_py_runs_from_the_repository_root(name, tmp_path):
    out = run([f"experiments/{name}.py", "--quick", "--out", str(tmp_path)], cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert " elapsed, " in out.stdout


def test_a_walkthroughs_cells_run_in_a_kernel_started_in_experiments(tmp_path):
    """A kernel started in experiments/ has that folder first on sys.path and no __file__; the cells run
    in its namespace. (ipykernel is not a dependency: a plain interpreter in that folder executes the
    source the same way.) The repository's numpy_moe must be the one imported, whatever is installed."""
    code = ("import sys\n"
            "namespace = {'__name__': '__main__'}\n"
            "exec(compile(open('walkthrough_expert_parallel.py').read(), 'cells', 'exec'), namespace)\n"
            "print('numpy_moe from', sys.modules['numpy_moe'].__file__)\n")
    out = run(["-c", code], cwd=EXPERIMENTS)
    assert out.returncode == 0, out.stderr[-2000:]
    assert " elapsed, " in out.stdout and "largest difference from MoE" in out.stdout
    assert f"numpy_moe from {ROOT / 'numpy_moe' / '__init__.py'}" in out.stdout


def cells(source):
    """[(kind, text)] of a ``# %%`` file: kind "markdown" or "code"."""
    parts = re.split(r"^# %%(.*)$", source, flags=re.M)
    return [("markdown" if "[markdown]" in head else "code", body) for head, body in zip(parts[1::2], parts[2::2])]


@pytest.mark.parametrize("name", WALKTHROUGHS)
def test_every_walkthrough_ends_with_exercises_of_two_or_three_prompts(name):
    kind, text = cells((EXPERIMENTS / f"{name}.py").read_text())[-1]
    assert kind == "markdown" and text.strip().startswith("# ## Exercises"), \
        f"experiments/{name}.py must end with a '# %% [markdown]' cell '# ## Exercises'"
    prompts = re.findall(r"^# \d\. \S", text, flags=re.M)
    assert 2 <= len(prompts) <= 3, f"experiments/{name}.py: {len(prompts)} numbered prompts; expected 2 or 3"


def test_the_exercise_check_sees_a_missing_section():
    assert cells("# %%\nx = 1\n# %% [markdown]\n# ## Exercises\n# 1. a\n")[-1][0] == "markdown"
    assert cells("# %% [markdown]\n# ## Exercises\n# 1. a\n# %%\nx = 1\n")[-1][0] == "code"
    assert len(WALKTHROUGHS) >= 5 and "walkthrough_sparse" in WALKTHROUGHS
