"""Run under ``mpiexec -n 2``: rank 1 raises between forward and backward; abort_on_error must end both.

Without it rank 0 would wait forever in the backward's first all-to-all. The test expects a non-zero exit
within its timeout and rank 1's message in the output.
"""
import numpy as np

from numpy_moe.parallel import Comm, ExpertParallelMoE, abort_on_error

with abort_on_error():
    comm = Comm()
    layer = ExpertParallelMoE(4, 2, 4, hidden=3, seed=0, top_k=2)
    y = layer.forward(np.random.default_rng(comm.rank).standard_normal((6, 4)))
    if comm.rank == 1:
        raise RuntimeError("rank 1 fails on purpose in the middle of a step")
    layer.backward(np.ones_like(y))  # rank 0 blocks here until the abort ends it
    print("rank 0 finished the step: the abort did not happen", flush=True)
