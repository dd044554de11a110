"""The least a top-k layer can add to the dense layer's step: its selection alone, timed beside both layers.

Usage: ``python experiments/_selection_bound.py`` from the root of the repository (the README's Benchmark,
section 2, quotes its output). For 4 experts of 16 units (``MoEClassifier``'s layer on the digits, D = 64,
O = 10, K = 2, float32) and N = 16 to 1024 it times, interleaved, 7 times each:

- the selection: a stable argsort of the logits, a gather of the kept probabilities and a scatter of them into
  an (N, E) array of zeros (both through the flat storage), and the backward's gather of dL/dg at the kept
  pairs (:func:`selection`);
- one forward + backward step of the dense layer (``top_k=None``) and of the top-k layer (``top_k=2``).

A top-k layer does all the dense layer's work at these sizes (dense dispatch) and its selection besides, so
``1 + selection / dense`` bounds its top-k / dense ratio from below. OpenBLAS's idle threads sleep within
2**20 cycles, as the benchmark sets them.
"""
import sys
import time
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path.insert(0, str(_here.parent))

import numpy as np

from numpy_moe import MoE, workers

D, H, O, E, K = 64, 16, 10, 4, 2


def selection(logits, probs, dg, top_k):
    """The top-k selection and its backward in the fewest NumPy calls found: (N, E) logits, probs, dg ->
    (g, dweight): g (N, E) the kept probabilities (zero elsewhere), dweight (N, K) dg at the kept pairs, best
    first (lowest index first among equal logits, as numpy_moe's top-k)."""
    N, E_ = logits.shape
    flat = np.argsort(-logits, axis=1, kind="stable")[:, :top_k] + np.arange(0, N * E_, E_)[:, None]
    g = np.zeros((N, E_), dtype=probs.dtype)
    g.ravel()[flat] = probs.ravel()[flat]
    return g, dg.ravel()[flat]


def _per_call(f, number):
    t0 = time.perf_counter()
    for _ in range(number):
        f()
    return (time.perf_counter() - t0) / number * 1e6


def measure(sizes=(16, 64, 256, 1024), repeats=7, calls=8000):
    """{N: {"selection", "dense", "topk": µs per call (median of ``repeats``), "dispatch": the top-k layer's}}."""
    result = {}
    for n in sizes:
        rng = np.random.default_rng(n)
        x, dy = rng.standard_normal((n, D)).astype(np.float32), rng.standard_normal((n, O)).astype(np.float32)
        logits = rng.standard_normal((n, E)).astype(np.float32)
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs /= probs.sum(axis=1, keepdims=True)
        dg = rng.standard_normal((n, E)).astype(np.float32)
        dense = MoE(D, O, E, hidden=H, seed=0, dtype="float32")
        topk = MoE(D, O, E, hidden=H, seed=0, dtype="float32", top_k=K)

        def step(layer):
            layer.forward(x)
            layer.backward(dy)

        funcs = {"selection": lambda: selection(logits, probs, dg, K), "dense": lambda: step(dense),
                 "topk": lambda: step(topk)}
        for f in funcs.values():
            f()
        samples = {name: [] for name in funcs}
        number = max(2, calls // n)
        for _ in range(repeats):
            for name, f in funcs.items():
                samples[name].append(_per_call(f, number))
        result[n] = {name: float(np.median(v)) for name, v in samples.items()}
        result[n]["dispatch"] = topk.dispatch_now
    return result


def main():
    restore = workers.set_blas_spin(workers.SHORT_SPIN) if (workers.blas_spin_exponent() or 0) > workers.SHORT_SPIN \
        else None
    try:
        for n, r in measure().items():
            print(f"N={n:>5}: selection {r['selection']:6.1f} µs, dense step {r['dense']:7.1f}, top-k step "
                  f"{r['topk']:7.1f} ({r['dispatch']} dispatch); 1 + selection / dense = "
                  f"{1 + r['selection'] / r['dense']:.3f}, top-k / dense = {r['topk'] / r['dense']:.2f}")
    finally:
        if restore is not None:
            workers.set_blas_spin(restore)


if __name__ == "__main__":
    main()
