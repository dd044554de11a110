"""PyTorch's sparse dispatch of one top-k MoE layer, timed for ``experiments/bench.py`` (run in a subprocess).

Usage: ``python experiments/_torch_moe.py IN.npz OUT.json`` with a Python that has torch. Imports only
torch, numpy and the standard library, so any environment with torch runs it; the project never depends
on torch.

IN.npz holds ``configs`` (C, 6: N, D, H, O, E, K), ``repeats``, ``threads`` and, for each config c, the
layer's float32 weights and data under ``c/x``, ``c/dy``, ``c/Wg`` (D, E), ``c/bg`` (E,), ``c/W1`` (E, D, H),
``c/b1`` (E, H), ``c/W2`` (E, H, O), ``c/b2`` (E, O): the same numbers the numpy_moe layer holds, so both
route the same way. OUT.json gets ``{"ms": [median ms per config], "threads": T, "torch": version}``.

The layer is written the way PyTorch MoE code commonly dispatches (as in the issue that asked for this
comparison): gate ``Linear``, softmax, ``topk`` (softmax-then-top-k, no renormalisation, as numpy_moe's
default), an argsort of the flattened expert ids, one ``index_select`` of the input rows, per expert
``Linear``-ReLU-``Linear`` on its block (``F.linear`` on the expert's own weight slices), the weighted rows
added back with ``index_add_``; forward and backward by autograd, gradients of every weight and of x.
"""
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


def build(data, c):
    """Leaf tensors of config c: x, dy and the weights (requires_grad), laid out for F.linear."""
    t = {k: torch.from_numpy(np.ascontiguousarray(data[f"{c}/{k}"])) for k in ("x", "dy", "Wg", "bg", "W1", "b1", "W2",
                                                                              "b2")}
    p = {"x": t["x"].clone(), "Wg": t["Wg"].T.contiguous(), "bg": t["bg"].clone(),
         "W1": t["W1"].transpose(1, 2).contiguous(), "b1": t["b1"].clone(),  # (E, H, D): F.linear's (out, in)
         "W2": t["W2"].transpose(1, 2).contiguous(), "b2": t["b2"].clone()}
    for v in p.values():
        v.requires_grad_(True)
    return p, t["dy"]


def step(p, dy, top_k):
    """One forward + backward of the sparse layer."""
    x = p["x"]
    for v in p.values():
        v.grad = None
    N, E = x.shape[0], p["Wg"].shape[0]
    probs = torch.softmax(F.linear(x, p["Wg"], p["bg"]), dim=-1)  # (N, E)
    weight, expert = torch.topk(probs, top_k, dim=-1)  # (N, K)
    flat = expert.reshape(-1)
    order = torch.argsort(flat, stable=True)
    sample = order // top_k  # the sample of each grouped row
    counts = torch.bincount(flat, minlength=E).tolist()
    xs = x.index_select(0, sample)  # (N K, D)
    ws = weight.reshape(-1).index_select(0, order)[:, None]  # (N K, 1)
    outs, lo = [], 0
    for e, n in enumerate(counts):
        if n:
            h = torch.relu(F.linear(xs[lo:lo + n], p["W1"][e], p["b1"][e]))
            outs.append(F.linear(h, p["W2"][e], p["b2"][e]))
        lo += n
    y = torch.zeros(N, p["W2"].shape[1], dtype=x.dtype).index_add_(0, sample, torch.cat(outs) * ws)
    y.backward(dy)


def main(path_in, path_out):
    data = np.load(path_in)
    threads = int(data["threads"])
    torch.set_num_threads(threads)
    repeats = int(data["repeats"])
    result = []
    for c, cfg in enumerate(data["configs"].tolist()):
        p, dy = build(data, c)
        step(p, dy, cfg[5])  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(p, dy, cfg[5])
            times.append(time.perf_counter() - t0)
        result.append(1e3 * statistics.median(times))
    with open(path_out, "w") as f:
        json.dump({"ms": result, "threads": torch.get_num_threads(), "torch": torch.__version__}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
