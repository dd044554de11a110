"""Expert parallelism over MPI: experts sharded over processes, tokens moved by all-to-all (MATH.md §2.6).

Needs the optional extra ``pip install 'numpy-moe[mpi]'`` (mpi4py and the MPICH wheel, which provides
``mpiexec``); ``import numpy_moe`` never needs it, and ``numpy_moe.parallel`` imports mpi4py only when a
communicator is first made, raising an ImportError that says how to install it. Run a script on N
processes with ``mpiexec -n N python script.py``.

- :mod:`numpy_moe.parallel.comm`: :class:`Comm`, the collectives the layer uses (Alltoall, Alltoallv,
  Allreduce, Exscan, Allgather) with the bytes each rank sends counted; :func:`abort_on_error`.
- :mod:`numpy_moe.parallel.moe`: :class:`ExpertParallelMoE`, the MoE layer with its experts split over
  the ranks, equal to :class:`numpy_moe.moe.MoE` on the concatenated batch.
"""
from .comm import Comm, abort_on_error, mpi
from .moe import ExpertParallelMoE

__all__ = ["Comm", "ExpertParallelMoE", "abort_on_error", "mpi"]
