"""PyTorch's top-k and dense MoE layers timed across batch sizes, for ``experiments/bench.py``'s sweep (run in a
subprocess).

Usage: ``python experiments/_torch_sweep.py IN.json OUT.json`` with a Python that has torch. Imports only
torch, numpy and the standard library; the project never depends on torch.

IN.json: ``{"shapes": [[D, H, O, E, K], ...], "sizes": [N, ...], "repeats": R, "threads": T}``.
OUT.json: ``{"us": {"S/N": {"dense": µs, "topk_sparse": µs, "topk_dense": µs}}, "threads": T, "torch": version}``,
microseconds per sample of one forward + backward (autograd, gradients of every weight and of x), the median
of R timings of enough steps to last a few milliseconds.

The layers, float32, written as PyTorch MoE code commonly writes them:

- dense: ``g = softmax(x W_g + b_g)`` (N, E), every expert a ``Linear``-ReLU-``Linear`` on every sample (the
  E first layers as one product x [W1_1 ... W1_E], the second as one batched product), ``y = sum_e g_e out_e``;
- top-k, sparse dispatch: softmax, ``topk`` (softmax-then-top-k, no renormalisation), an argsort of the
  expert ids, ``index_select`` of the rows, each expert on its own rows, ``index_add_`` (as
  ``experiments/_torch_moe.py``);
- top-k, dense dispatch: the dense layer's experts on every sample, the top-k weights scattered into an
  (N, E) matrix of zeros in place of the full softmax.
"""
import json
import statistics
import sys
import time

import numpy as np
import torch


def params(D, H, O, E, seed=0):
    """The layer's weights as leaf tensors (requires_grad), drawn from a NumPy generator."""
    rng = np.random.default_rng(seed)
    shapes = {"Wg": (D, E), "bg": (E,), "W1": (E, D, H), "b1": (E, H), "W2": (E, H, O), "b2": (E, O)}
    p = {k: torch.from_numpy((0.1 * rng.standard_normal(s)).astype(np.float32)) for k, s in shapes.items()}
    for v in p.values():
        v.requires_grad_(True)
    return p


def experts_dense(x, p):
    """Every expert on every sample: (E, N, O)."""
    E, D, H = p["W1"].shape
    h = x @ p["W1"].permute(1, 0, 2).reshape(D, E * H) + p["b1"].reshape(-1)  # (N, E H)
    h = torch.relu(h).reshape(-1, E, H).transpose(0, 1)  # (E, N, H)
    return torch.bmm(h, p["W2"]) + p["b2"][:, None, :]  # (E, N, O)


def dense_step(x, dy, p, top_k):
    g = torch.softmax(x @ p["Wg"] + p["bg"], dim=-1)  # (N, E)
    torch.einsum("ne,eno->no", g, experts_dense(x, p)).backward(dy)


def topk_dense_step(x, dy, p, top_k):
    probs = torch.softmax(x @ p["Wg"] + p["bg"], dim=-1)
    weight, expert = torch.topk(probs, top_k, dim=-1)
    g = torch.zeros_like(probs).scatter(1, expert, weight)  # (N, E), zero off the top k
    torch.einsum("ne,eno->no", g, experts_dense(x, p)).backward(dy)


def topk_sparse_step(x, dy, p, top_k):
    N, E = x.shape[0], p["Wg"].shape[1]
    probs = torch.softmax(x @ p["Wg"] + p["bg"], dim=-1)
    weight, expert = torch.topk(probs, top_k, dim=-1)
    flat = expert.reshape(-1)
    order = torch.argsort(flat, stable=True)
    sample = order // top_k
    counts = torch.bincount(flat, minlength=E).tolist()
    xs = x.index_select(0, sample)
    ws = weight.reshape(-1).index_select(0, order)[:, None]
    outs, lo = [], 0
    for e, n in enumerate(counts):
        if n:
            h = torch.relu(xs[lo:lo + n] @ p["W1"][e] + p["b1"][e])
            outs.append(h @ p["W2"][e] + p["b2"][e])
        lo += n
    y = torch.zeros(N, p["W2"].shape[2], dtype=x.dtype).index_add_(0, sample, torch.cat(outs) * ws)
    y.backward(dy)


STEPS = {"dense": dense_step, "topk_sparse": topk_sparse_step, "topk_dense": topk_dense_step}


def main(path_in, path_out):
    with open(path_in) as f:
        spec = json.load(f)
    torch.set_num_threads(int(spec["threads"]))
    result = {}
    for s, (D, H, O, E, K) in enumerate(spec["shapes"]):
        p = params(D, H, O, E)
        for n in spec["sizes"]:
            rng = np.random.default_rng(n)
            x = torch.from_numpy(rng.standard_normal((n, D)).astype(np.float32)).requires_grad_(True)
            dy = torch.from_numpy(rng.standard_normal((n, O)).astype(np.float32))
            inner = max(1, 4096 // n)
            samples = {kind: [] for kind in STEPS}
            for step in STEPS.values():
                step(x, dy, p, K)  # warm-up
            for _ in range(int(spec["repeats"])):
                for kind, step in STEPS.items():  # interleaved, as the numpy_moe sweep times its two layers
                    t0 = time.perf_counter()
                    for _ in range(inner):
                        for v in list(p.values()) + [x]:
                            v.grad = None
                        step(x, dy, p, K)
                    samples[kind].append((time.perf_counter() - t0) / (inner * n))
            result[f"{s}/{n}"] = {kind: 1e6 * statistics.median(v) for kind, v in samples.items()}
    with open(path_out, "w") as f:
        json.dump({"us": result, "threads": torch.get_num_threads(), "torch": torch.__version__}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
