"""The docs machinery: the generated gallery and API sources, the site checker, and (when the site is
built and Chromium is installed) the browser check of the built site."""
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "docs"))
import check_site  # noqa: E402
import sources  # noqa: E402

BUILT = ROOT / "docs" / "_build" / "html"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"\x00\x00\x00\x02\x00\x00\x00\x03" + b"\x08\x02\x00\x00\x00"


def test_every_experiment_gets_a_gallery_script_with_a_title_and_rst_text_cells():
    for name in sources.experiment_names():
        text, reason = sources.gallery_script(name)
        lines = text.splitlines()
        assert lines[0] == '"""' and lines[1].startswith(f"{name}: ") and set(lines[2]) == {"="}, name
        assert len(lines[2]) == len(lines[1])
        assert "# %% [markdown]" not in text  # converted into sphinx-gallery text cells
        assert reason is None, f"{name} would not run in the docs: {reason}"
        compile(text, name, "exec")  # still valid Python


def test_markdown_cells_become_rst():
    rst = sources.md_to_rst(["## 1. Build it", "Some `code` and a [link](http://x).", "", "    y = x W",
                             "    z = y", "", "After."])
    assert rst[1:3] == ["1. Build it", "~~~~~~~~~~~"]
    assert "Some ``code`` and a `link <http://x>`__." in rst
    block = rst.index("::")
    assert rst[block + 2:block + 4] == ["    y = x W", "    z = y"] and rst[-1] == "After."


def test_an_experiment_that_needs_a_missing_module_or_says_no_run_is_shown_without_running():
    assert sources.skip_reason("import numpy\n") is None
    assert "no_such_module_xyz" in sources.skip_reason("import no_such_module_xyz.sub\n")
    assert "no_such_module_xyz" in sources.skip_reason("from no_such_module_xyz import a\n")
    assert sources.skip_reason("import os\n# gallery: no-run (needs mpiexec)\n") == "needs mpiexec"
    assert sources.skip_reason("def f():\n    import no_such_module_xyz\n") is None  # only top-level imports


def test_the_api_pages_cover_every_public_module():
    modules = sources.public_modules()
    assert {"numpy_moe", "numpy_moe.moe", "numpy_moe.io", "numpy_moe.io.registry", "numpy_moe.models.sparse_mlp"} \
        <= set(modules)
    assert not [m for m in modules if any(part.startswith("_") for part in m.split("."))]


def fake_site(root, broken):
    (root / "gallery").mkdir(parents=True)
    (root / "img.png").write_bytes(PNG)
    target = "missing.html" if broken == "link" else "page.html#nowhere" if broken == "anchor" else "page.html#here"
    image = "nope.png" if broken == "image" else "img.png"
    (root / "index.html").write_text(f'<a href="{target}">x</a><img src="{image}"><a href="https://e.org/">e</a>')
    (root / "page.html").write_text('<h1 id="here">h</h1><a href="index.html">back</a>')
    if broken == "png":
        (root / "bad.png").write_bytes(b"not a png")


@pytest.mark.parametrize("broken", [None, "link", "anchor", "image", "png"])
def test_the_file_check_finds_each_kind_of_breakage(tmp_path, broken):
    fake_site(tmp_path, broken)
    problems, pages = check_site.check_files(tmp_path)
    assert len(pages) == 2
    assert len(problems) == (0 if broken is None else 1), problems


def test_the_built_site_passes_the_browser_check(tmp_path):
    if not (BUILT / "index.html").is_file():
        pytest.skip("the docs are not built (make docs builds them into docs/_build/html)")
    if check_site.find_browser() is None:
        pytest.skip("no Chromium installed (apt-get install chromium)")
    assert check_site.main([str(BUILT), "--no-screenshots"]) == 0


def test_the_gallery_follows_the_readmes_teaching_path_and_keeps_unnamed_experiments():
    order = sources.readme_order()
    assert order[0] == "tutorial_dense"
    key = sources.ReadmeOrder("unused")
    names = sources.experiment_names() + ["zz_not_in_the_readme"]
    ranked = sorted(names, key=lambda n: key(f"{n}.py"))
    assert ranked[:len(order)] == order and ranked[-1] == "zz_not_in_the_readme"
