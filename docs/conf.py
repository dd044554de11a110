"""Sphinx configuration of the numpy_moe site: ``make docs`` builds it into docs/_build/html.

The gallery, the API pages and the landing page are generated from the repository on every build
(docs/sources.py), so a new experiment or module appears without editing anything here. Environment:
``NUMPY_MOE_DOCS_FULL=1`` runs the experiments in full instead of ``--quick`` (tens of minutes).
"""
import os
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS)]  # the package and experiments/ of this checkout, then sources.py
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy_moe  # noqa: E402
import sources  # noqa: E402

RUN = sources.generate()
FIGURES = ROOT / "docs" / "_build" / "gallery_figures"
FULL = os.environ.get("NUMPY_MOE_DOCS_FULL") == "1"

project = "numpy-moe"
author = "the numpy-moe developers"
copyright = "the numpy-moe developers, MIT licence"
version = release = numpy_moe.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_gallery_src", "Thumbs.db", ".DS_Store", "gallery/*.ipynb",
                    "gallery/*.py", "gallery/*.zip", "gallery/*.md5", "gallery/*.json"]
root_doc = "index"

# nothing is fetched while building: no intersphinx, no remote images, the theme ships its assets
html_theme = "furo"
html_title = f"numpy-moe {release}"
html_static_path = []
html_last_updated_fmt = None
html_copy_source = False
html_show_sourcelink = False

myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath"]
suppress_warnings = ["myst.xref_missing", "myst.header", "config.cache"]

autodoc_mock_imports = ["cupy", "mpi4py", "rpy2"]  # optional backends: document without installing them
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True}
numpydoc_show_class_members = False
numpydoc_validation_checks = set()
numpydoc_xref_param_type = False


def reset_argv(gallery_conf, script_vars):
    """Arguments each experiment runs with: quick mode, figures into a folder of the build."""
    import shutil

    name = Path(script_vars["src_file"]).stem
    out = FIGURES / name
    shutil.rmtree(out, ignore_errors=True)  # figures of an earlier build must not be taken for this run's
    return ([] if FULL else ["--quick"]) + ["--out", str(out)]


class SavedFigures:
    """A sphinx-gallery image scraper for the PNG files an experiment writes with ``_common.savefig``.

    The experiments save and close their figures (so the matplotlib scraper sees none): after each code
    block, every PNG that appeared or changed in the experiment's ``--out`` folder is copied into the
    gallery and shown full width, in the order it was written.
    """

    def __init__(self):
        self.seen = {}

    def __repr__(self):  # sphinx-gallery caches on the repr of its configuration
        return "SavedFigures()"

    def __call__(self, block, block_vars, gallery_conf):
        import shutil

        from sphinx_gallery.scrapers import figure_rst

        folder = FIGURES / Path(block_vars["src_file"]).stem
        if not folder.is_dir():
            return ""
        new = []
        for path in sorted(folder.glob("*.png"), key=lambda p: p.stat().st_mtime_ns):
            stamp = path.stat().st_mtime_ns
            if self.seen.get(path) != stamp:
                self.seen[path] = stamp
                new.append(path)
        rst = []
        for path, target in zip(new, block_vars["image_path_iterator"]):
            shutil.copyfile(path, target)
            rst.append(figure_rst([target], gallery_conf["src_dir"]))
        return "".join(rst)


def plain_text_docstring(app, what, name, obj, options, lines):
    """The package's docstrings are plain text for a terminal (house style): show Markdown-style tables
    (lines starting with ``|``) as preformatted text, and keep ``|x|`` (an absolute value) from being read
    as a reStructuredText substitution."""
    out, i = [], 0
    while i < len(lines):
        if lines[i].lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append("    " + lines[i])
                i += 1
            out += ["::", ""] + block + [""]
            continue
        out.append(re.sub(r"(?<![\\`])\|(?=\S)([^|`\n]*?\S)\|", r"\\|\1\\|", lines[i]))
        i += 1
    lines[:] = out


def skip_sklearn_request_methods(app, what, name, obj, skip, options):
    """scikit-learn generates set_fit_request / set_score_request methods on every estimator: not ours."""
    if re.fullmatch(r"set_\w+_request", name):
        return True
    return None


def setup(app):
    app.connect("autodoc-process-docstring", plain_text_docstring)
    app.connect("autodoc-skip-member", skip_sklearn_request_methods)


sphinx_gallery_conf = {
    "examples_dirs": str(DOCS / "_gallery_src"),
    "gallery_dirs": str(DOCS / "gallery"),
    "filename_pattern": r"/(" + "|".join(RUN) + r")\.py$" if RUN else r"^$",
    "ignore_pattern": r"/_",
    "reset_argv": reset_argv,
    "image_scrapers": ("matplotlib", SavedFigures()),
    "within_subsection_order": "sources.ReadmeOrder",  # the teaching path's order, then the rest
    "download_all_examples": True,
    "remove_config_comments": True,
    "show_memory": False,
    "capture_repr": (),
    "min_reported_time": 1,
    "abort_on_example_error": False,
    "plot_gallery": "True",
}
smartquotes = False  # keep --quick and --cifar as typed
