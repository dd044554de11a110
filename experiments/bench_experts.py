"""Benchmark: the grouped SwiGLU expert pass per token, few large experts vs many fine-grained ones.

Fine-grained MoE (DeepSeek-V3: 256 experts, top-8) splits the same active hidden width K H over more,
smaller experts. The grouped pass (``ExpertBank.forward_grouped`` + ``backward_grouped``, SwiGLU, float32)
is timed at the same N tokens, D, O and K H for (E, K, H) = (8, 2, 4 K H / 8), (16, 4, ...), (64, 8, ...),
every expert receiving N K / E rows, beside its floor: the same matrix products alone, each into a
preallocated output (per expert x_e [W_gate W_up] and A W_down forward; Aᵀ dY, dY W_downᵀ, x_eᵀ [dG dU],
[dG dU] [W_gate W_up]ᵀ backward). The floor itself grows with K at a fixed K H: the gathered inputs
(N K rows of D) and the expert outputs (N K rows of O) are K times larger, and the products get thinner.
What the implementation controls is its time over that floor, which must not grow with E.

Repeats are interleaved; the table prints medians. ``--threads T`` limits BLAS to T threads;
``--quick`` runs tiny sizes once.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import time

import numpy as np

from experiments._common import Progress, parse_args, positive_int
from numpy_moe.experts import ExpertBank

N, D, O, KH = 2048, 128, 128, 256
SHAPES = [(8, 2), (16, 4), (64, 8)]


def options(parser):
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed repeats (default 21, quick 1)")
    parser.add_argument("--threads", type=positive_int, default=None, help="BLAS threads (default: the library's own)")


def floor(bank, x, dy, offsets):
    """The grouped pass's matrix products alone, in its order, into preallocated outputs."""
    p = bank.params
    W_in = np.concatenate([p["W_gate"], p["W_up"]], axis=2)
    M, H = x.shape[0], bank.hidden
    GU, A, out = np.empty((M, 2 * H), x.dtype), np.ones((M, H), x.dtype), np.empty((M, dy.shape[1]), x.dtype)
    dA, dx = np.empty((M, H), x.dtype), np.empty_like(x)
    gW_down, gW_in = np.empty(p["W_down"].shape[1:], x.dtype), np.empty(W_in.shape[1:], x.dtype)
    blocks = [(e, lo, hi) for e, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])) if hi > lo]
    for e, lo, hi in blocks:
        np.matmul(x[lo:hi], W_in[e], out=GU[lo:hi])
    for e, lo, hi in blocks:
        np.matmul(A[lo:hi], p["W_down"][e], out=out[lo:hi])
    for e, lo, hi in blocks:
        np.matmul(A[lo:hi].T, dy[lo:hi], out=gW_down)
        np.matmul(dy[lo:hi], p["W_down"][e].T, out=dA[lo:hi])
    for e, lo, hi in blocks:
        np.matmul(x[lo:hi].T, GU[lo:hi], out=gW_in)
        np.matmul(GU[lo:hi], W_in[e].T, out=dx[lo:hi])


def main(argv=None):
    args = parse_args(argv, __doc__, extra=options)
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads, user_api="blas")
    repeats = args.repeats or (1 if args.quick else 21)
    n, d, o, kh = (64, 16, 16, 32) if args.quick else (N, D, O, KH)
    rng = np.random.default_rng(0)
    cases = []
    for E, K in SHAPES:
        bank = ExpertBank(E, d, o, kh // K, seed=0, dtype="float32", activation="swiglu")
        M = n * K
        offsets = [0] + np.cumsum(np.full(E, M // E)).tolist()
        x = rng.standard_normal((M, d)).astype(np.float32)
        dy = rng.standard_normal((M, o)).astype(np.float32)
        cases.append((E, K, bank, x, dy, offsets))
    times = {(E, K): {"pass": [], "floor": []} for E, K, *_ in cases}
    progress = Progress((repeats + 1) * len(cases), what="bench_experts")
    for rep in range(repeats + 1):  # the first round warms up
        for E, K, bank, x, dy, offsets in cases:
            t0 = time.perf_counter()
            bank.forward_grouped(x, offsets)
            bank.backward_grouped(dy)
            t1 = time.perf_counter()
            floor(bank, x, dy, offsets)
            t2 = time.perf_counter()
            if rep:
                times[(E, K)]["pass"].append(t1 - t0)
                times[(E, K)]["floor"].append(t2 - t1)
            progress.step(f"{'warm-up' if not rep else f'repeat {rep}/{repeats}'}, E={E} K={K}")
    progress.done()
    print(f"grouped SwiGLU pass, forward + backward, float32, N={n} tokens, D={d}, O={o}, K H={kh}, BLAS threads "
          f"{args.threads or 'default'}, median of {repeats} interleaved repeats")
    head = f"{'E':>3} {'K':>2} {'H':>4} | {'pass ms':>8} {'us/token':>9} | {'floor ms':>8} | {'pass/floor':>10}"
    print(head)
    print("-" * len(head))
    rows = []
    for E, K, bank, *_ in cases:
        t = times[(E, K)]
        p, f = 1e3 * np.median(t["pass"]), 1e3 * np.median(t["floor"])
        ratio = float(np.median(np.array(t["pass"]) / np.array(t["floor"])))
        rows.append((E, K, p, f, ratio))
        print(f"{E:>3} {K:>2} {bank.hidden:>4} | {p:>8.2f} {1e3 * p / n:>9.2f} | {f:>8.2f} | {ratio:>10.2f}")
    return rows


if __name__ == "__main__":
    main()
