"""The Makefile: `make` alone lists the targets, and the install step says what it is doing."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text()


def test_plain_make_lists_the_targets():
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "--no-print-directory"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for target in ("test", "experiments", "docs", "docs-check", "clean"):
        assert re.search(rf"^\s+{target}\s", out.stdout, flags=re.M), target


def test_the_install_steps_say_what_they_do_and_let_pip_report_its_progress():
    for rule in (r"\$\(VENV\)/\.installed:", r"\$\(VENV\)/\.docs-installed:"):
        body = re.search(rule + r".*?\n((?:\t.*\n)+)", MAKEFILE).group(1)
        lines = body.splitlines()
        assert lines[0].startswith("\t@echo"), f"{rule} starts without saying what it does"
        pip = [line for line in lines if "pip install" in line]
        assert pip and not any("--quiet" in line or " -q" in line for line in pip), pip


def test_docs_is_separate_from_test():
    test_rule = re.search(r"^test:.*\n((?:\t.*\n)+)", MAKEFILE, flags=re.M).group(0)
    assert "docs" not in test_rule and "sphinx" not in test_rule
