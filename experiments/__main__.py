"""``python -m experiments``: list the experiments; ``NAME [args]``: run one; ``all``: run every one.

Run it from the root of the repository: ``experiments/`` is a folder there, not part of the installed
package (``python -m numpy_moe`` prints where it is).
"""
import ast
import runpy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def discover():
    """Names of the experiments: every public module of this folder, sorted."""
    return sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))


def describe(name):
    """First line of the experiment's docstring, read without running it."""
    doc = ast.get_docstring(ast.parse((HERE / f"{name}.py").read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def run(name, argv=()):
    """Run experiment ``name`` as a script with command-line arguments ``argv``."""
    saved = sys.argv
    sys.modules.pop(f"experiments.{name}", None)  # run fresh even if a test imported it
    sys.argv = [str(HERE / f"{name}.py"), *argv]
    try:
        runpy.run_module(f"experiments.{name}", run_name="__main__", alter_sys=True)
    finally:
        sys.argv = saved


def options(name):
    """The experiment's own options beyond --quick and --out: [(flags, help)], read from its
    ``parser.add_argument(...)`` calls without running it."""
    found = []
    for node in ast.walk(ast.parse((HERE / f"{name}.py").read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                and node.args and all(isinstance(a, ast.Constant) for a in node.args)):
            flags = ", ".join(a.value for a in node.args)
            helps = [k.value.value for k in node.keywords if k.arg == "help" and isinstance(k.value, ast.Constant)]
            found.append((flags, helps[0] if helps else ""))
    return found


def usage(names):
    """The runner's help: the commands, the shared options, and every experiment with its own options."""
    lines = ["usage: python -m experiments                  list the experiments (this text)",
             "       python -m experiments NAME [options]   run one; NAME --help shows its options",
             "       python -m experiments all [--quick]    run every one in turn (make experiments)",
             "",
             "Run from the root of the repository (the folder holding experiments/ and plots/).",
             "Options every experiment takes (and all passes on to each):",
             "  --quick      a small, fast run (the tests and the docs use it); its figures go to",
             "               plots/quick/ (git-ignored), never over the committed ones in plots/",
             "  --out DIR    write the figures to DIR instead",
             "",
             "experiments (and their own options):"]
    for name in names:
        lines.append(f"  {name:<26} {describe(name)}")
        for flags, text in options(name):
            lines.append(f"  {'':<28}{flags:<18} {text}")
    return "\n".join(lines)


def main(argv):
    names = discover()
    if not argv or argv[0] in ("-h", "--help") or (argv[0] == "all" and ({"-h", "--help"} & set(argv))):
        print(usage(names))
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        t0 = time.perf_counter()
        for i, n in enumerate(names, 1):
            print(f"\n=== [{i}/{len(names)}] {n}: {describe(n)}", flush=True)
            t = time.perf_counter()
            run(n, rest)
            print(f"=== {n} done in {time.perf_counter() - t:.1f} s", flush=True)
        print(f"\nall {len(names)} experiments done in {time.perf_counter() - t0:.1f} s")
        return 0
    if name not in names:
        print(f"unknown experiment {name!r}; choose one of: {', '.join(names)}, all", file=sys.stderr)
        return 2
    run(name, rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
