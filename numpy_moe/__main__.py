"""``python -m numpy_moe``: the version, the array backend, and where the docs and the experiments are."""
import argparse
import sys
from pathlib import Path

import numpy_moe


def where():
    """{"package", "repository", "experiments", "docs_html", "math"}: paths, None where absent.

    The experiments, the docs and MATH.md live in the source repository beside the package (an editable
    install or a clone); an install from a wheel has the package alone.
    """
    package = Path(numpy_moe.__file__).resolve().parent
    root = package.parent
    found = {"package": package, "repository": None, "experiments": None, "docs_html": None, "math": None}
    if (root / "experiments" / "__main__.py").is_file():
        found["repository"] = root
        found["experiments"] = root / "experiments"
    for key, path in (("docs_html", root / "docs" / "_build" / "html" / "index.html"),
                      ("math", root / "docs" / "MATH.md")):
        if path.is_file():
            found[key] = path
    return found


def report():
    """The text ``python -m numpy_moe`` prints."""
    from importlib.metadata import version

    from numpy_moe.backend import get_backend

    paths = where()
    lines = [f"numpy_moe {numpy_moe.__version__} (Python {sys.version.split()[0]}, NumPy {version('numpy')})",
             f"package:     {paths['package']}",
             f"backend:     {get_backend()} (set NUMPY_MOE_BACKEND=cupy or numpy_moe.set_backend('cupy') "
             "for the GPU)"]
    if paths["repository"] is None:
        lines += ["experiments: not installed with the package; they are in the experiments/ folder of the "
                  "source repository (clone it, then run python -m experiments from its root)",
                  "docs:        build them from the source repository with make docs"]
    else:
        root = paths["repository"]
        lines.append(f"experiments: {paths['experiments']}")
        lines.append(f"             run them from the repository root: cd {root} && python -m experiments "
                     "(lists them; NAME runs one, all runs every one)")
        if paths["docs_html"] is not None:
            lines.append(f"docs:        {paths['docs_html'].as_uri()} (open it in a browser; no server needed)")
        else:
            lines.append(f"docs:        not built yet: cd {root} && make docs, then open "
                         f"{(root / 'docs' / '_build' / 'html' / 'index.html').as_uri()}")
        if paths["math"] is not None:
            lines.append(f"math:        {paths['math']} (every formula and gradient)")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m numpy_moe", description="Print numpy_moe's version, the array backend, and where the "
        "experiments and the documentation are. Takes no arguments: the experiments run with python -m "
        "experiments (from the repository's root), the conformance fixtures with python -m numpy_moe.conformance.")
    parser.parse_args(argv)  # --help, or exit status 2 naming an argument it does not take
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
