"""Benchmark rows: post 000's image model, time per training epoch on the 8x8 digits, numpy_moe against PyTorch.

Both sides train the post's classifier (conv 32 - ReLU - maxpool 2 - conv 64 - ReLU - maxpool 2 - top-2
of 4 MLP experts 256 -> 256 -> 256 with the post's balance loss - linear 256 -> 10) on the digits'
training split as ``experiments/images.py`` loads it, in float32, with Adam (lr 1e-3) on batches of 64:

- ours: ``ImageMoEClassifier(..., dtype="float32")`` behind ``Unflatten`` trained by
  ``numpy_moe.train.fit`` (its per-epoch ``History.time``: the shuffle, every batch's forward, loss,
  backward, divergence checks and Adam step), BLAS limited to T threads with threadpoolctl;
- the reference: the post's own PyTorch code (``experiments/_torch_image_model.py``: every expert on every
  sample, as the post does) with ``torch.set_num_threads(T)``, in a subprocess of a Python that has torch,
  fed the same images through a temporary .npz.

Rounds alternate the two (who goes first alternates too); each round trains ``epochs`` epochs on each
side after one untimed warm-up epoch per side at the start, and takes the median epoch of the round. A
row reports the medians over rounds of ours and of torch, and the median and range over rounds of the
per-round ratio ours / torch; the target is a wall-clock ratio <= 1. Beside the wall clock each side
also records the CPU time of its process per epoch (``time.process_time``): on a machine shared with
other work the wall clock also counts the time the scheduler gave to others, the CPU time does not (with
more than one thread it also counts threads spinning while they wait, so it reads best at 1 thread).

Which Python runs torch: the ``torch_python`` argument, else the environment variable
``NUMPY_MOE_TORCH_PYTHON``, else this interpreter if it can import torch. With none, the rows carry
``ref_ms = None`` and ``pass = None``: nothing here needs torch to import or to run.
"""
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from numpy_moe.data_images import load_digits_images
from numpy_moe.image_layers import Unflatten
from numpy_moe.layers import Sequential
from numpy_moe.models import ImageMoEClassifier
from numpy_moe.optim import Adam
from numpy_moe.train import fit, predict
from numpy_moe import functional as F

TORCH_SCRIPT = Path(__file__).resolve().parent / "_torch_image_model.py"
ENV_VAR = "NUMPY_MOE_TORCH_PYTHON"
BATCH_SIZE, HIDDEN, LR = 64, 256, 1e-3
THREADS = (1, 2)


def find_torch_python(torch_python=None):
    """The Python that runs the torch side, or None when there is none (see the module docstring)."""
    if torch_python:
        return str(torch_python)
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    return None


def thread_counts(threads=None):
    """``threads`` as a tuple of thread counts: None -> (1, 2), an int -> (threads,)."""
    if threads is None:
        return THREADS
    if isinstance(threads, int):
        return (threads,)
    return tuple(int(t) for t in threads)


def n_steps(rounds=5, threads=None):
    """How many times :func:`measure` calls ``progress.step``: one per side, round and thread count."""
    return 2 * rounds * len(thread_counts(threads))


def digits(quick=False):
    """The training images (N, 1, 8, 8) float32 and labels (N,) as experiments/images.py loads them."""
    X, _, y, _ = load_digits_images(seed=0, dtype="float32")
    if quick:
        X, y = X[:256], y[:256]
    return np.ascontiguousarray(X, dtype=np.float32), y


class Ours:
    """numpy_moe's side: the model, its optimiser and a shuffling generator kept across rounds."""

    def __init__(self, X, y, threads, seed=0):
        self.threads = threads
        model = ImageMoEClassifier(in_channels=X.shape[1], image_size=X.shape[2], channels=(32, 64), hidden=HIDDEN,
                                   n_classes=10, n_experts=4, top_k=2, balance="seed000", seed=seed,
                                   dtype="float32")
        self.net = Sequential(Unflatten(X.shape[1:]), model)
        self.X, self.y = X.reshape(len(X), -1), y
        self.optimizer = Adam(LR)
        self.rng = np.random.default_rng(seed)
        with threadpool_limits(limits=threads, user_api="blas"):
            self.reference = float(F.cross_entropy(predict(self.net, self.X), self.y))

    def run(self, epochs):
        """Train ``epochs`` epochs; returns (seconds per epoch, CPU seconds per epoch, last epoch's loss)."""
        clock = [time.process_time()]
        with threadpool_limits(limits=self.threads, user_api="blas"):
            history = fit(self.net, self.X, self.y, optimizer=self.optimizer, epochs=epochs, batch_size=BATCH_SIZE,
                          seed=self.rng, reference_loss=self.reference,
                          callback=lambda *_: clock.append(time.process_time()))
        return history.time, [b - a for a, b in zip(clock, clock[1:])], history.loss[-1]


class Torch:
    """The post's PyTorch code in a subprocess (experiments/_torch_image_model.py), driven by JSON lines."""

    def __init__(self, python, data_path, threads, seed=0):
        config = dict(threads=threads, seed=seed, hidden=HIDDEN, batch_size=BATCH_SIZE, lr=LR)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.log = Path(data_path).with_name(f"torch_{threads}_threads.log")  # stderr: a file never fills up
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([python, str(TORCH_SCRIPT), str(data_path), json.dumps(config)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         env=env)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise RuntimeError(f"the torch worker ({TORCH_SCRIPT.name}) exited with status {self.proc.returncode}:\n"
                               f"{self.log.read_text()[-2000:]}")
        return json.loads(line)

    def run(self, epochs):
        self.proc.stdin.write(json.dumps({"epochs": epochs}) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        return answer["times"], answer["cpu"], answer["loss"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _row(threads, wall, cpu, losses):
    """One result row from the per-round medians ``wall[side]`` and ``cpu[side]`` (seconds)."""
    name = f"post 000 image model, digits, batch {BATCH_SIZE}, {threads} thread{'s' if threads > 1 else ''}"
    row = dict(name=name, threads=threads, rounds=len(wall["numpy_moe"]), target=1.0,
               ours_loss=losses.get("numpy_moe"), ref_loss=losses.get("torch"), **{"pass": None})
    for prefix, times in (("", wall), ("cpu_", cpu)):
        row[f"{prefix}ours_ms"] = 1e3 * statistics.median(times["numpy_moe"])
        row.update({f"{prefix}{key}": None for key in ("ref_ms", "ratio_median", "ratio_min", "ratio_max")})
        if "torch" in times:
            ratios = [o / r for o, r in zip(times["numpy_moe"], times["torch"])]
            row.update({f"{prefix}ref_ms": 1e3 * statistics.median(times["torch"]),
                        f"{prefix}ratio_median": statistics.median(ratios),
                        f"{prefix}ratio_min": min(ratios), f"{prefix}ratio_max": max(ratios)})
    if row["ref_ms"] is not None:
        row["pass"] = bool(row["ratio_median"] <= row["target"])
    return row


def measure(rounds=5, quick=False, threads=None, progress=None, torch_python=None):
    """Time an epoch of post 000's image model in numpy_moe and in PyTorch, side by side.

    Parameters
    ----------
    rounds : rounds per thread count (each trains both sides). quick : 256 images, one epoch per round.
    threads : None (1 and 2), an int or a sequence of ints: BLAS threads for ours, intra-op threads for torch.
    progress : an ``experiments._common.Progress`` of :func:`n_steps` steps, or None.
    torch_python : the Python that has torch (default: see :func:`find_torch_python`).

    Returns
    -------
    list of dict, one per thread count: name, threads, rounds, ours_ms and ref_ms (wall clock, medians over
    rounds of the median epoch of each round, ms), ratio_median / ratio_min / ratio_max (ours / torch per
    round), the same six with the prefix ``cpu_`` for the CPU time of each process, target (1.0), pass
    (ratio_median <= target; None without torch), ours_loss and ref_loss (the last epoch's mean training
    loss, a check that both sides learn). Without torch every ``ref``/``ratio`` entry is None.
    """
    rounds = int(rounds)
    if rounds < 1:
        raise ValueError(f"rounds={rounds!r} must be >= 1")
    epochs = 1 if quick else 3
    python = find_torch_python(torch_python)
    X, y = digits(quick)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_path = Path(tmp) / "digits.npz"
        np.savez(data_path, X=X, y=y)
        for T in thread_counts(threads):
            ours = Ours(X, y, T)
            ref = Torch(python, data_path, T) if python else None
            try:
                sides = [("numpy_moe", ours)] + ([("torch", ref)] if ref else [])
                for _, side in sides:
                    side.run(1)  # warm-up epoch, untimed
                wall, cpu = ({name: [] for name, _ in sides} for _ in range(2))
                losses = {}
                for r in range(rounds):
                    for name, side in (sides if r % 2 == 0 else sides[::-1]):
                        t, c, losses[name] = side.run(epochs)
                        wall[name].append(statistics.median(t))
                        cpu[name].append(statistics.median(c))
                        if progress is not None:
                            progress.step(f"{T} thread{'s' if T > 1 else ''}, round {r + 1}, {name}: "
                                          f"{1e3 * wall[name][-1]:.0f} ms per epoch")
                    if progress is not None and ref is None:
                        progress.step(f"{T} thread{'s' if T > 1 else ''}, round {r + 1}: no torch")
            finally:
                if ref is not None:
                    ref.close()
            rows.append(_row(T, wall, cpu, losses))
    return rows


def format_rows(rows):
    """The rows as a small text table: wall clock (the target) and CPU time per epoch."""
    head = (f"{'configuration':<49} | {'ours ms':>7} {'torch ms':>8} {'ratio':>5} {'(min-max)':>11} | "
            f"{'CPU: ours':>9} {'torch':>6} {'ratio':>5} {'(min-max)':>11} | target")
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for prefix in ("", "cpu_"):
            if r[f"{prefix}ref_ms"] is None:
                cells.append(f"{r[f'{prefix}ours_ms']:>{9 if prefix else 7}.0f} {'-':>{6 if prefix else 8}} "
                             f"{'-':>5} {'':>11}")
            else:
                cells.append(f"{r[f'{prefix}ours_ms']:>{9 if prefix else 7}.0f} "
                             f"{r[f'{prefix}ref_ms']:>{6 if prefix else 8}.0f} {r[f'{prefix}ratio_median']:>5.2f} "
                             f"({r[f'{prefix}ratio_min']:.2f}-{r[f'{prefix}ratio_max']:.2f})")
        verdict = "(no torch)" if r["pass"] is None else "PASS" if r["pass"] else "MISS"
        lines.append(f"{r['name']:<49} | {cells[0]} | {cells[1]} | <= {r['target']:.1f} {verdict}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: experiments importable
    from experiments._common import positive_int

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, nargs="*", default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--torch-python", default=None)
    a = parser.parse_args()
    print(format_rows(measure(a.rounds, a.quick, a.threads, torch_python=a.torch_python)))
