"""``python -m experiments``: list the experiments; ``NAME [args]``: run one; ``all``: run every one."""
import importlib
import pkgutil
import sys
import time
from pathlib import Path


def discover():
    """Experiment name -> module name, for every public module of this package, sorted."""
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def describe(name):
    doc = importlib.import_module(f"experiments.{name}").__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def main(argv):
    names = discover()
    if not argv:
        print("usage: python -m experiments NAME [--quick] [--out DIR] | all [--quick]\n")
        for name in names:
            print(f"  {name:<22} {describe(name)}")
        return 0
    name, rest = argv[0], argv[1:]
    if name == "all":
        t0 = time.perf_counter()
        for i, n in enumerate(names, 1):
            print(f"\n=== [{i}/{len(names)}] {n}: {describe(n)}", flush=True)
            t = time.perf_counter()
            importlib.import_module(f"experiments.{n}").main(rest)
            print(f"=== {n} done in {time.perf_counter() - t:.1f} s", flush=True)
        print(f"\nall {len(names)} experiments done in {time.perf_counter() - t0:.1f} s")
        return 0
    if name not in names:
        print(f"unknown experiment {name!r}; choose one of: {', '.join(names)}, all", file=sys.stderr)
        return 2
    importlib.import_module(f"experiments.{name}").main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
