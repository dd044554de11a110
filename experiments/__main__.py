"""``python -m experiments``: list the experiments; ``NAME [args]``: run one; ``all``: run every one."""
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


def main(argv):
    names = discover()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m experiments NAME [--quick] [--out DIR] | all [--quick]\n")
        for name in names:
            print(f"  {name:<26} {describe(name)}")
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
