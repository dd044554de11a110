"""What README.md, docs/MATH.md and docs/FRAMEWORKS.md name exists in the code and means what they say.

Every backticked span of the three files is sorted by its form: a repository path (and a test's node id), a
``python -m experiments NAME --flag`` command, an environment variable, a call of a numpy_moe name with
keywords, a dotted numpy_moe name. Each form is checked against the code; spans that name other projects'
code (transformers, DeepSpeed, ...) or mathematics resolve to nothing of numpy_moe's and are left alone.
Also: the python blocks of docs/*.md run (the README's run in tests/test_readme.py), the README's Layout
lists every module of the package, its timing table every experiment, a numpydoc Parameters section names
exactly the parameters of its signature, and the MoE docstring's build recipes run. About 10 s.
"""
import importlib
import inspect
import os
import pkgutil
import re
from functools import lru_cache
from pathlib import Path

import pytest

import numpy_moe

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "MATH.md", ROOT / "docs" / "FRAMEWORKS.md"]
REPO_PATH = re.compile(r"^(?:tests|numpy_moe|experiments|docs|tools|plots)/[\w/.\-]+(?:::\w+)?$")
BUILT = ("docs/_build", "plots/quick")  # made by make docs / a --quick run, not committed
OTHER_PROJECTS = {"tests/unit/moe/test_moe.py"}  # DeepSpeed's golden test (FRAMEWORKS.md §5)


def spans():
    """[(file name, backticked text)] outside code blocks, in order."""
    out = []
    for path in DOCS:
        text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
        out += [(path.name, m.group(1).strip()) for m in re.finditer(r"`([^`\n]+)`", text)]
    return out


@lru_cache(maxsize=None)
def public_names():
    """{name: [objects]}: every module of numpy_moe by its last component, and every class, function and
    submodule each module defines or imports from numpy_moe."""
    index = {}
    modules = {"numpy_moe": numpy_moe}
    for info in pkgutil.walk_packages(numpy_moe.__path__, "numpy_moe."):
        if not info.name.endswith("__main__"):
            modules[info.name] = importlib.import_module(info.name)
    for name, module in modules.items():
        index.setdefault(name.rsplit(".", 1)[-1], []).append(module)
        for key, value in vars(module).items():
            if key.startswith("__") or not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            if getattr(value, "__module__", "").startswith("numpy_moe") and all(value is not o for o in
                                                                                 index.get(key, [])):
                index.setdefault(key, []).append(value)
    return index


MISSING = object()


def resolve(dotted):
    """The numpy_moe object ``dotted`` names, None when its first part is not a numpy_moe name, MISSING when it
    is but the rest does not resolve. An attribute a class sets on its instances (``self.name = ...``) counts."""
    first, *rest = dotted.split(".")
    if first in ("nm", "numpy_moe"):
        candidates = [numpy_moe]
    elif first in public_names():
        candidates = public_names()[first]
    else:
        return None
    for obj in candidates:
        try:
            for part in rest:
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            if inspect.isclass(obj) and len(rest) == 1 and re.search(rf"self\.{rest[0]}\b", inspect.getsource(obj)):
                return obj
    return MISSING


def markdown_links():
    """[(file name, target)] of every relative Markdown link and image of the three files."""
    out = []
    for path in DOCS:
        for m in re.finditer(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
            if not re.match(r"\w+:", m.group(1)):
                out.append((path, m.group(1)))
    return out


def test_every_repository_path_and_test_the_docs_name_exists():
    checked, missing = 0, []
    for where, span in spans():
        if not REPO_PATH.match(span) or span.startswith(BUILT) or span in OTHER_PROJECTS:
            continue
        checked += 1
        path, _, test = span.partition("::")
        if not (ROOT / path).exists():
            missing.append(f"{where}: {span}")
        elif test and not re.search(rf"^def {test}\(", (ROOT / path).read_text(encoding="utf-8"), flags=re.M):
            missing.append(f"{where}: {span} (no such test)")
    for path, target in markdown_links():
        checked += 1
        if not (path.parent / target).exists():
            missing.append(f"{path.name}: link {target}")
    assert checked > 40 and not missing, "\n".join(missing)


def test_a_missing_path_is_reported():
    assert REPO_PATH.match("tests/test_nothing.py::test_x") and not (ROOT / "tests/test_nothing.py").exists()
    assert not REPO_PATH.match("models/mixtral/modeling_mixtral.py")  # transformers' path, not ours


def experiment_options(name):
    """The command-line flags an experiment takes: its own add_argument calls and _common.parse_args's."""
    sources = (ROOT / "experiments" / f"{name}.py").read_text() + (ROOT / "experiments" / "_common.py").read_text()
    return set(re.findall(r"""add_argument\(\s*["'](--[\w-]+)""", sources))


def test_every_experiment_command_names_an_experiment_and_options_it_takes():
    experiments = {p.stem for p in (ROOT / "experiments").glob("*.py") if not p.stem.startswith("_")}
    commands, wrong = 0, []
    for where, span in spans():
        m = re.search(r"python -m experiments (\w+)(.*)$", span)
        if not m or m.group(1) in ("NAME", "all"):
            continue
        commands += 1
        name, rest = m.groups()
        if name not in experiments:
            wrong.append(f"{where}: {span}: no experiment {name}")
            continue
        wrong += [f"{where}: {span}: {name} has no {flag}" for flag in re.findall(r"--[\w-]+", rest)
                  if flag not in experiment_options(name)]
    # a flag named on its own (`--cifar DIR`) must belong to some experiment
    every_flag = set().union({"--help"}, *(experiment_options(n) for n in experiments))
    wrong += [f"{where}: {span}" for where, span in spans()
              if re.match(r"^--[\w-]+", span) and span.split()[0] not in every_flag]
    assert commands >= len(experiments) and not wrong, "\n".join(wrong)


def test_every_environment_variable_of_numpy_moe_the_docs_name_is_read_by_the_code():
    code = "\n".join(p.read_text(encoding="utf-8") for folder in ("numpy_moe", "experiments", "docs")
                     for p in (ROOT / folder).rglob("*.py"))
    named = {v for _, span in spans() for v in re.findall(r"\bNUMPY_MOE_\w+", span)}
    assert named and not {v for v in named if not re.search(rf"\b{v}\b", code)}


def test_every_numpy_moe_call_in_the_docs_takes_the_keywords_it_is_shown_with():
    checked, wrong = 0, []
    for where, span in spans():
        m = re.match(r"^([A-Za-z_][\w.]*)\((.*)\)$", span)
        if not m or not (m.group(1)[0].isupper() or "." in m.group(1)):
            continue  # a bare lowercase call is mathematics or another project's (softmax(..., dtype=...))
        obj = resolve(m.group(1))
        if obj is None:
            continue  # another project's function, or mathematics
        if obj is MISSING:
            wrong.append(f"{where}: {span}: {m.group(1)} is not a numpy_moe name")
            continue
        signature = inspect.signature(obj)
        if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            continue
        for keyword in re.findall(r"(?<![\w=<>!])([a-z_]\w*)\s*=(?!=)", m.group(2)):
            checked += 1
            if keyword not in signature.parameters:
                wrong.append(f"{where}: {span}: {m.group(1)}{signature} has no parameter {keyword}")
    assert checked > 30 and not wrong, "\n".join(wrong)


def test_every_dotted_numpy_moe_name_in_the_docs_resolves():
    checked, wrong = 0, []
    for where, span in spans():
        if re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", span):
            obj = resolve(span)
            checked += obj is not None
            if obj is MISSING:
                wrong.append(f"{where}: {span}")
    assert checked > 20 and not wrong, "\n".join(wrong)


def test_a_stale_name_or_keyword_is_caught():
    assert resolve("ExpertBank.forward_grouped") is not MISSING
    assert resolve("ExpertBank.no_such_method") is MISSING
    assert resolve("SoftMoE.routing") is not MISSING  # set on the instance by forward
    assert resolve("MixtralSparseMoeBlock.forward") is None  # transformers' class: not checked
    assert "no_such_keyword" not in inspect.signature(resolve("ScoreGate")).parameters


def layout():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.search(r"## Layout\n\n```\n(.*?)```", readme, flags=re.S).group(1)


def layout_paths(text):
    """The repository paths the Layout block names: an entry starts a line (a folder ``name/``, a file
    ``name.py``, or a path ``docs/MATH.md``), its indentation giving its folder; the description after it,
    continued on deeper-indented lines, may name more files (``balance/  losses.py: ...; names.py: ...``),
    which belong to the entry's folder or, failing that, to a folder above it (``gates/ ... gating.py``)."""
    paths, stack, folder = set(), [], []
    for line in text.splitlines():
        m = re.match(r"^( *)([\w./]+)", line)
        depth = len(m.group(1)) // 2 if m else 0
        entry = m.group(2) if m else ""
        if m and depth <= len(stack) and (entry.endswith("/") or re.fullmatch(r"[\w./]+\.(py|md)", entry)):
            stack = stack[:depth]
            paths.add("/".join(stack + [entry.rstrip("/")]))
            if entry.endswith("/"):
                stack = stack + [entry.rstrip("/")]
            folder, rest = list(stack), line[m.end():]
        else:
            rest = line
        for name in re.findall(r"(?<![\w/<>])([a-z_]\w*\.py)\b", rest):
            where = next((folder[:i] for i in range(len(folder), -1, -1) if (ROOT.joinpath(*folder[:i], name)).exists()),
                         folder)
            paths.add("/".join(where + [name]))
    return paths


def test_the_readme_layout_lists_every_module_of_the_package_and_only_existing_files():
    named = layout_paths(layout())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "numpy_moe").rglob("*.py")}
    unlisted = sorted(m for m in modules if m not in named and not m.endswith("/__main__.py")
                      and not (m.endswith("/__init__.py") and m.rsplit("/", 1)[0] in named))
    assert not unlisted, f"modules missing from the README's Layout: {unlisted}"
    absent = sorted(p for p in named if not (ROOT / p).exists())
    assert not absent, f"the README's Layout names what does not exist: {absent}"


def test_the_layout_parser_sees_nested_and_inline_entries():
    text = ("pkg/\n  a.py      x\n  sub/      one.py: y;\n            two.py: z\n    deep.py  w\n  b.py  v\n"
            "top.md  t\ndocs/MATH.md  m\n")
    assert layout_paths(text) == {"pkg", "pkg/a.py", "pkg/sub", "pkg/sub/one.py", "pkg/sub/two.py",
                                  "pkg/sub/deep.py", "pkg/b.py", "top.md", "docs/MATH.md"}


def test_the_readmes_timing_table_has_a_row_for_every_experiment():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = re.search(r"\| experiment \| full run \|.*?\n\n", readme, flags=re.S).group(0)
    rows = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    assert rows == {p.stem for p in (ROOT / "experiments").glob("*.py") if not p.stem.startswith("_")}


def numpydoc_parameters(doc):
    """The names a numpydoc ``Parameters`` section documents (``name : ...`` at a line's start or after the
    end of the previous entry on the same line), up to the next section or a ``Shapes:`` line."""
    doc = inspect.cleandoc(doc)
    m = re.search(r"^Parameters\n-{3,}\n(.*?)(?=^\w[\w ]*\n-{3,}\n|\Z)", doc, flags=re.S | re.M)
    if not m:
        return None
    section = re.split(r"\n\s*(?:Shapes|Children|Parameters|Buffers)\b[^\n]*:", m.group(1))[0]
    names = []
    for entry in re.finditer(r"(?:^|(?<=\. )|(?<=; ))\s*(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*:\s", section, flags=re.M):
        names += [n.lstrip("*") for n in re.split(r"\s*,\s*", entry.group(1))]
    return [n for n in names if n not in ("True", "False", "None")]


def documented_callables():
    """(qualified name, function whose signature counts, docstring) of every public class and function."""
    seen = set()
    for module in {m for objs in public_names().values() for m in objs if inspect.ismodule(m)}:
        for key, value in vars(module).items():
            if key.startswith("_") or getattr(value, "__module__", None) != module.__name__ or id(value) in seen:
                continue
            seen.add(id(value))
            if inspect.isfunction(value):
                yield f"{module.__name__}.{key}", value, value.__doc__
            elif inspect.isclass(value):
                init = value.__dict__.get("__init__")
                if init is not None:
                    doc = value.__doc__ if "Parameters\n" in (value.__doc__ or "") else init.__doc__
                    yield f"{module.__name__}.{key}", init, doc
                for attr, func in value.__dict__.items():
                    if not attr.startswith("_") and inspect.isfunction(func):
                        yield f"{module.__name__}.{key}.{attr}", func, func.__doc__


def test_a_numpydoc_parameters_section_names_every_parameter_of_the_signature_and_no_other():
    compared, wrong = 0, []
    for name, func, doc in documented_callables():
        documented = numpydoc_parameters(doc or "")
        if documented is None:
            continue
        compared += 1
        parameters = {p: v for p, v in inspect.signature(func).parameters.items() if p not in ("self", "cls")}
        wrong += [f"{name}: documents {d}, which is not a parameter" for d in documented if d not in parameters]
        wrong += [f"{name}: parameter {p} is not documented" for p, v in parameters.items()
                  if p not in documented and v.kind not in (v.VAR_POSITIONAL, v.VAR_KEYWORD)]
    assert compared > 50 and not wrong, "\n".join(wrong)


def test_the_parameters_parser_reads_one_line_entries():
    doc = """Summary.

    Parameters
    ----------
    x : (N, D). top_k : K; seed : int.
    old_name, dtype : gone.

    Shapes: x (N, D) -> y (N, O).

    Returns
    -------
    y : (N, O).
    """
    assert numpydoc_parameters(doc) == ["x", "top_k", "seed", "old_name", "dtype"]


@pytest.mark.parametrize("path", sorted((ROOT / "docs").glob("*.md")), ids=lambda p: p.name)
def test_every_python_block_of_a_docs_page_runs(path, tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.S)
    monkeypatch.chdir(tmp_path)
    for i, block in enumerate(blocks, 1):
        exec(compile(block, f"{path.name} python block {i}", "exec"), {"__name__": "__docs__"})
    assert not os.listdir(tmp_path), f"a python block of {path.name} leaves files in the folder it runs in"


def test_every_recipe_of_the_moe_docstring_builds_a_layer_that_runs_forward_and_backward():
    # numpy_moe.moe's docstring shows how to build each variant, with D, O, E, H, V as placeholders and
    # "..." for what the reader fills in (experts=..., MoE(..., balance=...))
    import numpy as np

    from numpy_moe import balance, gates, moe
    from numpy_moe.experts import ExpertBank, SharedExpert

    recipes = []
    for block in re.findall(r"::\n\n(.*?)\n\n(?! )", moe.__doc__, flags=re.S):
        code = re.sub(r"#[^\n]*", "", block)
        recipes += [" ".join(part.split()) for part in re.split(r"\n(?= *MoE\()", code) if part.strip()]
    names = dict(vars(gates), **vars(balance), MoE=moe.MoE, ExpertBank=ExpertBank, SharedExpert=SharedExpert,
                 D=6, O=6, E=4, H=5, V=10)
    x = np.random.default_rng(0).standard_normal((16, 6))
    for recipe in recipes:
        code = recipe.replace("experts=...", "experts=ExpertBank(E, D, D, H)").replace("MoE(...,", "MoE(D, O, E, top_k=2,")
        layer = eval(code, names)
        keys = {"keys": np.arange(16) % 10} if isinstance(layer.gate, gates.HashGate) else {}
        y = layer.forward(x, **keys)
        assert y.shape == (16, 6), recipe
        assert layer.backward(np.ones_like(y)).shape == x.shape, recipe
    assert len(recipes) >= 14
