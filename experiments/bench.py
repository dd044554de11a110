"""Benchmark: the sparse MoE layer against its GEMM floor and PyTorch, a batch-size sweep, the post models.

``python -m experiments bench`` runs ``--rounds`` rounds (5 by default) and prints, for every ratio, its
median over the rounds and its range, then every target of issue 17 with PASS or MISS. Within a round
each measurement is the median of ``--repeats`` (7) interleaved repeats after a warm-up call.

1. The layer (N samples, D inputs, H hidden, O outputs, E experts, K kept, float32, forward + backward):

   - sparse: ``MoE(D, O, E, hidden=H, top_k=K)``; dense: the same layer with ``dispatch="dense"`` (every
     expert on every sample, as post 000 does);
   - floor: only the matrix products the sparse layer cannot avoid, each into a preallocated output,
     BLAS at its default threads: the gate's x W_g (forward), xᵀ dh and dh W_gᵀ (backward), and, on the
     real per-expert row counts of the sparse layer's routing, per expert X W1, Z W2 (forward) and Zᵀ dY,
     dY W2ᵀ, Xᵀ dA, dA W1ᵀ (backward; the last is the input gradient). They run in the order the layer
     must run them: every forward product before any backward product. Gated-linear (SwiGLU) rows have
     their own floor: X [W_gate W_up] and A W_down forward, Aᵀ dY, dY W_downᵀ, Xᵀ [dG dU] and
     [dG dU] [W_gate W_up]ᵀ backward;
   - torch: PyTorch's sparse dispatch of the same layer with the same weights (gate Linear, softmax, topk,
     argsort by expert, ``index_select``, per-expert Linear-ReLU-Linear, ``index_add_``; forward + backward by
     autograd; as many intra-op threads as BLAS has here), run by experiments/_torch_moe.py in a
     subprocess, once per round, when a Python with torch is found: ``--torch-python``, else
     ``NUMPY_MOE_TORCH_PYTHON``, else this Python if it imports torch. The project never depends on torch.

   A second table splits the sparse layer's time into stages (medians over all rounds): the gate, the
   experts' grouped passes (which now include gathering their rows) with their GEMM floor, and the rest
   (sparse - gate - experts). Where the experts run on threads, the gate's backward runs on one of them
   beside the combine of the experts' input gradient, so its stage time is the wall time of that block
   (with one BLAS thread) and the rest leaves that combine out.
2. Batch sizes 16 to 16384: time per sample of the top-k layer (K < E) against the dense layer
   (``top_k=None``, every expert weighted by a full softmax) of the same shapes, for the shapes of the
   second configuration and of ``MoEClassifier``'s default layer on the digits; figure
   ``plots/bench_batch.png``. With torch, PyTorch's own dense and top-k layers of the same shapes are timed
   beside them (experiments/_torch_sweep.py, once per round; its top-k is the faster of its sparse and
   dense dispatch): a reference for what the same layers cost in a framework, not a target.
3. The post models, when their modules are present: post 000's image model against the post's PyTorch
   code (experiments/_bench_images.py) and the classic local experts at batch size 1 against post 003's
   NumPy loop (experiments/_bench_classic.py).

``--threads T`` limits BLAS (and numpy_moe's expert threads, numpy_moe.workers) to T threads; torch gets T
intra-op threads. numpy_moe runs its experts on threads only where OpenBLAS's idle threads stop spinning
soon after a product, so the benchmark first makes them sleep within 2**20 cycles, as
``OPENBLAS_THREAD_TIMEOUT=20`` would (``numpy_moe.workers.set_blas_spin``), and puts OpenBLAS's setting back
at the end; ``--blas-spin loaded`` keeps OpenBLAS's spin as loaded (2**28 cycles unless the environment says
otherwise) to see the experts run in order. numpy_moe/workers.py explains why, and the header says which. ``--backend cupy`` runs the layer on the GPU, synchronising around each timing (the
torch, sweep and model sections are then skipped, and issue 17's CPU targets are not judged). ``--quick`` uses tiny sizes, one round, one repeat.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import time
from contextlib import contextmanager

import numpy as np

from experiments._common import Progress, parse_args, positive_int, savefig
from numpy_moe import backend
from numpy_moe.experts import ExpertBank
from numpy_moe.moe import MoE

CONFIGS = [  # N, D, H, O, E, K, expert activation; the first three carry issue 17's targets
    (4096, 256, 512, 256, 8, 2, "relu"),
    (16384, 64, 128, 64, 16, 2, "relu"),
    (1024, 512, 1024, 512, 4, 1, "relu"),
    (4096, 256, 256, 256, 8, 2, "swiglu"),  # gated-linear experts (Mixtral's shape of block, scaled down)
    (2048, 128, 32, 128, 64, 8, "swiglu"),  # fine-grained: 64 experts of width 32, top-8 (DeepSeek's style)
]
QUICK = [(256, 16, 32, 16, 4, 2, "relu"), (512, 8, 16, 8, 8, 2, "relu"), (128, 32, 64, 32, 4, 1, "relu"),
         (256, 16, 16, 16, 4, 2, "swiglu"), (256, 16, 8, 16, 16, 4, "swiglu")]
FLOOR_TARGETS = [1.15, 1.35, 1.10]  # sparse / floor, median over rounds, for CONFIGS[:3]
TORCH_TARGET = 1.0  # numpy_moe / torch, median over rounds, for CONFIGS[:3]
SWEEP_N = [16, 64, 256, 1024, 4096, 16384]
SWEEP_SHAPES = [(64, 128, 64, 16, 2, "D=64 H=128 O=64 E=16 K=2 (config 2)"),
                (64, 16, 10, 4, 2, "D=64 H=16 O=10 E=4 K=2 (MoEClassifier on digits)")]


def options(parser):
    parser.add_argument("--backend", choices=["numpy", "cupy"], default="numpy",
                        help="array library: numpy (CPU, default) or cupy (GPU)")
    parser.add_argument("--rounds", type=positive_int, default=None, help="rounds (default 5, quick 1); ratios: median, range")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed repeats per round (default 7, quick 1)")
    parser.add_argument("--threads", type=positive_int, default=None, help="BLAS / expert / torch threads (default: BLAS's own)")
    parser.add_argument("--torch-python", default=None, help="a Python with torch for the torch columns")
    parser.add_argument("--only", choices=["layer", "sweep", "models"], default=None, help="run one section")
    parser.add_argument("--blas-spin", choices=["short", "loaded"], default="short",
                        help="short (default): OpenBLAS's idle threads sleep within 2**20 cycles for the run "
                             "(numpy_moe.workers.set_blas_spin); loaded: as OpenBLAS was loaded")


def find_torch_python(given):
    """A Python interpreter that imports torch, or None."""
    for candidate in (given, os.environ.get("NUMPY_MOE_TORCH_PYTHON"), sys.executable):
        if not candidate:
            continue
        ok = subprocess.run([candidate, "-c", "import torch"], capture_output=True).returncode == 0
        if ok:
            return candidate
        if candidate is given:
            raise SystemExit(f"--torch-python {given!r} cannot import torch")
    return None


def make_layer(cfg, dispatch="sparse"):
    N, D, H, O, E, K, activation = cfg
    if activation == "relu":
        return MoE(D, O, E, hidden=H, seed=0, dtype="float32", top_k=K, dispatch=dispatch)
    experts = ExpertBank(E, D, O, H, seed=1, dtype="float32", activation=activation)
    return MoE(D, O, E, seed=0, dtype="float32", top_k=K, experts=experts, dispatch=dispatch)


def gemm_floor(layer, n_samples, offsets, xp):
    """The floor's matrix products as (stage, callable) pairs in the layer's order: the gate's forward
    product on ``n_samples`` rows, every expert's forward products on the row counts given by ``offsets``,
    every expert's backward products, then the gate's backward products. MLP experts: W_in = W1,
    W_out = W2; gated-linear experts: W_in = [W_gate W_up] (D, 2H), W_out = W_down (H, O)."""
    p = layer.experts.params
    if "W1" in p:
        W_in, W_out = p["W1"], p["W2"]
    else:
        W_in, W_out = xp.concatenate([p["W_gate"], p["W_up"]], axis=2), p["W_down"]
    D, H_in, H, O = W_in.shape[1], W_in.shape[2], W_out.shape[1], W_out.shape[2]
    Wg = layer.gate.params["W"]  # (D, E)
    x, dh = xp.ones((n_samples, D), dtype=xp.float32), xp.ones((n_samples, Wg.shape[1]), dtype=xp.float32)
    logits, dWg, dx = (xp.empty(s, dtype=xp.float32) for s in (dh.shape, Wg.shape, x.shape))
    work = []
    for e, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        M = hi - lo
        if M == 0:
            continue
        # inputs of every product hold ones (uninitialised memory could hold denormals or NaN, which some
        # CPUs multiply slowly); outputs are preallocated
        X, A, dY, dZ = (xp.ones(s, dtype=xp.float32) for s in ((M, D), (M, H), (M, O), (M, H_in)))
        bufs = [xp.empty(s, dtype=xp.float32) for s in ((M, H_in), (M, O), (H, O), (M, H), (D, H_in), (M, D))]
        work.append((X, A, dY, dZ, W_in[e], W_out[e], bufs))

    def experts_forward():
        for X, A, dY, dZ, Wi, Wo, (Z, Y, dWo, dA, dWi, dX) in work:
            xp.matmul(X, Wi, out=Z)
            xp.matmul(A, Wo, out=Y)

    def experts_backward():
        for X, A, dY, dZ, Wi, Wo, (Z, Y, dWo, dA, dWi, dX) in work:
            xp.matmul(A.T, dY, out=dWo)
            xp.matmul(dY, Wo.T, out=dA)
            xp.matmul(X.T, dZ, out=dWi)
            xp.matmul(dZ, Wi.T, out=dX)

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
    """One round of one configuration: medians (ms) of sparse, dense, floor and the stages."""
    N, D, H, O, E, K, _ = cfg
    rng = np.random.default_rng(0)
    x = backend.asarray(rng.standard_normal((N, D)), dtype=np.float32)
    dy = backend.asarray(rng.standard_normal((N, O)), dtype=np.float32)
    sparse, dense = make_layer(cfg), make_layer(cfg, "dense")
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
                progress.step(f"layer N={N}, E={E}, {cfg[6]}: repeat {r + 1} of {repeats}")
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


def torch_round(configs, repeats, threads, torch_python):
    """PyTorch's sparse dispatch of the MLP configurations, same weights: ms per config (one subprocess)."""
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {"configs": np.array([c[:6] for c in configs]), "repeats": np.array(repeats),
                  "threads": np.array(threads)}
        for c, cfg in enumerate(configs):
            N, D, H, O, E, K, _ = cfg
            rng = np.random.default_rng(0)
            x, dy = rng.standard_normal((N, D)).astype(np.float32), rng.standard_normal((N, O)).astype(np.float32)
            p = dict(make_layer(cfg).named_parameters())
            arrays.update({f"{c}/x": x, f"{c}/dy": dy, f"{c}/Wg": p["gate.W"], f"{c}/bg": p["gate.b"],
                           f"{c}/W1": p["experts.W1"], f"{c}/b1": p["experts.b1"], f"{c}/W2": p["experts.W2"],
                           f"{c}/b2": p["experts.b2"]})
        np.savez(Path(tmp) / "in.npz", **arrays)
        return run_torch_worker(torch_python, "_torch_moe.py", Path(tmp) / "in.npz", "the torch benchmark")


def run_torch_worker(torch_python, script, path_in, what):
    """Run experiments/``script`` with ``torch_python`` on ``path_in`` (its output goes beside it, out.json);
    returns what it wrote. RuntimeError with its stderr when it fails."""
    path_out = Path(path_in).parent / "out.json"
    done = subprocess.run([torch_python, str(Path(__file__).resolve().parent / script), str(path_in), str(path_out)],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr}")
    return json.loads(path_out.read_text())


def summary(values):
    """'median [min-max]' of a list of numbers."""
    return f"{np.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def verdict(values, target):
    return "PASS" if float(np.median(values)) <= target else "MISS"


def layer_section(args, xp, sync, threads, torch_python, rounds, repeats):
    configs = QUICK if args.quick else CONFIGS
    mlp = [c for c in configs if c[6] == "relu"]
    per_round = {c: [] for c in configs}  # [(times, counts)] per round
    torch_ms = []  # per round, ms per MLP config
    progress = Progress(rounds * len(configs) * repeats, what="bench layer", every=5.0, file=sys.stderr)
    for r in range(rounds):
        for cfg in configs:
            per_round[cfg].append(bench_config(cfg, repeats, xp, sync, progress))
        if torch_python:
            out = torch_round(mlp, repeats, threads, torch_python)
            torch_ms.append(out["ms"])
            torch_version = out["torch"]
    print(f"\n1. The layer, forward + backward, float32: ms are medians over {rounds} rounds of the per-round "
          f"medians of {repeats} repeats; ratios are per round, median [min-max] over rounds")
    cols = f"{'torch ms':>9} | {'ours/torch':>17} " if torch_python else ""
    head = (f"{'N':>6} {'D':>4} {'H':>5} {'O':>4} {'E':>3} {'K':>2} {'experts':>7} | {'sparse ms':>9} {'dense ms':>9} "
            f"{'floor ms':>9} {cols}| {'sparse/floor':>17} {'dense/sparse':>18} | rows per expert")
    print(head)
    print("-" * len(head))
    ratios = {}
    for i, cfg in enumerate(configs):
        t = [times for times, _ in per_round[cfg]]
        counts = per_round[cfg][0][1]
        med = {k: float(np.median([x[k] for x in t])) for k in t[0]}
        ratios[cfg] = {"floor": [x["sparse"] / x["floor"] for x in t], "dense": [x["dense"] / x["sparse"] for x in t]}
        line = (" ".join(f"{v:>{w}}" for v, w in zip(cfg, (6, 4, 5, 4, 3, 2, 7)))
                + f" | {med['sparse']:>9.2f} {med['dense']:>9.2f} {med['floor']:>9.2f} ")
        if torch_python:
            if cfg in mlp:
                j = mlp.index(cfg)
                ratios[cfg]["torch"] = [x["sparse"] / ms[j] for x, ms in zip(t, torch_ms)]
                line += f"{float(np.median([ms[j] for ms in torch_ms])):>9.2f} | {summary(ratios[cfg]['torch']):>17} "
            else:
                line += f"{'-':>9} | {'-':>17} "
        line += (f"| {summary(ratios[cfg]['floor']):>17} {summary(ratios[cfg]['dense']):>18} | "
                 f"{counts.min()}-{counts.max()}")
        print(line, flush=True)
    if torch_python:
        print(f"(torch {torch_version} from {torch_python})")
    print("\nWhere the sparse layer's time goes (ms, medians over every repeat of every round): the gate's passes"
          "\n(with its three GEMMs timed alone in the floor), the experts' grouped passes (gathering their rows,"
          "\ntheir products and element-wise work,) beside their floor GEMMs, and the rest"
          "\n(input check, top-k, grouping by expert, the weighted combine and its gradient)")
    head = (f"{'N':>6} {'E':>3} {'K':>2} {'experts':>7} | {'sparse':>7} {'gate':>6} {'its GEMMs':>9} | {'experts':>8} "
            f"{'their GEMMs':>11} {'other':>8} | {'rest':>6}")
    print(head)
    print("-" * len(head))
    for cfg in configs:
        N, D, H, O, E, K, act = cfg
        t = {k: float(np.median([x[0][k] for x in per_round[cfg]])) for k in per_round[cfg][0][0]}
        print(f"{N:>6} {E:>3} {K:>2} {act:>7} | {t['sparse']:>7.2f} {t['gate']:>6.2f} {t['gate GEMMs']:>9.2f} | "
              f"{t['experts']:>8.2f} {t['expert GEMMs']:>11.2f} {t['element-wise']:>8.2f} | {t['rest']:>6.2f}")
    targets = []
    for cfg, target in zip(configs[:3], FLOOR_TARGETS):
        targets.append((f"layer N={cfg[0]} E={cfg[4]} K={cfg[5]}: sparse / floor <= {target}",
                        ratios[cfg]["floor"], target))
    if torch_python:
        for cfg in configs[:3]:
            targets.append((f"layer N={cfg[0]} E={cfg[4]} K={cfg[5]}: numpy_moe / torch <= {TORCH_TARGET}",
                            ratios[cfg]["torch"], TORCH_TARGET))
    return targets


def torch_sweep_round(shapes, sizes, repeats, threads, torch_python):
    """PyTorch's dense and top-k layers (both dispatches) across the batch sizes: µs per sample, one subprocess
    (experiments/_torch_sweep.py); returns its {"us": {"S/N": {...}}, "threads", "torch"}."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"shapes": [list(s[:5]) for s in shapes], "sizes": list(sizes), "repeats": repeats, "threads": threads}
        (Path(tmp) / "in.json").write_text(json.dumps(spec))
        return run_torch_worker(torch_python, "_torch_sweep.py", Path(tmp) / "in.json", "the torch sweep")


def sweep_section(args, rounds, out, threads=1, torch_python=None):
    """Top-k against dense at batch sizes 16..16384: time per sample; returns the targets. With torch, PyTorch's
    own dense and top-k layers of the same shapes are timed beside (a reference, not a target)."""
    import matplotlib.pyplot as plt

    sizes = [16, 64, 256] if args.quick else SWEEP_N
    shapes = SWEEP_SHAPES
    progress = Progress(rounds * len(shapes) * len(sizes), what="bench sweep", every=5.0, file=sys.stderr)
    per_sample = {(s, kind, n): [] for s in range(len(shapes)) for kind in ("topk", "dense") for n in sizes}
    torch_us = []  # per round, torch_sweep_round's answer
    for r in range(rounds):
        for s, (D, H, O, E, K, label) in enumerate(shapes):
            layers = {"topk": MoE(D, O, E, hidden=H, seed=0, dtype="float32", top_k=K),
                      "dense": MoE(D, O, E, hidden=H, seed=0, dtype="float32")}
            for n in sizes:
                progress.step(f"{label}, N={n}, round {r + 1}")
                rng = np.random.default_rng(n)
                x = backend.asarray(rng.standard_normal((n, D)), dtype=np.float32)
                dy = backend.asarray(rng.standard_normal((n, O)), dtype=np.float32)
                inner = max(1, (256 if args.quick else 4096) // n)  # calls per timing: each lasts a few ms
                samples = {kind: [] for kind in layers}
                for layer in layers.values():
                    layer.forward(x)
                    layer.backward(dy)
                for _ in range(max(3, args.repeats or 7)):
                    for kind, layer in layers.items():
                        t0 = time.perf_counter()
                        for _ in range(inner):
                            layer.forward(x)
                            layer.backward(dy)
                        samples[kind].append((time.perf_counter() - t0) / (inner * n))
                for kind in layers:
                    per_sample[(s, kind, n)].append(1e6 * float(np.median(samples[kind])))
        if torch_python:
            print(f"[bench sweep] torch's layers, round {r + 1}", file=sys.stderr, flush=True)
            torch_us.append(torch_sweep_round(shapes, sizes, max(3, args.repeats or 7), threads, torch_python))
    print(f"\n2. Batch sizes: µs per sample, forward + backward, float32, median over {rounds} rounds; "
          "top-k / dense per round, median [min-max]"
          + ("; torch: its dense layer and its top-k layer, the faster of its sparse and dense dispatch per round "
             "(a reference, not a target)" if torch_us else ""))
    targets = []
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.5), squeeze=False)
    for s, (D, H, O, E, K, label) in enumerate(shapes):
        print(f"{label}")
        cols = f" | {'torch dense':>11} {'torch top-k':>11} | {'torch top-k/dense':>17}" if torch_us else ""
        print(f"{'N':>6} | {'dense µs':>9} {'top-k µs':>9} | {'top-k/dense':>17}" + cols)
        worst = []
        for n in sizes:
            d, t = per_sample[(s, "dense", n)], per_sample[(s, "topk", n)]
            ratio = [b / a for a, b in zip(d, t)]
            worst.append((float(np.median(ratio)), n, ratio))
            line = f"{n:>6} | {np.median(d):>9.2f} {np.median(t):>9.2f} | {summary(ratio):>17}"
            if torch_us:
                td, tt = torch_sweep_series(torch_us, s, n)
                line += (f" | {np.median(td):>11.2f} {np.median(tt):>11.2f} | "
                         f"{summary([b / a for a, b in zip(td, tt)]):>17}")
            print(line)
        m, n_worst, ratio = max(worst)
        targets.append((f"sweep {label}: top-k / dense <= 1.0 at every N (worst N={n_worst})", ratio, 1.0))
        ax = axes[0, s]
        for kind, color, name in (("dense", "#555555", "dense layer (all E experts)"),
                                  ("topk", "#e41a1c", f"top-{K} layer (dispatch='auto')")):
            med = [float(np.median(per_sample[(s, kind, n)])) for n in sizes]
            lo = [min(per_sample[(s, kind, n)]) for n in sizes]
            hi = [max(per_sample[(s, kind, n)]) for n in sizes]
            ax.plot(sizes, med, "o-", color=color, label=name)
            ax.fill_between(sizes, lo, hi, color=color, alpha=0.2)
        if torch_us:
            series = [torch_sweep_series(torch_us, s, n) for n in sizes]
            for j, (color, name) in enumerate((("#555555", "torch dense layer"),
                                               ("#e41a1c", f"torch top-{K} (its faster dispatch)"))):
                ax.plot(sizes, [float(np.median(v[j])) for v in series], "s--", color=color, alpha=0.7,
                        label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size N")
        ax.set_ylabel("µs per sample (forward + backward)")
        wins = [f"numpy_moe {faster_from(sizes, [ratio for _, _, ratio in worst])}"]
        if torch_us:
            torch_ratios = [[b / a for a, b in zip(*torch_sweep_series(torch_us, s, n))] for n in sizes]
            wins.append(f"torch {faster_from(sizes, torch_ratios)}")
        ax.set_title(f"{label}\ntop-k faster than dense: " + ", ".join(wins), fontsize=10)
        ax.legend()
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Where top-k pays: with 16 experts of 128 units it skips enough products to beat the dense layer "
                 "at small batches too;\nwith 4 experts of 16 units the products it skips cost less than choosing "
                 "them, except at the largest batches")
    fig.tight_layout()
    savefig(fig, out, "bench_batch.png")
    return targets


def faster_from(sizes, ratios):
    """'from N = n' for the smallest n from which every median of ``ratios`` (top-k / dense per round, one list
    per size) is below 1, 'at every N' when that is the first size, 'at no N' when the last is not."""
    below = [float(np.median(r)) < 1 for r in ratios]
    if not below[-1]:
        return "at no N"
    first = len(below) - 1
    while first > 0 and below[first - 1]:
        first -= 1
    return "at every N" if first == 0 else f"from N = {sizes[first]}"


def torch_sweep_series(torch_us, s, n):
    """Per round: torch's dense layer and its top-k layer (the faster of its two dispatches), µs per sample."""
    rows = [round_["us"][f"{s}/{n}"] for round_ in torch_us]
    return [r["dense"] for r in rows], [min(r["topk_sparse"], r["topk_dense"]) for r in rows]


def models_section(args, rounds, threads, torch_python):
    """The post models (modules present in this folder only); returns the targets."""
    import importlib

    targets = []
    for name in ("_bench_classic", "_bench_images"):
        try:
            module = importlib.import_module(f"experiments.{name}")
        except ModuleNotFoundError:
            continue
        kwargs = {"rounds": rounds, "quick": args.quick}
        if name == "_bench_images":
            kwargs.update(threads=args.threads, torch_python=torch_python)
        rows = module.measure(**kwargs)
        print(f"\n3. {module.__doc__.strip().splitlines()[0]}")
        for row in rows:
            ref = "-" if row.get("ref_ms") is None else f"{row['ref_ms']:.1f}"
            print(f"{row['name']}: ours {row['ours_ms']:.1f} ms, reference {ref} ms, ours/reference "
                  f"{row['ratio_median']:.2f} [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]"
                  if row.get("ratio_median") is not None else f"{row['name']}: ours {row['ours_ms']:.1f} ms "
                  "(no reference: torch not found)")
            if row.get("ratio_median") is not None:
                targets.append((f"{row['name']}: ours / reference <= {row['target']}",
                                [row["ratio_min"], row["ratio_median"], row["ratio_max"]], row["target"]))
    return targets


def main(argv=None):
    args = parse_args(argv, __doc__, extra=options)
    previous = backend.get_backend()  # put back at the end: a caller (or a test) in this process keeps its backend
    backend.set_backend(args.backend)
    xp = backend.get_array_module()
    if args.backend == "cupy":
        sync = xp.cuda.Device().synchronize
    else:
        def sync():
            pass
    from threadpoolctl import threadpool_info, threadpool_limits
    if args.threads:
        threadpool_limits(args.threads, user_api="blas")
    threads = args.threads or min([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"] or [1])
    rounds = args.rounds or (1 if args.quick else 5)
    repeats = args.repeats or (1 if args.quick else 7)
    torch_python = None if args.backend == "cupy" or args.quick else find_torch_python(args.torch_python)
    from numpy_moe import workers
    spin = workers.blas_spin_exponent()
    restore, refused = None, None
    if args.blas_spin == "short" and spin is not None and spin > workers.SHORT_SPIN:
        try:
            restore = workers.set_blas_spin(workers.SHORT_SPIN)  # put back at the end: studies may follow in-process
        except RuntimeError as err:  # an OpenBLAS without the two functions (older builds): measure as loaded
            refused = str(err)
        spin = workers.blas_spin_exponent()
    if refused:
        print(f"--blas-spin short not possible here ({refused}): OpenBLAS's spin stays as loaded")
    try:
        return _run(args, xp, sync, threads, rounds, repeats, torch_python, workers, spin, restore)
    finally:
        backend.set_backend(previous)
        if restore is not None:
            workers.set_blas_spin(restore)


def _run(args, xp, sync, threads, rounds, repeats, torch_python, workers, spin, restore):
    print(f"numpy_moe benchmark: backend {args.backend}, {threads} BLAS threads"
          f"{', torch too' if torch_python else ''}, "
          f"{workers.n_threads()} expert threads (numpy_moe.workers), {rounds} rounds x {repeats} repeats"
          + ("" if torch_python else "; torch not found: no torch columns"))
    if spin is None:
        how = "(not OpenBLAS with pthreads: unknown)"
    elif restore is not None:
        how = f"2**{spin} cycles after a product (set for this run by workers.set_blas_spin; 2**{restore} as loaded)"
    elif spin > workers.SHORT_SPIN:
        how = (f"2**{spin} cycles after a product (as loaded; --blas-spin short, the default, lets the experts run "
               "on threads, see numpy_moe/workers.py)")
    else:
        how = f"2**{spin} cycles after a product (OPENBLAS_THREAD_TIMEOUT, as loaded)"
    print("OpenBLAS's idle threads spin " + how)
    targets = []
    try:
        if args.only in (None, "layer"):
            targets += layer_section(args, xp, sync, threads, torch_python, rounds, repeats)
    finally:
        backend.set_backend("numpy")  # the sweep and the models sections run on NumPy (main puts the caller's back)
    if args.backend == "numpy" and args.only in (None, "sweep"):
        targets += sweep_section(args, rounds, args, threads, torch_python)
    if args.backend == "numpy" and args.only in (None, "models"):
        targets += models_section(args, rounds, threads, torch_python)
    if args.backend == "cupy":  # the floor is the GPU's GEMMs there, and the targets were set for one CPU core pair
        print("\nIssue 17's targets are for the CPU (NumPy with OpenBLAS, side by side with torch on the CPU); a "
              "--backend cupy run is not judged against them")
        return []
    print("\nTargets (issue 17), median over rounds [range]:")
    for name, values, target in targets:
        print(f"  {verdict(values, target)}  {name}: {summary(values)}")
    return targets


if __name__ == "__main__":
    main()
