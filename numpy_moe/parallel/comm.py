"""The collectives of expert parallelism, on an MPI communicator, with every byte sent counted.

:class:`Comm` wraps an mpi4py communicator (``MPI.COMM_WORLD`` by default) and offers exactly what
:class:`~numpy_moe.parallel.moe.ExpertParallelMoE` needs:

- :meth:`Comm.alltoall`: a fixed block to every rank (``MPI_Alltoall``; GShard's capacity-padded
  dispatch);
- :meth:`Comm.alltoallv`: a variable number of rows to every rank (``MPI_Alltoallv``; MegaBlocks'
  dropless dispatch), and :meth:`Comm.alltoallv_inverse`, the same exchange run backwards;
- :meth:`Comm.allreduce` (sums: gate gradients, balance-loss statistics), :meth:`Comm.exscan`
  (exclusive prefix sums: a rank's first global sample, its capacity slots), :meth:`Comm.allgather`
  (small Python objects: batch sizes, error messages).

``bytes_sent`` counts the payload this rank sends to *other* ranks in all-to-alls (a block a rank keeps
for itself never leaves the process); MATH.md §2.6 gives the formula it must equal.

A collective blocks until every rank joins it, so a rank that raises between two collectives leaves
the others waiting forever. :meth:`Comm.check` turns an error on some ranks into the same ValueError on
every rank; :func:`abort_on_error` ends all ranks (``MPI_Abort``) with the failing rank's message for any
other exception.

MPI reads the arrays' memory directly: NumPy arrays work with any MPI; CuPy arrays would need a
CUDA-aware MPI build (the MPICH wheel is not one).
"""
import contextlib
import math
import sys
import traceback

from ..backend import get_array_module

INSTALL = ("numpy_moe.parallel needs mpi4py and an MPI library: pip install 'numpy-moe[mpi]' "
           "(or pip install mpi4py mpich), then run with mpiexec -n N python script.py")


def mpi():
    """The ``mpi4py.MPI`` module, imported on first use; ImportError with the install line otherwise."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise ImportError(INSTALL) from error
    return MPI


class Comm:
    """An MPI communicator with the collectives of expert parallelism; counts the bytes it sends.

    Parameters
    ----------
    comm : an mpi4py communicator, or None for ``MPI.COMM_WORLD``.

    Attributes
    ----------
    rank, size : this process's rank and the number of ranks W.
    bytes_sent : payload bytes this rank has sent to other ranks in all-to-alls (reset it at will).
    """

    def __init__(self, comm=None):
        self.MPI = mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.bytes_sent = 0

    def _type(self, a):
        """The predefined MPI datatype of ``a``'s elements."""
        return self.MPI._typedict[a.dtype.char]

    def alltoall(self, send):
        """send (W, ...): block w goes to rank w -> recv (W, ...): block w came from rank w."""
        xp = get_array_module(send)
        send = xp.ascontiguousarray(send)
        if send.shape[0] != self.size:
            raise ValueError(f"send has {send.shape[0]} blocks; expected one per rank ({self.size})")
        recv = xp.empty_like(send)
        self.comm.Alltoall([send, self._type(send)], [recv, self._type(recv)])
        self.bytes_sent += (self.size - 1) * send[0].nbytes
        return recv

    def alltoallv(self, send, counts, recv_counts):
        """Rows to every rank: send (sum(counts), F) -> recv (sum(recv_counts), F).

        counts : (W,) rows for each rank, in rank order (rows ``[c_0 + ... + c_{w-1}, ... + c_w)`` go to
        rank w). recv_counts : (W,) rows from each rank (known in advance: the counts were exchanged
        first). The received rows are in the order of their source ranks.
        """
        xp = get_array_module(send)
        send = xp.ascontiguousarray(send)
        counts, recv_counts = xp.asarray(counts, dtype=xp.int64), xp.asarray(recv_counts, dtype=xp.int64)
        width = math.prod(send.shape[1:])  # numbers per row
        recv = xp.empty((int(recv_counts.sum()), *send.shape[1:]), dtype=send.dtype)
        t = self._type(send)
        self.comm.Alltoallv([send, (counts * width, _starts(counts) * width), t],
                            [recv, (recv_counts * width, _starts(recv_counts) * width), t])
        self.bytes_sent += int(counts.sum() - counts[self.rank]) * width * send.itemsize
        return recv

    def alltoallv_inverse(self, recv, counts, recv_counts):
        """The exchange of :meth:`alltoallv` run backwards: every row returns to the rank it came from.

        recv : (sum(recv_counts), F), rows in the layout :meth:`alltoallv` delivered ->
        (sum(counts), F) in the layout that was sent. The two are inverse permutations of the rows of
        all ranks together, so each is also the other's transpose (the backward of a dispatch).
        """
        return self.alltoallv(recv, recv_counts, counts)

    def allreduce(self, a):
        """Elementwise sum of ``a`` over the ranks (every rank gets the sum)."""
        xp = get_array_module(a)
        a = xp.ascontiguousarray(a)
        out = xp.empty_like(a)
        self.comm.Allreduce([a, self._type(a)], [out, self._type(out)], op=self.MPI.SUM)
        return out

    def exscan(self, a):
        """Exclusive prefix sum over the ranks: rank r gets a_0 + ... + a_{r-1} (rank 0 gets zeros)."""
        xp = get_array_module(a)
        a = xp.ascontiguousarray(a)
        out = xp.zeros_like(a)
        self.comm.Exscan([a, self._type(a)], [out, self._type(out)], op=self.MPI.SUM)
        if self.rank == 0:  # MPI leaves rank 0's result undefined
            out[...] = 0
        return out

    def allgather(self, obj):
        """List of every rank's (small, picklable) ``obj``, in rank order."""
        return self.comm.allgather(obj)

    def check(self, error):
        """Collective error check: ``error`` is None or this rank's error message.

        Every rank calls it at the same point; if any rank reports an error, every rank raises the same
        ValueError listing each failing rank and its message, so no rank is left waiting in the next
        collective.
        """
        errors = self.allgather(None if error is None else str(error))
        failed = [f"rank {r}: {e}" for r, e in enumerate(errors) if e is not None]
        if failed:
            raise ValueError("; ".join(failed))


def _starts(counts):
    """Exclusive cumulative sum of ``counts``: where each rank's rows start."""
    return get_array_module(counts).cumsum(counts) - counts


@contextlib.contextmanager
def abort_on_error(comm=None):
    """Run a block on every rank; an exception on one rank aborts them all with its message.

    Without it a rank that raises between collectives leaves the others blocked in their next
    collective forever. On an exception this prints ``rank r of W failed:`` and the traceback to stderr,
    then calls ``MPI_Abort``, which ends every rank (``mpiexec`` exits non-zero). ``SystemExit`` and
    ``KeyboardInterrupt`` are not caught. Use it around a training script's body::

        with abort_on_error():
            main()
    """
    MPI = mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    try:
        yield
    except Exception:
        sys.stderr.write(f"rank {comm.Get_rank()} of {comm.Get_size()} failed:\n{traceback.format_exc()}")
        sys.stderr.flush()
        comm.Abort(1)
