"""Benchmark: forward + backward of one top-k MoE layer, sparse vs dense dispatch vs the GEMM floor.

For each configuration (N samples, D inputs, H hidden, O outputs, E MLP experts, K kept, float32):

- sparse: ``MoE(D, O, E, hidden=H, top_k=K)``, forward + backward (gate, grouping, gather, experts,
  weighted scatter-add, and the same in reverse);
- dense: the same layer with ``dispatch="dense"``: every expert on every sample, as seed 000 does;
- floor: only the matrix products the sparse layer cannot avoid, each into a preallocated output: the
  gate's x W_g (forward), xᵀ dh and dh W_gᵀ (backward), and, on the real per-expert row counts of the sparse
  layer's routing, per expert X W1, Z W2 (forward) and Zᵀ dY, dY W2ᵀ, Xᵀ dA, dA W1ᵀ (backward; the last is
  the input gradient the MoE needs). They run in the order the layer must run them: the gate's and every
  expert's forward products before any backward product, as no expert's output gradient exists until all
  experts' outputs are combined.

Variants are interleaved within each repeat after a warm-up call; the table prints medians and the
ratios sparse/floor (the overhead of routing and data movement) and dense/sparse (the saving of sparse
dispatch, ideally E / K). ``--backend cupy`` runs on the GPU, synchronising the device around each
timing. ``--quick`` uses tiny sizes and one repeat. ``--threads T`` limits BLAS to T threads: NumPy's
elementwise work (gather, bias, ReLU, combine) runs on one core while BLAS uses all of them, so the
ratio sparse/floor grows with the thread count, most where the GEMMs are smallest (D=64, H=128).

A second table splits the sparse layer's time into stages, timed inside the sparse variant's own runs
(medians over the same repeats): the gate (forward + backward: logits, softmax, top-k and their
gradients; beside it its three GEMMs as the floor times them), the experts' grouped passes (their matrix
products, which the floor times alone, plus bias, ReLU, mask and bias gradients), and the rest: input
check, grouping by expert, row gathers, the weighted combine and the combine weights' gradient. The
experts' time minus their floor GEMMs of the same repeat is their element-wise work. On CuPy the stage
timers synchronise the device around each stage.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import time
from contextlib import contextmanager

import numpy as np

from experiments._common import Progress, parse_args
from numpy_moe import backend
from numpy_moe.moe import MoE

CONFIGS = [  # N, D, H, O, E, K
    (4096, 256, 512, 256, 8, 2),
    (16384, 64, 128, 64, 16, 2),
    (1024, 512, 1024, 512, 4, 1),
]
QUICK = [(256, 16, 32, 16, 4, 2), (512, 8, 16, 8, 8, 2), (128, 32, 64, 32, 4, 1)]


def options(parser):
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                        help="array library: numpy (CPU, default) or cupy (GPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 15, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's own)")


def gemm_floor(layer, n_samples, offsets, xp):
    """The floor's matrix products as (stage, callable) pairs in the layer's order: the gate's forward
    product on ``n_samples`` rows, every expert's forward products on the row counts given by ``offsets``,
    every expert's backward products, then the gate's backward products."""
    p = layer.experts.params
    D, H, O = p["W1"].shape[1], p["W1"].shape[2], p["W2"].shape[2]
    Wg = layer.gate.params["W"]  # (D, E)
    x, dh = xp.ones((n_samples, D), dtype=xp.float32), xp.ones((n_samples, Wg.shape[1]), dtype=xp.float32)
    logits, dWg, dx = (xp.empty(s, dtype=xp.float32) for s in (dh.shape, Wg.shape, x.shape))
    work = []
    for e, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        M = hi - lo
        if M == 0:
            continue
        X, dY = xp.ones((M, D), dtype=xp.float32), xp.ones((M, O), dtype=xp.float32)
        bufs = [xp.empty(s, dtype=xp.float32) for s in ((M, H), (M, O), (H, O), (M, H), (D, H), (M, D))]
        work.append((X, dY, p["W1"][e], p["W2"][e], bufs))

    def experts_forward():
        for X, dY, W1, W2, (Z, Y, dW2, dZ, dW1, dX) in work:
            xp.matmul(X, W1, out=Z)
            xp.matmul(Z, W2, out=Y)

    def experts_backward():
        for X, dY, W1, W2, (Z, Y, dW2, dZ, dW1, dX) in work:
            xp.matmul(Z.T, dY, out=dW2)
            xp.matmul(dY, W2.T, out=dZ)
            xp.matmul(X.T, dZ, out=dW1)
            xp.matmul(dZ, W1.T, out=dX)

    def gate_backward():
        xp.matmul(x.T, dh, out=dWg)
        xp.matmul(dh, Wg.T, out=dx)

    return [("gate", lambda: xp.matmul(x, Wg, out=logits)), ("experts", experts_forward),
            ("experts", experts_backward), ("gate", gate_backward)]


@contextmanager
def timed_stages(layer, sync):
    """Within the block, ``spent["gate"]`` and ``spent["experts"]`` accumulate the seconds ``layer``
    spends in its gate's and its experts' passes (the caller resets them)."""
    parts = {"gate": (layer.gate, ("forward", "backward")),
             "experts": (layer.experts, ("forward_grouped", "backward_grouped"))}
    spent = {stage: 0.0 for stage in parts}

    def timed(method, stage):
        def run(*args, **kwargs):
            sync()
            t0 = time.perf_counter()
            out = method(*args, **kwargs)
            sync()
            spent[stage] += time.perf_counter() - t0
            return out
        return run

    for stage, (module, names) in parts.items():
        for name in names:  # an instance attribute shadows the class's method until deleted below
            setattr(module, name, timed(getattr(module, name), stage))
    try:
        yield spent
    finally:
        for module, names in parts.values():
            for name in names:
                delattr(module, name)


def bench_config(cfg, repeats, xp, sync, progress=None):
    N, D, H, O, E, K = cfg
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((N, D)), dtype=np.float32)
    dy = backend.asarray(rng.standard_normal((N, O)), dtype=np.float32)
    sparse = MoE(D, O, E, hidden=H, seed=0, dtype="float32", top_k=K)
    dense = MoE(D, O, E, hidden=H, seed=0, dtype="float32", top_k=K, dispatch="dense")
    sparse.forward(x)
    counts = np.diff(sparse.groups.offsets)

    def step(layer):
        def run():
            layer.forward(x)
            layer.backward(dy)
        return run

    floor_steps = gemm_floor(sparse, N, sparse.groups.offsets, xp)
    floor_parts = {}

    def floor():
        floor_parts.update(gate=0.0, experts=0.0)
        for stage, fn in floor_steps:
            t0 = time.perf_counter()
            fn()
            sync()
            floor_parts[stage] += time.perf_counter() - t0

    variants = {"sparse": step(sparse), "dense": step(dense), "floor": floor}
    stages = ["gate", "gate GEMMs", "experts", "expert GEMMs", "element-wise", "rest"]
    times = {name: [] for name in [*variants, *stages]}
    with timed_stages(sparse, sync) as spent:
        for fn in variants.values():  # warm-up
            fn()
        for r in range(repeats):
            if progress is not None:
                progress.step(f"N={cfg[0]}, E={cfg[4]}: repeat {r + 1} of {repeats}")
            spent.update(gate=0.0, experts=0.0)
            for name, fn in variants.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
            times["gate"].append(spent["gate"])
            times["gate GEMMs"].append(floor_parts["gate"])
            times["experts"].append(spent["experts"])
            times["expert GEMMs"].append(floor_parts["experts"])
            times["element-wise"].append(spent["experts"] - floor_parts["experts"])
            times["rest"].append(times["sparse"][-1] - spent["gate"] - spent["experts"])
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}, counts


def main(argv=None):
    args = parse_args(argv, __doc__, extra=options)
    backend.set_backend(args.backend)
    xp = backend.get_array_module()
    if args.backend == "cupy":
        sync = xp.cuda.Device().synchronize
    else:
        def sync():
            pass
    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads, user_api="blas")
    repeats = args.repeats or (1 if args.quick else 15)
    configs = QUICK if args.quick else CONFIGS
    print(f"MoE layer forward + backward, float32, backend {args.backend}, BLAS threads "
          f"{args.threads or 'default'}, median of {repeats} interleaved repeats")
    head = (f"{'N':>6} {'D':>4} {'H':>5} {'O':>4} {'E':>3} {'K':>2} | {'sparse ms':>9} {'dense ms':>9} "
            f"{'floor ms':>9} | {'sparse/floor':>12} {'dense/sparse':>12} | rows per expert")
    print(head)
    print("-" * len(head))
    rows = []
    progress = Progress(len(configs) * repeats, what="bench", every=5.0, file=sys.stderr)
    try:
        for cfg in configs:
            t, counts = bench_config(cfg, repeats, xp, sync, progress)
            rows.append((cfg, t))
            print(" ".join(f"{v:>{w}}" for v, w in zip(cfg, (6, 4, 5, 4, 3, 2)))
                  + f" | {t['sparse']:>9.2f} {t['dense']:>9.2f} {t['floor']:>9.2f} | "
                  f"{t['sparse'] / t['floor']:>12.2f} {t['dense'] / t['sparse']:>12.2f} | "
                  f"{counts.min()}-{counts.max()}", flush=True)
    finally:
        backend.set_backend("numpy")
    print("\nWhere the sparse layer's time goes (ms, medians over the same repeats): the gate's passes (with its"
          "\nthree GEMMs timed alone in the floor), the experts' grouped passes = their floor GEMMs + element-wise"
          "\nwork, and the rest (check, grouping, gathers, combine)")
    head = (f"{'N':>6} {'E':>3} {'K':>2} | {'sparse':>7} {'gate':>6} {'its GEMMs':>9} | {'experts':>8} "
            f"{'their GEMMs':>11} {'element-wise':>12} | {'rest':>6}")
    print(head)
    print("-" * len(head))
    for (N, D, H, O, E, K), t in rows:
        print(f"{N:>6} {E:>3} {K:>2} | {t['sparse']:>7.2f} {t['gate']:>6.2f} {t['gate GEMMs']:>9.2f} | "
              f"{t['experts']:>8.2f} {t['expert GEMMs']:>11.2f} {t['element-wise']:>12.2f} | {t['rest']:>6.2f}")
    return rows


if __name__ == "__main__":
    main()
