"""Benchmark: forward + backward of one top-k MoE layer, sparse vs dense dispatch vs the GEMM floor.

For each configuration (N samples, D inputs, H hidden, O outputs, E MLP experts, K kept, float32):

- sparse: ``MoE(D, O, E, hidden=H, top_k=K)``, forward + backward (gate, grouping, gather, experts,
  weighted scatter-add, and the same in reverse);
- dense: the same layer with ``dispatch="dense"``: every expert on every sample, as seed 000 does;
- floor: only the matrix products the sparse layer cannot avoid, on the real per-expert row counts of
  the sparse layer's routing: per expert X W1, Z W2 (forward) and Zᵀ dY, dY W2ᵀ, Xᵀ dA, dA W1ᵀ (backward;
  the last is the input gradient the MoE needs), each into a preallocated output.

Variants are interleaved within each repeat after a warm-up call; the table prints medians and the
ratios sparse/floor (the overhead of routing and data movement) and dense/sparse (the saving of sparse
dispatch, ideally E / K). ``--backend cupy`` runs on the GPU, synchronising the device around each
timing. ``--quick`` uses tiny sizes and one repeat. ``--threads T`` limits BLAS to T threads: NumPy's
elementwise work (gather, bias, ReLU, combine) runs on one core while BLAS uses all of them, so the
ratio sparse/floor grows with the thread count, most where the GEMMs are smallest (D=64, H=128).

A second table splits the sparse layer's time into stages, timed inside the sparse variant's own runs
(medians over the same repeats): the gate (forward + backward: logits, softmax, top-k and their
gradients), the experts' grouped passes (their matrix products, which the floor times alone, plus
bias, ReLU, mask and bias gradients), and the rest: input check, grouping by expert, row gathers, the
weighted combine and the combine weights' gradient. The experts' time minus the floor of the same
repeat is their element-wise work. On CuPy the stage timers synchronise the device around each stage.
"""
import time
from contextlib import contextmanager

import numpy as np

from experiments._common import parse_args
from numpy_moe import backend
from numpy_moe.moe import MoE

CONFIGS = [  # N, D, H, O, E, K
    (4096, 256, 512, 256, 8, 2),
    (16384, 64, 128, 64, 16, 2),
    (1024, 512, 1024, 512, 4, 1),
]
QUICK = [(256, 16, 32, 16, 4, 2), (512, 8, 16, 8, 8, 2), (128, 32, 64, 32, 4, 1)]


def options(parser):
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 15, quick 1)")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: the library's own)")


def gemm_floor(layer, offsets, xp):
    """A callable doing the 6 GEMMs per expert of ``layer``'s experts on the given row counts."""
    p = layer.experts.params
    D, H, O = p["W1"].shape[1], p["W1"].shape[2], p["W2"].shape[2]
    work = []
    for e, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        M = hi - lo
        if M == 0:
            continue
        X, dY = xp.ones((M, D), dtype=xp.float32), xp.ones((M, O), dtype=xp.float32)
        bufs = [xp.empty(s, dtype=xp.float32) for s in ((M, H), (M, O), (H, O), (M, H), (D, H), (M, D))]
        work.append((X, dY, p["W1"][e], p["W2"][e], bufs))

    def run():
        for X, dY, W1, W2, (Z, Y, dW2, dZ, dW1, dX) in work:
            xp.matmul(X, W1, out=Z)  # forward
            xp.matmul(Z, W2, out=Y)
            xp.matmul(Z.T, dY, out=dW2)  # backward
            xp.matmul(dY, W2.T, out=dZ)
            xp.matmul(X.T, dZ, out=dW1)
            xp.matmul(dZ, W1.T, out=dX)
    return run


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


def bench_config(cfg, repeats, xp, sync):
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

    variants = {"sparse": step(sparse), "dense": step(dense),
                "floor": gemm_floor(sparse, sparse.groups.offsets, xp)}
    times = {name: [] for name in [*variants, "gate", "experts", "element-wise", "rest"]}
    with timed_stages(sparse, sync) as spent:
        for fn in variants.values():  # warm-up
            fn()
        for _ in range(repeats):
            spent.update(gate=0.0, experts=0.0)
            for name, fn in variants.items():
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                times[name].append(time.perf_counter() - t0)
            times["gate"].append(spent["gate"])
            times["experts"].append(spent["experts"])
            times["element-wise"].append(spent["experts"] - times["floor"][-1])
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
    try:
        for cfg in configs:
            t, counts = bench_config(cfg, repeats, xp, sync)
            rows.append((cfg, t))
            print(" ".join(f"{v:>{w}}" for v, w in zip(cfg, (6, 4, 5, 4, 3, 2)))
                  + f" | {t['sparse']:>9.2f} {t['dense']:>9.2f} {t['floor']:>9.2f} | "
                  f"{t['sparse'] / t['floor']:>12.2f} {t['dense'] / t['sparse']:>12.2f} | "
                  f"{counts.min()}-{counts.max()}", flush=True)
    finally:
        backend.set_backend("numpy")
    print("\nWhere the sparse layer's time goes (ms, medians over the same repeats): the gate's passes, the experts'"
          "\ngrouped passes = the floor's GEMMs + element-wise work, and the rest (check, grouping, gathers, combine)")
    head = (f"{'N':>6} {'E':>3} {'K':>2} | {'sparse':>7} {'gate':>6} {'experts':>8} {'floor':>7} "
            f"{'element-wise':>12} {'rest':>6}")
    print(head)
    print("-" * len(head))
    for (N, D, H, O, E, K), t in rows:
        print(f"{N:>6} {E:>3} {K:>2} | {t['sparse']:>7.2f} {t['gate']:>6.2f} {t['experts']:>8.2f} {t['floor']:>7.2f} "
              f"{t['element-wise']:>12.2f} {t['rest']:>6.2f}")
    return rows


if __name__ == "__main__":
    main()
