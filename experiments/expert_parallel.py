"""Expert parallelism on MPI: a top-2 MoE trained with its experts split over 1, 2 and 4 processes.

``mpiexec -n N python -m experiments expert_parallel`` trains one ExpertParallelMoE (8 MLP experts, top 2,
importance + Switch losses, Adam) on the 8x8 digits, every rank with its share of each batch of 240
images and 8 / N of the experts, beside the single-process MoE on the whole batch (rank 0). Each step
prints both losses (equal to the last digits: the layers compute the same function), the time of the
distributed step and the bytes each rank sent. It runs the dropless mode (MPI_Alltoallv), then the
capacity-padded mode (MPI_Alltoall, capacity factor 1.25).

``python -m experiments expert_parallel`` (one process, as ``make experiments`` runs it) launches that
under ``mpiexec -n 1``, ``-n 2`` and ``-n 4`` and draws two figures: which rank's samples went to which
rank's experts in one batch on 4 ranks (``expert_parallel_dispatch.png``), and the bytes sent per rank
and the time per step against the number of ranks (``expert_parallel_comm.png``). The bytes follow
MATH.md §2.6: the padded mode sends W cf times what the dropless mode sends, the price of
reproducing the single-process capacity rule over the whole batch. The times come from the shared 2-core
development machine, where 4 ranks are oversubscribed: they show the overhead of the exchanges on one
small machine, not a speed-up.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import json
import os
import subprocess
import tempfile
import time

import numpy as np

from experiments._common import Progress, parse_args, savefig
from numpy_moe import functional as F
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam

ROOT = Path(__file__).resolve().parent.parent
E, H, K, BATCH, CF = 8, 32, 2, 240, 1.25
MODES = {"dropless": None, "padded": CF}
RANKS = (1, 2, 4)


def launched_by_mpiexec():
    """True inside ``mpiexec`` (MPICH's Hydra sets PMI_SIZE, Open MPI OMPI_COMM_WORLD_SIZE)."""
    return any(v in os.environ for v in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"))


def cross_entropy(logits, labels, n_total):
    """Summed cross-entropy of these rows and its gradient for the mean over ``n_total`` rows."""
    rows = np.arange(labels.shape[0])
    dlogits = F.softmax(logits)
    dlogits[rows, labels] -= 1
    return -float(F.log_softmax(logits)[rows, labels].sum()), dlogits / n_total


def train(comm, mode, X, y, steps, every, progress=None):
    """Train one layer on ``comm``'s ranks; rank 0 trains the single-process MoE beside it.
    ``progress`` (rank 0's ``experiments._common.Progress``, None elsewhere) counts one step per step."""
    from numpy_moe.parallel import ExpertParallelMoE

    W, rank = comm.size, comm.rank
    kw = dict(hidden=H, seed=0, top_k=K, capacity_factor=MODES[mode], balance={"importance": 0.01, "switch": 0.01})
    layer, opt = ExpertParallelMoE(X.shape[1], 10, E, mode=mode, **kw), Adam(0.01)
    ref, opt_ref = (MoE(X.shape[1], 10, E, **kw), Adam(0.01)) if rank == 0 else (None, None)
    batches = np.random.default_rng(0)
    lo, hi = rank * BATCH // W, (rank + 1) * BATCH // W  # this rank's share of each batch
    log = {"loss": [], "loss_single": [], "seconds": [], "bytes": []}
    if rank == 0:
        print(f"\n{mode} dispatch on {W} rank(s): loss (EP) | loss (1 process) | ms per step | bytes sent per rank")
    for step in range(steps):
        idx = batches.choice(X.shape[0], BATCH, replace=False)  # the same batch on every rank
        comm.comm.Barrier()
        t = time.perf_counter()
        logits = layer.forward(X[idx[lo:hi]])
        ce, dlogits = cross_entropy(logits, y[idx[lo:hi]], BATCH)
        layer.backward(dlogits)
        opt.step(layer)
        seconds = comm.comm.allreduce(time.perf_counter() - t, op=comm.MPI.MAX)
        if step == 0 and mode == "dropless":  # one batch's dispatch: rows from each rank to each expert
            log["dispatch"] = np.array(comm.allgather(layer.send_counts.tolist())).tolist()
        loss = comm.comm.allreduce(ce) / BATCH + layer.aux_loss
        sent = comm.allgather(layer.traffic["forward"] + layer.traffic["backward"])
        if rank == 0:
            logits_ref = ref.forward(X[idx])
            ce_ref, dlogits_ref = cross_entropy(logits_ref, y[idx], BATCH)
            ref.backward(dlogits_ref)
            opt_ref.step(ref)
            loss_ref = ce_ref / BATCH + ref.aux_loss
            for key, value in zip(log, (loss, loss_ref, seconds, sent)):
                log[key].append(value)
            if step % every == 0 or step == steps - 1:
                print(f"step {step:3d}: {loss:.15f} | {loss_ref:.15f} | {1000 * seconds:6.1f} | "
                      + " ".join(f"{b:,}" for b in sent), flush=True)
            if progress is not None:
                progress.step(f"{mode}, step {step + 1}, loss {loss:.4f}")
    return log


def digits(quick):
    """The 8x8 digits, standardised: X (1797, 64), y (1797,); 480 of them for a quick run."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = (X - X.mean(axis=0)) / (X.std(axis=0) + 1e-8)
    return (X[:480], y[:480]) if quick else (X, y)


def worker(args):
    """The run on every rank of ``mpiexec``; rank 0 writes the logs to ``args.worker`` if given."""
    from numpy_moe.parallel import Comm, abort_on_error

    with abort_on_error():
        comm = Comm()
        X, y = comm.comm.bcast(digits(args.quick) if comm.rank == 0 else None)  # one rank imports sklearn
        steps = 4 if args.quick else 40
        progress = (Progress(len(MODES) * steps, what=f"expert_parallel, {comm.size} rank(s)")
                    if comm.rank == 0 else None)
        logs = {mode: train(comm, mode, X, y, steps, 1 if args.worker is None else 10, progress) for mode in MODES}
        if comm.rank == 0:
            progress.done()
            for mode, log in logs.items():
                gap = max(abs(a - b) for a, b in zip(log["loss"], log["loss_single"]))
                print(f"{mode}: largest |loss (EP) - loss (1 process)| over {steps} steps: {gap:.1e}; "
                      f"{1000 * np.median(log['seconds'][1:]):.1f} ms per step (median)")
            if args.worker is not None:
                args.worker.write_text(json.dumps(logs))


def mpiexec_path():
    path = Path(sys.executable).parent / "mpiexec"
    return str(path) if path.exists() else None


def driver(args):
    """Run the worker under mpiexec -n 1, 2, 4 and draw the figures from their logs."""
    mpiexec = mpiexec_path()
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        print("skipped: needs the [mpi] extra (pip install -e '.[mpi]': mpi4py and the mpich wheel)")
        return
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    runs = {}
    ranks = RANKS[:2] if args.quick else RANKS  # the tests run 4 ranks in tests/test_parallel.py
    # one step per launched run (the ranks' own lines, from rank 0, count their training steps)
    progress = Progress(len(ranks), what="expert_parallel")
    with tempfile.TemporaryDirectory() as tmp:
        for W in ranks:
            if W > (os.cpu_count() or 1):  # more ranks than cores: a waiting rank sleeps instead of spinning
                env["MPIR_CVAR_ENABLE_HEAVY_YIELD"] = "1"
            path = Path(tmp) / f"ranks{W}.json"
            cmd = [mpiexec, "-n", str(W), sys.executable, "-m", "experiments", "expert_parallel",
                   "--worker", str(path)] + (["--quick"] if args.quick else [])
            print(f"\n$ mpiexec -n {W} python -m experiments expert_parallel", flush=True)
            subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=600)
            runs[W] = json.loads(path.read_text())
            progress.step(f"mpiexec -n {W} finished")
    progress.done()
    summary(runs)
    plot_dispatch(runs[max(runs)]["dropless"]["dispatch"], args)
    plot_comm(runs, args)


def summary(runs):
    print("\n| ranks | mode | bytes sent per rank per step (mean) | ms per step (median) | max loss gap |")
    print("|---:|---|---:|---:|---:|")
    for W, logs in runs.items():
        for mode, log in logs.items():
            gap = max(abs(a - b) for a, b in zip(log["loss"], log["loss_single"]))
            print(f"| {W} | {mode} | {np.mean(log['bytes']):,.0f} | {1000 * np.median(log['seconds'][1:]):.1f} | "
                  f"{gap:.1e} |")


def plot_dispatch(counts, args):
    import matplotlib.pyplot as plt

    counts = np.array(counts)  # (W, E): rows rank s sent to expert e
    W = counts.shape[0]
    per_rank = counts.reshape(W, W, E // W).sum(axis=2)  # (W, W): rank s -> rank q
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    for ax, m, xlabel, xticks in ((axes[0], counts, "expert (owned by rank e // %d)" % (E // W), range(E)),
                                  (axes[1], per_rank, "receiving rank", range(W))):
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > (m.min() + m.max()) / 2 else "black")
        ax.set(xticks=list(xticks), yticks=range(W), xlabel=xlabel, ylabel="sending rank")
    for q in range(1, W):
        axes[0].axvline(q * E // W - 0.5, color="k", lw=1)
    axes[0].set_title(f"top-{K} assignments each rank sends to each expert")
    axes[1].set_title("rows between ranks (diagonal stays local)")
    fig.suptitle(f"One batch of {BATCH} digits on {W} ranks ({BATCH // W} each): "
                 f"{100 * (1 - np.trace(per_rank) / per_rank.sum()):.0f}% of the rows cross to another rank", y=1.03)
    savefig(fig, args, "expert_parallel_dispatch.png")


def plot_comm(runs, args):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for mode, marker in (("dropless", "o"), ("padded", "s")):
        ranks = list(runs)
        axes[0].plot(ranks, [np.mean(runs[W][mode]["bytes"]) / 1024 for W in ranks], marker=marker,
                     label=f"{mode}" + (f" (capacity factor {CF})" if mode == "padded" else ""))
        axes[1].plot(ranks, [1000 * np.median(runs[W][mode]["seconds"][1:]) for W in ranks], marker=marker,
                     label=mode)
    axes[0].set(xlabel="ranks W", ylabel="KiB sent per rank per step", xticks=list(runs),
                title="all-to-all volume:\npadded sends ~W cf times dropless")
    axes[1].set(xlabel="ranks W", ylabel="ms per step (median)", xticks=list(runs), ylim=(0, None),
                title="time per training step\n(shared 2-core machine)")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"Expert parallelism, {E} experts, top-{K}, batch {BATCH} (float64)")
    fig.tight_layout()
    savefig(fig, args, "expert_parallel_comm.png")


def main(argv=None):
    def extra(parser):
        parser.add_argument("--worker", type=Path, default=None,
                            help="run as a rank of mpiexec and write the logs here (the driver uses it)")

    args = parse_args(argv, __doc__, extra)
    if args.worker is not None or launched_by_mpiexec():
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main(sys.argv[1:])
