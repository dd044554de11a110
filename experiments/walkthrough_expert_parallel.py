"""Walk-through: all-to-all dispatch on a batch small enough to print, rank by rank (run it under mpiexec).

Run it as ``mpiexec -n 2 python -m experiments walkthrough_expert_parallel`` (or ``-n 4``): every cell runs on
every rank, and ``show`` prints each rank's view in rank order. With one process (a notebook kernel,
``make experiments``) it still runs: there is one rank, and every token stays home. The cells follow
MATH.md §2.6: route, exchange the counts, exchange the rows (MPI_Alltoallv), run the experts, send the
outputs back and combine, then compare with the single-process MoE; then the capacity-padded buffers
(MPI_Alltoall) and the backward as the reverse exchange.
"""
# %% [markdown]
# ## 1. W ranks, four experts, three samples each
# Each rank owns E / W experts and its own samples. The gate is replicated, so every rank routes its
# own samples. We use linear experts (out = x W_e + b_e) and top-1 routing so that every number fits.

# %%
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import io

import numpy as np

from experiments._common import Progress, parse_args
from numpy_moe.moe import MoE
from numpy_moe.parallel import Comm, ExpertParallelMoE

args = parse_args(sys.argv[1:], __doc__, notebook=True)  # --quick and --out change nothing: it draws no figure
np.set_printoptions(precision=3, suppress=True)
comm = Comm()
W, rank = comm.size, comm.rank
E, D, O, N_PER_RANK = 4, 2, 2, 3
# Progress: one step per cell (7), reported by rank 0 only; the other ranks write theirs nowhere.
progress = Progress(7, what="walkthrough_expert_parallel", file=None if rank == 0 else io.StringIO())


def show(title, value):
    """Print every rank's ``value``, rank 0 first: rank 0 gathers them (mpiexec would interleave prints)."""
    values = comm.allgather(value)
    if rank == 0:
        print(f"\n{title}:")
        for r, v in enumerate(values):
            print(f"[rank {r}]\n{v}" if isinstance(v, np.ndarray) and v.ndim > 1 else f"[rank {r}] {v}")


X = np.random.default_rng(2).standard_normal((W * N_PER_RANK, D))  # the concatenated batch
x = X[rank * N_PER_RANK:(rank + 1) * N_PER_RANK]  # this rank's rows
layer = ExpertParallelMoE(D, O, E, seed=1, top_k=1)
y = layer.forward(x)
r = layer.routing
owner = r.expert // layer.n_local
show("my samples (global index), their expert, the rank that owns it",
     np.stack([rank * N_PER_RANK + r.sample, r.expert, owner], axis=1))
progress.step("1. route")

# %% [markdown]
# ## 2. Exchange the counts first (dropless mode)
# A rank cannot receive rows without knowing how many. Each rank tells every rank how many rows it
# will send to each of that rank's experts: an MPI_Alltoall of E / W integers per pair of ranks.

# %%
counts = layer.send_counts  # (E,) rows this rank sends to each expert
recv_counts = comm.alltoall(counts.reshape(W, layer.n_local))  # (W, E/W): row s came from rank s
show("rows I send to experts 0..E-1", counts)
show("rows I receive for my experts (one row per sending rank)", recv_counts)
progress.step("2. exchange the counts")

# %% [markdown]
# ## 3. Exchange the rows (MPI_Alltoallv)
# The rows are sorted by expert, so the rows for rank q's experts are one contiguous piece: piece q
# goes to rank q. The received rows arrive source rank by source rank.

# %%
g = layer.groups
send = x[g.sample]  # (G, D) sorted by expert
rows_out, rows_in = counts.reshape(W, layer.n_local).sum(axis=1), recv_counts.sum(axis=1)
received = comm.alltoallv(send, rows_out, rows_in)
show("rows I send (sorted by expert)", send)
show("rows I received (from rank 0 first)", received)
progress.step("3. exchange the rows")

# %% [markdown]
# ## 4. Run my experts, send the outputs back, combine
# Expert e (global index) is local expert e - first_expert. The outputs go back with the inverse
# exchange (the same Alltoallv with the counts swapped) and are weighted by the gate.

# %%
source_major = [(s, e) for s in range(W) for e in range(layer.n_local)]  # the order rows arrived in
starts = np.cumsum([0] + [recv_counts[s, e] for s, e in source_major])
out = np.empty((received.shape[0], O))
for (s, e), lo, hi in zip(source_major, starts[:-1], starts[1:]):
    out[lo:hi] = received[lo:hi] @ layer.experts.params["W"][e] + layer.experts.params["b"][e]
back = comm.alltoallv_inverse(out, rows_out, rows_in)  # (G, O), in my send order
mine = np.zeros((x.shape[0], O))
mine[g.sample] = back * r.weight[g.assignment][:, None]  # top-1: one row per sample
show("y by hand", mine)
show("largest difference from layer.forward(x)", np.abs(mine - y).max())
progress.step("4. experts, send back, combine")

# %% [markdown]
# ## 5. The same as one process on the concatenated batch
# The single-process MoE with the same seed, on all ranks' samples at once, gives the same rows.

# %%
ref = MoE(D, O, E, seed=1, top_k=1)
show("largest difference from MoE on the concatenated batch", np.abs(ref.forward(X)[
    rank * N_PER_RANK:(rank + 1) * N_PER_RANK] - y).max())
progress.step("5. compare with one process")

# %% [markdown]
# ## 6. Capacity-padded buffers (MPI_Alltoall)
# GShard's mode sends a fixed (E/W, C, D) block to every rank, rows beyond an expert's kept rows being
# zeros. C = ceil(N K cf / E) over all ranks' N samples; here cf = 1 gives C = ceil(6 / 4) = 2 on two
# ranks, so an expert chosen by three samples drops the last one in (choice, global position) order.

# %%
padded = ExpertParallelMoE(D, O, E, seed=1, top_k=1, mode="padded", capacity_factor=1.0)
padded.forward(x)
buf = np.zeros((E, padded.capacity, D))
buf[padded.expert_sorted, padded.slot] = x[padded.groups.sample]
show(f"my send buffer (E, C={padded.capacity}, D), block q of E/W experts goes to rank q", buf)
show("kept (False = dropped by the capacity rule)", padded.routing.kept)
progress.step("6. capacity-padded buffers")

# %% [markdown]
# ## 7. Backward: the reverse exchange
# An all-to-all only moves rows: it is a permutation P of all ranks' rows, so <P u, v> = <u, P⁻¹ v>.
# The backward of the dispatch is therefore the combine exchange run on the gradients.

# %%
v = np.random.default_rng(10 + rank).standard_normal(received.shape)
lhs = comm.allreduce(np.array([(received * v).sum()]))[0]
rhs = comm.allreduce(np.array([(send * comm.alltoallv_inverse(v, rows_out, rows_in)).sum()]))[0]
show("<a2a(x), v> and <x, a2a^-1(v)> summed over ranks", f"{lhs:.15f} {rhs:.15f}")
progress.step("7. backward")

# %% [markdown]
# ## Exercises
# Run each under mpiexec from the repository root, then check the outcome stated.
#
# 1. Run on four ranks (`mpiexec -n 4 python -m experiments walkthrough_expert_parallel`): each rank now
#    owns one expert, every "largest difference" still prints 0.0 on every rank, and with cf = 1 the
#    capacity is C = ceil(12 / 4) = 3, which drops 4 of the 12 samples in section 6.
# 2. In section 4, forget the gate's weight (`mine[g.sample] = back`): on two ranks the difference from
#    `layer.forward(x)` becomes 0.74 and 0.46. An all-to-all only moves rows; weighting them is the
#    combine's job.
# 3. In section 6, set `capacity_factor=0.5` (two ranks): C = ceil(6 x 0.5 / 4) = 1, the send buffers
#    shrink to (E, 1, D), and 3 of the 6 samples are dropped (`kept` reads [True False True] and
#    [True False False]).
