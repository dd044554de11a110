"""What every experiment shares: its command line (``--quick``, ``--out``) and figure saving.

Each experiment module in this folder has a docstring whose first line describes it and runs as a
script (``python -m experiments NAME`` runs it as ``__main__`` with ``sys.argv`` set); a study keeps its
work in ``main(argv=None)``, a walk-through keeps it in module-level ``# %%`` cells. ``--quick`` shrinks the run so the
test suite can execute every experiment in seconds; ``--out`` sends figures elsewhere than ``plots/``
(the tests write to a temporary folder, so a quick run never overwrites the committed figures).
"""
import argparse
import os
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

PLOTS = Path(__file__).resolve().parent.parent / "plots"


def parse_args(argv, doc, extra=None, notebook=False):
    """Parse ``--quick`` and ``--out`` (plus whatever ``extra(parser)`` adds) from ``argv``.

    ``notebook=True`` ignores arguments it does not know (a notebook kernel passes its own).
    """
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast run (used by the tests)")
    parser.add_argument("--out", type=Path, default=PLOTS, help="folder for figures (default: plots/)")
    if extra is not None:
        extra(parser)
    args = parser.parse_known_args(argv)[0] if notebook else parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def savefig(fig, args, name):
    """Save ``fig`` as ``args.out/name`` and close it; returns the path."""
    import matplotlib.pyplot as plt

    path = args.out / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path
