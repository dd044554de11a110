"""What every experiment shares: its command line (``--quick``, ``--out``), figure saving, progress lines.

Each experiment module in this folder has a docstring whose first line describes it and runs as a
script (``python -m experiments NAME`` runs it as ``__main__`` with ``sys.argv`` set); a study keeps its
work in ``main(argv=None)``, a walk-through keeps it in module-level ``# %%`` cells. ``--quick`` shrinks
the run so the test suite and the docs can execute every experiment in seconds; ``--out`` sends figures
elsewhere than ``plots/`` (the tests write to a temporary folder, so a quick run never overwrites the
committed figures).

Every experiment file starts (before it imports ``experiments`` or ``numpy_moe``) with the same two lines
that put the repository's root first on ``sys.path`` (``_here = ...`` and ``sys.path.insert(...)``; copy
them from any experiment), so that ``python experiments/NAME.py`` and a kernel started in ``experiments/``
work as well as ``python -m experiments NAME``; tests/test_walkthroughs.py checks it.

Progress: a study that runs for more than a few seconds reports what it is doing at least every few
seconds, with the time spent and an estimate of the time left. Count the work in steps (usually
epochs, summed over every model the study trains), make one :class:`Progress` for the whole study and
call it once per step; with ``numpy_moe.train.fit``, pass ``callback=progress.fit_callback()``::

    progress = Progress(total=len(RUNS) * len(SEEDS) * EPOCHS, what="balance")
    for ...:
        fit(model, X, y, epochs=EPOCHS, callback=progress.fit_callback(f"{name}, seed {seed}"))
    progress.done()

prints, at most every ``every`` seconds (2 by default) and always for the first and the last step::

    [balance] 120/600 (20%) (c) importance + load, seed 1: epoch 12, loss 0.4130 | 9 s elapsed, ~36 s left
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

PLOTS = Path(__file__).resolve().parent.parent / "plots"


def _caller_name(depth=2):
    """Stem of the file that called parse_args (experiments/NAME.py, or a copy of it the docs run)."""
    path = sys._getframe(depth).f_globals.get("__file__")
    return Path(path).stem if path else None


FONT_SIZE = 12  # base font of every figure: readable at the README's width (about 900 px)


def use_style():
    """The house style of every figure: base font 12 pt (titles 13, legends and ticks 11).

    Colours: experts take ``numpy_moe.plotting.EXPERT_COLORS`` in every figure, classes take
    ``numpy_moe.plotting.CLASS_COLORS`` (a different palette, so an expert is never mistaken for a class).
    """
    import matplotlib

    matplotlib.rcParams.update({"font.size": FONT_SIZE, "axes.titlesize": FONT_SIZE + 1,
                                "axes.labelsize": FONT_SIZE, "legend.fontsize": FONT_SIZE - 1,
                                "xtick.labelsize": FONT_SIZE - 1, "ytick.labelsize": FONT_SIZE - 1,
                                "figure.titlesize": FONT_SIZE + 2})


def positive_int(text):
    """argparse type of a count (rounds, repeats, threads, seeds, epochs): an integer of at least 1.

    A plain ``type=int`` let 0 through, which the studies then read as "the default" or as "no limit",
    and a negative count failed deep inside a study; this refuses both at the command line.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def out_folder(text):
    """argparse type of ``--out``: a folder path, not empty (an empty one meant the current directory)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path is not a folder; give the folder for the figures")
    return Path(text)


def _run_as_script(name):
    """True when ``sys.argv[0]`` is the experiment's own file (``python -m experiments NAME``, ``python
    experiments/NAME.py``, the docs' gallery): its arguments are then the user's, not a cell runner's."""
    return bool(name) and bool(sys.argv) and bool(sys.argv[0]) and Path(sys.argv[0]).stem == name


def parse_args(argv, doc, extra=None, notebook=False, name=None):
    """Parse ``--quick`` and ``--out`` (plus whatever ``extra(parser)`` adds) from ``argv``.

    ``argv=None`` reads ``sys.argv[1:]``, except inside a Jupyter kernel (the downloadable notebooks of
    the docs), whose own arguments are ignored. ``notebook=True`` ignores arguments it does not know
    when the file runs cell by cell in an editor's console (whose ``sys.argv`` is the console's own);
    run as a script, a walk-through refuses them like every study (a mistyped ``--qiuck`` used to run
    the full walk-through and overwrite its committed figure). A bad ``--out`` (empty, or a path that
    is a file or cannot be created) is refused at the command line too (exit status 2). Without ``--out``
    the figures go to plots/, or with ``--quick`` to plots/quick/ (git-ignored): a small run used to
    replace the committed full-run figures.
    The usage line names the command to type, ``python -m experiments NAME``.
    """
    in_kernel = "ipykernel" in sys.modules
    if argv is None:
        argv = [] if in_kernel else sys.argv[1:]
    name = name or _caller_name()
    lines = (doc or "").strip().splitlines()
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments {name}" if name and not in_kernel else None,
        description=lines[0] if lines else None,
        epilog="Run from the root of the repository: experiments/ is a folder of it, not part of the "
               "installed package.")
    parser.add_argument("--quick", action="store_true", help="a small, fast run (used by the tests and the docs)")
    parser.add_argument("--out", type=out_folder, default=None,
                        help="folder for figures (default: plots/, or plots/quick/ with --quick, which git ignores, so "
                             "that a small run never replaces the committed figures of the full runs)")
    if extra is not None:
        extra(parser)
    tolerant = in_kernel or (notebook and not _run_as_script(name))
    args = parser.parse_known_args(argv)[0] if tolerant else parser.parse_args(argv)
    if args.out is None:
        args.out = PLOTS / "quick" if args.quick else PLOTS
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"argument --out: cannot use {str(args.out)!r} as the folder for the figures: "
                     f"{error.strerror or error}")
    use_style()
    return args


def savefig(fig, args, name):
    """Save ``fig`` as ``args.out/name`` and close it; returns the path.

    The figure goes to a hidden file beside it first and then replaces ``name`` in one step
    (``os.replace``), so a failure while writing (a full disk, an interrupt) leaves the previous
    figure whole instead of a truncated PNG.
    """
    import matplotlib.pyplot as plt

    path = args.out / name
    partial = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        fig.savefig(partial, dpi=110, bbox_inches="tight")
        os.replace(partial, path)
    finally:
        plt.close(fig)
        partial.unlink(missing_ok=True)
    print(f"wrote {path}", flush=True)
    return path


def format_seconds(seconds):
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    """Progress lines for a run of ``total`` steps: step, share done, what, elapsed time, time left.

    ``step(detail)`` counts one step and prints a line when ``every`` seconds have passed since the last
    line (and always for the first and the last step). The estimate of the time left assumes the
    remaining steps take as long on average as the ones done. ``clock`` and ``file`` can be replaced
    (the tests do).
    """

    def __init__(self, total, what="", every=2.0, file=None, clock=time.perf_counter):
        if total < 1:
            raise ValueError(f"total={total!r} must be a positive number of steps")
        self.total, self.what, self.every = int(total), what, every
        self.file, self.clock = file, clock
        self.count = 0
        self.start = clock()
        self.last = None

    def line(self, detail=""):
        """The progress line after the current count of steps."""
        elapsed = self.clock() - self.start
        left = elapsed / self.count * (self.total - self.count) if self.count else float("nan")
        head = f"[{self.what}] " if self.what else ""
        eta = "done" if self.count >= self.total else f"~{format_seconds(left)} left"
        detail = f" {detail}" if detail else ""
        return (f"{head}{self.count}/{self.total} ({100 * self.count / self.total:.0f}%){detail} | "
                f"{format_seconds(elapsed)} elapsed, {eta}")

    def step(self, detail="", n=1):
        """Count ``n`` steps; print the progress line if it is due. Returns True when it printed."""
        self.count = min(self.total, self.count + n)
        now = self.clock()
        due = self.last is None or now - self.last >= self.every or self.count == self.total
        if due:
            self.last = now
            print(self.line(detail), file=self.file or sys.stdout, flush=True)
        return due

    def fit_callback(self, label="", then=None):
        """A ``callback(epoch, model, history)`` for ``numpy_moe.train.fit``: one step per epoch, the
        line shows ``label``, the epoch and its training loss; ``then`` (same signature) runs after."""
        def callback(epoch, model, history):
            if isinstance(history, dict):  # numpy_moe.classic.fit_local_experts: {"train": [...], ...}
                loss = history["train"][-1] if history.get("train") else float("nan")
            else:
                loss = history.loss[-1] if getattr(history, "loss", None) else float("nan")
            prefix = f"{label}: " if label else ""
            self.step(f"{prefix}epoch {epoch + 1}, loss {loss:.4f}")
            if then is not None:
                then(epoch, model, history)
        return callback

    def done(self):
        """Print the total time (the last line, whatever ``every`` says)."""
        print(f"[{self.what}] finished {self.count} steps in {format_seconds(self.clock() - self.start)}"
              if self.what else f"finished in {format_seconds(self.clock() - self.start)}",
              file=self.file or sys.stdout, flush=True)
