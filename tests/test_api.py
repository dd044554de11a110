"""The top-level API: version, lazy public names, a light import, and ``python -m numpy_moe``."""
import configparser
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import numpy_moe as nm

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_single_sourced_with_the_package_metadata():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert config["metadata"]["version"] == "attr: numpy_moe.__version__"
    assert nm.__version__.count(".") == 2 and all(part.isdigit() for part in nm.__version__.split("."))
    try:
        installed = importlib.metadata.version("numpy-moe")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("numpy-moe is not installed (only imported from the source tree): no metadata to compare")
    assert installed == nm.__version__


def test_every_public_name_resolves_to_what_its_module_defines():
    from numpy_moe import estimators, gradcheck, moe

    for name in nm.__all__:
        assert getattr(nm, name) is not None, name
    assert nm.MoE is moe.MoE and nm.check_module is gradcheck.check_module
    assert nm.MoEClassifier is estimators.MoEClassifier
    assert nm.io.save and nm.io.load  # the io package, not a stale module
    assert {"MoE", "TopKGate", "MoEClassifier", "check_module", "io"} <= set(dir(nm))
    with pytest.raises(AttributeError, match="no_such_name"):
        nm.no_such_name


def test_the_docstring_says_where_to_start():
    for needle in ("Where to start", "python -m experiments", "MATH.md", "MoEClassifier", "check_module"):
        assert needle in nm.__doc__


def test_import_is_light_and_has_no_cycle():
    """A fresh interpreter imports numpy_moe without NumPy, scikit-learn or matplotlib; each public name
    then imports on its own (an import cycle would fail here, whatever the order)."""
    code = ("import sys, numpy_moe\n"
            "heavy = [m for m in ('numpy', 'sklearn', 'matplotlib', 'scipy') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "import numpy_moe.io, numpy_moe.estimators\n"
            "assert 'matplotlib' not in sys.modules\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_python_m_numpy_moe_prints_version_backend_and_where_things_are():
    out = subprocess.run([sys.executable, "-m", "numpy_moe"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"numpy_moe {nm.__version__}" in text
    assert "backend:     numpy" in text
    assert str(ROOT / "experiments") in text and "python -m experiments" in text
    assert "make docs" in text or "index.html" in text


@pytest.mark.parametrize("args", [["export", "fixtures"], ["--quick"]])
def test_python_m_numpy_moe_refuses_arguments_it_does_not_take(args):
    # before, any arguments were ignored (exit status 0), so a mistyped command seemed to have worked
    out = subprocess.run([sys.executable, "-m", "numpy_moe", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "unrecognized arguments: " + " ".join(args) in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    usage = subprocess.run([sys.executable, "-m", "numpy_moe", "--help"], cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: python -m numpy_moe")


def test_report_without_a_repository_says_where_the_experiments_are(monkeypatch):
    from numpy_moe import __main__ as entry

    paths = {"package": Path("/site-packages/numpy_moe"), "repository": None, "experiments": None,
             "docs_html": None, "math": None}
    monkeypatch.setattr(entry, "where", lambda: paths)
    text = entry.report()
    assert "source repository" in text and "python -m experiments" in text and "make docs" in text
