"""Run under ``mpiexec -n W``: ExpertParallelMoE equals the single-process MoE on the concatenated batch.

Every rank builds the single-process MoE on the whole batch (the reference) and the expert-parallel layer
on its own rows, then compares its share: outputs, the balance losses, the input gradient, the gate's
gradient (summed over ranks) and its own experts' gradients; the kept mask of the capacity-padded mode
against the single-process rule's, assignment by assignment; the bytes each rank sent against the
formula of MATH.md §2.6; the all-to-all against its adjoint; and, with ``--gradcheck``, every gradient
against central differences with all ranks perturbing together. Any failed check raises, which aborts
every rank with the message (``abort_on_error``). Rank 0 prints ``RESULT <json>``: the worst relative error
of each quantity over all configurations and ranks, per mode.
"""
import json
import sys

import numpy as np

from numpy_moe.gradcheck import rel_error
from numpy_moe.moe import MoE
from numpy_moe.parallel import Comm, ExpertParallelMoE, abort_on_error

TOL = 1e-12  # float64: the two computations differ only in the order of floating-point sums

CONFIGS = [  # (name, MoE keyword arguments, capacity factor of the padded mode), 4 experts each
    ("top2-vmoe", dict(hidden=5, top_k=2, noise="vmoe",
                       balance={"importance": 0.1, "load": 0.1, "switch": 0.05, "z_loss": 0.01}), 0.75),
    ("top2-shazeer", dict(hidden=None, top_k=2, gate="topk_then_softmax", noise="shazeer",
                          balance={"importance": 0.1, "load": 0.1, "seed000": 0.01}), 1.0),
    ("top1-switch", dict(hidden=5, top_k=1, balance={"switch": 0.01, "z_loss": 0.001}), 1.0),
    ("top2-batch-priority", dict(hidden=5, top_k=2, batch_priority=True, balance={"importance": 0.1}), 0.75),
    ("expert-choice", dict(hidden=5, router="expert_choice", capacity_factor=1.5,
                           balance={"importance": 0.1, "z_loss": 0.01}), None),
]
SIZES = {1: [24], 2: [15, 9], 4: [8, 0, 10, 6]}  # samples per rank: unequal, one rank with none


def global_max(comm, value):
    return comm.comm.allreduce(float(value), op=comm.MPI.MAX)


def distributed_rel(comm, a, b):
    """rel_error of the concatenation of every rank's a against that of b."""
    diff = global_max(comm, np.abs(a - b).max() if a.size else 0.0)
    scale = global_max(comm, max(np.abs(a).max(), np.abs(b).max()) if a.size else 0.0)
    return diff / max(1e-12, scale)


def expected_bytes(layer, D, O):
    """MATH.md §2.6: the bytes this rank sends to other ranks in the forward and in the backward."""
    W, El, s = layer.world_size, layer.n_local, 8
    if layer.mode == "padded":
        block = (W - 1) * El * layer.capacity * s
        return block * (D + O), block * (O + D)
    mine = slice(layer.rank * El, (layer.rank + 1) * El)
    out = int(layer.send_counts.sum() - layer.send_counts[mine].sum())  # rows to other ranks' experts
    into = int(layer.rows_in.sum() - layer.rows_in[layer.rank])  # rows from other ranks to my experts
    counts = (W - 1) * El * 8  # the int64 counts exchanged first
    return counts + s * (D * out + O * into), s * (O * out + D * into)


def compare(comm, name, kw, mode, cf, errors):
    D, O, E = 6, 3, 4
    sizes = SIZES[comm.size]
    lo, hi = sum(sizes[:comm.rank]), sum(sizes[:comm.rank + 1])
    data = np.random.default_rng(7)
    X = data.standard_normal((sum(sizes), D))
    dY = data.standard_normal((sum(sizes), O))
    capacity = dict(capacity_factor=cf) if mode == "padded" and cf is not None else {}
    if mode == "dropless" and kw.get("batch_priority"):
        return  # batch priority orders samples for a capacity, which the dropless mode does not have
    ref = MoE(D, O, E, seed=3, **kw, **capacity)
    layer = ExpertParallelMoE(D, O, E, seed=3, **kw, **capacity, mode=mode)
    for step in range(2):  # the second step checks that the noise keeps following the reference's draws
        y_ref, y = ref.forward(X), layer.forward(X[lo:hi])
        dx_ref, dx = ref.backward(dY), layer.backward(dY[lo:hi])
    El, first = layer.n_local, layer.first_expert
    found = {"output": distributed_rel(comm, y, y_ref[lo:hi]),
             "balance loss": rel_error(layer.aux_loss, ref.aux_loss),
             "input gradient": distributed_rel(comm, dx, dx_ref[lo:hi])}
    for key, g in layer.gate.grads.items():
        found[f"gate.{key} gradient"] = rel_error(g, ref.gate.grads[key])
    for key, g in layer.experts.grads.items():
        found[f"experts.{key} gradient"] = distributed_rel(comm, g, ref.experts.grads[key][first:first + El])
    kept = np.concatenate(comm.allgather(layer.routing.kept))
    assert np.array_equal(kept, ref.routing.kept), f"{name} {mode}: kept masks differ"
    dropped = int((~ref.routing.kept).sum())
    if "router" not in kw:  # expert choice never drops: every expert takes exactly C samples
        assert (dropped > 0) == (mode == "padded"), f"{name} {mode}: {dropped} dropped assignments"
    assert ref.aux_loss > 0, f"{name}: the balance losses are zero, so the test would prove nothing"
    want = expected_bytes(layer, D, O)
    got = (layer.traffic["forward"], layer.traffic["backward"])
    assert got == want, f"{name} {mode}: rank {comm.rank} sent {got} bytes, the formula says {want}"
    for quantity, value in found.items():
        assert value <= TOL, f"{name} {mode}: {quantity} relative error {value:.2e} > {TOL}"
        errors[mode][quantity] = max(errors[mode].get(quantity, 0.0), value)
    errors[mode]["dropped"] = errors[mode].get("dropped", 0) + dropped


def check_adjoint(comm):
    """<a2a(x), y> = <x, a2a^-1(y)> summed over ranks, and a2a^-1(a2a(x)) = x exactly, for both exchanges."""
    rng = np.random.default_rng(100 + comm.rank)
    W, F = comm.size, 3
    counts = rng.integers(0, 4, W)
    recv_counts = comm.alltoall(counts.reshape(W, 1)).reshape(W)
    x, y = rng.standard_normal((counts.sum(), F)), rng.standard_normal((recv_counts.sum(), F))
    ax = comm.alltoallv(x, counts, recv_counts)
    assert np.array_equal(comm.alltoallv_inverse(ax, counts, recv_counts), x)
    lhs = comm.comm.allreduce(float((ax * y).sum()))
    rhs = comm.comm.allreduce(float((x * comm.alltoallv_inverse(y, counts, recv_counts)).sum()))
    assert abs(lhs - rhs) <= 1e-13 * max(1.0, abs(lhs)), f"Alltoallv adjoint: {lhs} vs {rhs}"
    xb, yb = rng.standard_normal((W, 2, F)), rng.standard_normal((W, 2, F))  # blocks: Alltoall is its own inverse
    assert np.array_equal(comm.alltoall(comm.alltoall(xb)), xb)
    lhs = comm.comm.allreduce(float((comm.alltoall(xb) * yb).sum()))
    rhs = comm.comm.allreduce(float((xb * comm.alltoall(yb)).sum()))
    assert abs(lhs - rhs) <= 1e-13 * max(1.0, abs(lhs)), f"Alltoall adjoint: {lhs} vs {rhs}"
    return abs(lhs - rhs) / max(1.0, abs(lhs))


def gradcheck(comm, mode, kw, errors, h=1e-6, tol=1e-7):
    """Central differences through the distributed layer: every rank runs each perturbed forward together.

    L = sum over ranks of <R_r, y_r> + aux. A gate coordinate is perturbed on every rank at once (it is
    replicated), an expert coordinate on its owner, an input coordinate on the rank that holds the sample.
    """
    D, O, E = 3, 2, 4
    sizes = SIZES[comm.size]
    rng = np.random.default_rng(11 + comm.rank)
    x = rng.standard_normal((sizes[comm.rank], D))
    R = rng.standard_normal((sizes[comm.rank], O))
    layer = ExpertParallelMoE(D, O, E, seed=5, **kw, mode=mode)
    layer.eval()  # no noise: a deterministic function; sigma still feeds the load loss

    def loss():
        y = layer.forward(x)
        assert np.array_equal(layer.routing.kept, kept) and np.array_equal(layer.routing.expert, expert), \
            "the routing changed under a perturbation; pick another seed"
        return comm.comm.allreduce(float((R * y).sum())) + layer.aux_loss

    layer.forward(x)
    kept, expert = layer.routing.kept.copy(), layer.routing.expert.copy()
    dx = layer.backward(R)
    analytic = {f"gate.{k}": g.copy() for k, g in layer.gate.grads.items()}
    analytic.update({f"experts.{k}": g.copy() for k, g in layer.experts.grads.items()})

    def numeric(array, owner):
        """d loss / d array, perturbed on rank ``owner`` (None: every rank); zeros on other ranks."""
        n = comm.comm.bcast(array.size if owner in (None, comm.rank) else 0, root=0 if owner is None else owner)
        g = np.zeros_like(array)
        for i in range(n):
            mine = owner in (None, comm.rank)
            if mine:
                old = array.flat[i]
                array.flat[i] = old + h
            fp = loss()
            if mine:
                array.flat[i] = old - h
            fm = loss()
            if mine:
                array.flat[i] = old
                g.flat[i] = (fp - fm) / (2 * h)
        return g

    worst = 0.0
    for key, p in layer.gate.params.items():
        worst = max(worst, rel_error(analytic[f"gate.{key}"], numeric(p, None)))
    for key, p in layer.experts.params.items():  # each rank's own experts, one owner at a time
        for owner in range(comm.size):
            g = numeric(p, owner)
            if owner == comm.rank:
                worst = max(worst, rel_error(analytic[f"experts.{key}"], g))
    for owner in range(comm.size):
        g = numeric(x, owner)
        if owner == comm.rank and x.size:
            worst = max(worst, rel_error(dx, g))
    worst = global_max(comm, worst)
    assert worst <= tol, f"gradient check ({mode}, {kw}): worst relative error {worst:.2e} > {tol}"
    errors[mode]["finite differences"] = max(errors[mode].get("finite differences", 0.0), worst)


def main(argv):
    comm = Comm()
    errors = {"dropless": {}, "padded": {}}
    for mode in ("dropless", "padded"):
        for name, kw, cf in CONFIGS:
            compare(comm, name, kw, mode, cf, errors)
        if "--gradcheck" in argv:
            top2 = dict(hidden=3, top_k=2, noise="vmoe", balance={"importance": 0.1, "load": 0.1, "z_loss": 0.01})
            gradcheck(comm, mode, dict(top2, capacity_factor=1.0) if mode == "padded" else top2, errors)
            if mode == "dropless":
                gradcheck(comm, mode, dict(hidden=3, router="expert_choice", capacity_factor=1.5,
                                           balance={"importance": 0.1}), errors)
    errors["adjoint"] = check_adjoint(comm)
    if comm.rank == 0:
        print("RESULT " + json.dumps(errors), flush=True)


if __name__ == "__main__":
    with abort_on_error():
        main(sys.argv[1:])
