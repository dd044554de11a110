"""Generate the Sphinx sources that are derived from the repository, so new files need no docs edit.

``conf.py`` calls :func:`generate` before Sphinx reads any source. It writes (all under ``docs/``, all
ignored by git, all rewritten on every build):

- ``index.md``: the landing page, the README with its links pointed at the site (``docs/MATH.md`` becomes
  the MATH page, ``plots/`` the committed figures, each ``python -m experiments NAME`` a link to NAME's
  gallery page), followed by the site's table of contents: the gallery, MATH.md, every other
  ``docs/*.md`` page, the API reference;
- ``_gallery_src/``: one script per experiment that ``python -m experiments`` discovers (every public
  ``experiments/*.py``), in the form sphinx-gallery reads: the first docstring line as the page's title,
  the ``# %% [markdown]`` cells of the walk-throughs turned into reStructuredText text blocks. The code
  is unchanged;
- ``api/``: one page per public module found by walking the ``numpy_moe`` package (``automodule`` with
  its members), and an index listing them with the first line of their docstrings.

Which experiments run during the build
--------------------------------------
Every experiment runs, in quick mode (``--quick``, see ``experiments/_common.py``), with its figures
written to ``docs/_build/gallery_figures/NAME/`` and shown on its page. Two kinds are shown but not run:
an experiment whose source has a line ``# gallery: no-run`` (followed by the reason, e.g. it needs
``mpiexec`` or R), and an experiment that imports at its top level a module this Python cannot find
(``mpi4py``, ``rpy2``, ``cupy``...): its page shows the code and says why it was not run.
"""
import ast
import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
EXPERIMENTS = ROOT / "experiments"
GALLERY_SRC = DOCS / "_gallery_src"
GALLERY = DOCS / "gallery"
API = DOCS / "api"
NO_RUN = re.compile(r"^# gallery: no-run\b(.*)$", re.M)


def experiment_names():
    """The names ``python -m experiments`` lists: every public module of experiments/, sorted."""
    return sorted(p.stem for p in EXPERIMENTS.glob("*.py") if not p.stem.startswith("_"))


def readme_order():
    """Experiment names in the order the README first names them (``python -m experiments NAME``)."""
    names, seen = set(experiment_names()), []
    for name in re.findall(r"python -m experiments (\w+)", (ROOT / "README.md").read_text(encoding="utf-8")):
        if name in names and name not in seen:
            seen.append(name)
    return seen


class ReadmeOrder:
    """sphinx-gallery sort key: the README's teaching path order first, then any other experiment by name."""

    def __init__(self, src_dir):
        self.src_dir = src_dir
        self.order = readme_order()

    def __repr__(self):
        return "<ReadmeOrder>"

    def __call__(self, filename):
        name = Path(filename).stem
        return (self.order.index(name) if name in self.order else len(self.order), name)


def missing_imports(source):
    """Top-level modules imported by ``source`` (module level only) that this Python cannot find."""
    missing = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in missing and importlib.util.find_spec(top) is None:
                missing.append(top)
    return missing


def skip_reason(source):
    """Why an experiment is shown without running it during the build, or None when it runs."""
    marker = NO_RUN.search(source)
    if marker:
        return marker.group(1).strip(" :-()") or "marked '# gallery: no-run' in its source"
    missing = missing_imports(source)
    if missing:
        return f"it needs {', '.join(missing)}, which is not installed where the docs were built"
    return None


def md_to_rst(lines):
    """Markdown text of a ``# %% [markdown]`` cell (without the ``# `` prefixes) -> reStructuredText.

    Handles what the walk-throughs use: ``#`` headings, single-backtick code, links, and indented blocks
    (formulas), which become literal blocks.
    """
    out, in_block = [], False
    for line in lines:
        heading = re.match(r"^(#{1,4}) (.+)$", line)
        if heading:
            title = heading.group(2).strip()
            out += ["", title, "-~^\""[len(heading.group(1)) - 1] * len(title), ""]
            in_block = False
            continue
        if line.startswith("    ") and line.strip():
            if not in_block:
                while out and not out[-1].strip():
                    out.pop()
                out += ["", "::", ""]
                in_block = True
            out.append(line)
            continue
        if in_block:
            if not line.strip():
                out.append(line)
                continue
            out.append("")
            in_block = False
        line = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"`\1 <\2>`__", line)
        line = re.sub(r"(?<![`\w])`([^`]+)`(?![`\w])", r"``\1``", line)
        out.append(line)
    return out


def gallery_script(name):
    """The sphinx-gallery form of experiments/NAME.py (title, rST text cells, a note in quick mode)."""
    source = (EXPERIMENTS / f"{name}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    doc = ast.get_docstring(tree, clean=True) or name
    first = tree.body[0] if tree.body else None
    body_lines = source.splitlines()
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        body_lines = body_lines[first.end_lineno:]
    title, _, rest = doc.partition("\n")
    title = f"{name}: {title.strip()}"
    reason = skip_reason(source)
    note = (f".. note::\n   Not run when these pages were built: {reason}. Run it yourself from the repository "
            f"root: ``python -m experiments {name}``." if reason else
            f".. note::\n   Run here in quick mode (``python -m experiments {name} --quick``): small data and few "
            f"epochs, so the figures below only show what the study draws. The full run is "
            f"``python -m experiments {name}`` from the repository root; its figures are in ``plots/`` "
            "and on the home page.")
    header = [f'"""', title.replace('"""', "'''"), "=" * len(title), "", rest.strip().replace('"""', "'''"),
              "", note, '"""']
    # sphinx-gallery runs the code without __file__; an experiment may locate the repository from it.
    # The lines between these markers run but are shown nowhere (page, script, notebook).
    out, i = ["# sphinx_gallery_start_ignore", f"__file__ = {str(EXPERIMENTS / (name + '.py'))!r}",
              "# sphinx_gallery_end_ignore"], 0
    while i < len(body_lines):
        line = body_lines[i]
        if re.match(r"^# %% \[markdown\]", line):
            cell = []
            i += 1
            while i < len(body_lines) and body_lines[i].startswith("#") and not body_lines[i].startswith("# %%"):
                cell.append(body_lines[i][2:] if body_lines[i].startswith("# ") else body_lines[i][1:])
                i += 1
            out.append("# %%")
            out += [("# " + text).rstrip() for text in md_to_rst(cell)]
            continue
        out.append(line)
        i += 1
    return "\n".join(header + out) + "\n", reason


def write_if_changed(path, text):
    """Write ``text`` unless the file already holds it (keeps sphinx-gallery's cache valid)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def generate_gallery():
    """Write _gallery_src/; returns the names that run during the build."""
    GALLERY_SRC.mkdir(exist_ok=True)
    names = experiment_names()
    for stale in GALLERY_SRC.glob("*.py"):
        if stale.stem not in names:
            stale.unlink()
    runs = []
    for name in names:
        text, reason = gallery_script(name)
        write_if_changed(GALLERY_SRC / f"{name}.py", text)
        if reason is None:
            runs.append(name)
    write_if_changed(GALLERY_SRC / "README.rst", GALLERY_HEADER)
    return runs


GALLERY_HEADER = """Gallery: walk-throughs and studies
==================================

Every file of the repository's ``experiments/`` folder, with its printed output and its figures. The
walk-throughs (``tutorial_dense``, ``walkthrough_*``) are meant to be read from top to bottom; the studies
regenerate the figures and tables of the README. Each page can be downloaded as a ``.py`` script or a
Jupyter notebook (links at the bottom of each page). Run either from the root of the repository (the
scripts import ``experiments._common``): ``python -m experiments NAME`` runs one, ``python -m experiments``
lists them.

The pages were built in quick mode, so their numbers and figures come from short runs; the README's
results and the figures on the home page come from the full runs (``make experiments``).
"""


def public_modules(package="numpy_moe"):
    """Every public module and subpackage of ``package``, sorted (names with a leading ``_`` are private)."""
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def first_line(module_name):
    """First line of a module's docstring, read from its source without importing it; a final "::" (the
    line introduces a code example) becomes ":", since the index shows the line without its example."""
    spec = importlib.util.find_spec(module_name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return ""
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text(encoding="utf-8"))) or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    return line[:-1] if line.endswith("::") else line


def exported_names():
    """A table of the names ``numpy_moe`` exports, each linked to the page of the module defining it."""
    import numpy_moe

    rows = []
    for name in numpy_moe.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(numpy_moe, name)
        if isinstance(obj, type(numpy_moe)):
            rows.append(f"   * - ``nm.{name}``\n     - :doc:`{obj.__name__}`")
        else:
            role = "class" if isinstance(obj, type) else "func"
            rows.append(f"   * - ``nm.{name}``\n     - :{role}:`{obj.__module__}.{obj.__qualname__}`")
    return ("Exported names (``import numpy_moe as nm``)\n"
            "-------------------------------------------\n\n.. list-table::\n   :widths: 30 70\n\n"
            + "\n".join(rows) + "\n")


def generate_api():
    """Write api/index.rst and one api/<module>.rst per public module; returns the module names."""
    API.mkdir(exist_ok=True)
    modules = public_modules()
    for stale in API.glob("*.rst"):
        if stale.stem != "index" and stale.stem not in modules:
            stale.unlink()
    for name in modules:
        is_package = importlib.util.find_spec(name).submodule_search_locations is not None
        # what a module re-exports (a package's __init__, a compatibility shim) is documented once, where
        # it is defined
        members = "   :members:\n   :ignore-module-all:\n" + ("" if is_package else "   :show-inheritance:\n")
        title = f"``{name}``"
        extra = exported_names() if name == "numpy_moe" else ""
        write_if_changed(API / f"{name}.rst",
                         f"{title}\n{'=' * len(title)}\n\n.. automodule:: {name}\n{members}\n{extra}")
    rows = "\n".join(f"   * - :doc:`{name}`\n     - {first_line(name) or ' '}" for name in modules)
    toc = "\n".join(f"   {name}" for name in modules)
    write_if_changed(API / "index.rst", f"""API reference
=============

Generated from the docstrings of every public module of ``numpy_moe`` (shapes in the docstrings, the
mathematics in their ``Notes`` and in :doc:`../MATH`). Start with :doc:`numpy_moe` (the names the package
exports), :doc:`numpy_moe.moe` (the layer) and :doc:`numpy_moe.estimators`.

.. list-table::
   :header-rows: 1
   :widths: 30 70

   * - module
     - what it holds
{rows}

.. toctree::
   :hidden:

{toc}
""")
    return modules


def generate_index():
    """docs/index.md: the README, its links pointed at the site, then the table of contents."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    names = set(experiment_names())
    text = re.sub(r"\]\(docs/(\w+\.md)", r"](\1", text)  # docs/MATH.md, docs/OTHER.md -> their pages
    text = re.sub(r"\]\(plots/", "](../plots/", text)
    text = re.sub(r"!\[([^\]]*)\]\(\.\./plots/", r"![\1](../plots/", text)

    def link(match):
        name = match.group(1)
        return f"[`python -m experiments {name}`](gallery/{name}.rst)" if name in names else match.group(0)

    text = re.sub(r"`python -m experiments (\w+)`", link, text)
    title, _, rest = text.partition("\n")
    banner = ("\n```{note}\nThis site is built from the repository by `make docs`: the README below (the "
              "teaching path), the [gallery](gallery/index.rst) of every walk-through and study with its "
              "figures and downloadable scripts and notebooks, [the mathematics](MATH.md), and the "
              "[API reference](api/index.rst). It opens from disk, without a server.\n```\n")
    others = sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in ("index", "MATH"))  # any other page
    toc = ("\n\n```{toctree}\n:hidden:\n:maxdepth: 2\n\nThe teaching path (gallery) <gallery/index>\n"
           "The mathematics <MATH>\n" + "".join(f"{name}\n" for name in others) + "API reference <api/index>\n```\n")
    write_if_changed(DOCS / "index.md", title + "\n" + banner + rest + toc)


def generate():
    """Write every generated source; returns the experiments that run during the build."""
    generate_index()
    generate_api()
    return generate_gallery()
