"""Run independent blocks of work (one expert's rows each) on several CPU threads at once.

NumPy runs its element-wise operations (bias, ReLU, masks, gathers) on one core, while BLAS spreads each
matrix product over all of them. A sparse MoE layer has E independent blocks of work, one per expert, so
it can do better: run the experts concurrently, each on one thread with single-threaded BLAS. Then every
part of an expert's pass, its products and its element-wise work, uses all the cores, and small products
do not pay BLAS's per-call thread synchronisation. NumPy releases the GIL inside its matrix products and
its element-wise loops, so Python threads run them in parallel.

:func:`run_blocks` is the only entry point. It is off by default: blocks run one after the other, each
with BLAS's own threads. ``NUMPY_MOE_THREADS=T`` (T >= 2) turns it on. Measured on the 2-core development
machine (forward + backward of the benchmark's three layers, float32, medians of 15, interleaved, three
alternations), running the experts on two threads with single-threaded BLAS was slower than running them
in order with two-threaded BLAS: 156-176 against 118-144 ms (N=4096, E=8), 79-90 against 69-73 ms
(N=16384, E=16), 78-100 against 52-59 ms (N=1024, E=4), and worse still whenever another process used a
core (a block waiting on a busy core holds up the whole layer, where BLAS's own threads share the work
out). So it stays an option for machines where it wins; measure before turning it on. On CuPy, or with one thread, blocks run one after the other in the
calling thread. Results are identical either way: each block writes only its own rows and its own
expert's gradients, and every block computes exactly what it computes alone.

While blocks run, BLAS is limited to one thread for the whole process (OpenBLAS's setting is global) and
restored afterwards; do not run two layers from two of your own threads at the same time.
"""
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

_state = {"blas": None, "pool": None, "size": 0}
_lock = threading.Lock()


def _blas_controllers():
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (found once)."""
    if _state["blas"] is None:
        try:
            from threadpoolctl import ThreadpoolController
            _state["blas"] = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # threadpoolctl missing or unable to inspect the process: no BLAS control
            _state["blas"] = []
    return _state["blas"]


def n_threads():
    """Threads :func:`run_blocks` uses now: ``NUMPY_MOE_THREADS`` if set, else 1 (blocks run in order)."""
    env = os.environ.get("NUMPY_MOE_THREADS")
    if env is not None:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"NUMPY_MOE_THREADS={env!r} must be a positive integer") from None
        if value < 1:
            raise ValueError(f"NUMPY_MOE_THREADS={env!r} must be a positive integer")
        return value
    return 1


def _pool(size):
    with _lock:
        if _state["size"] < size:
            if _state["pool"] is not None:
                _state["pool"].shutdown(wait=False)
            _state["pool"] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="numpy_moe")
            _state["size"] = size
        return _state["pool"]


def run_blocks(work, costs=None, like=None, serial_below=0):
    """Call every function in ``work`` (no arguments) once, concurrently where that helps.

    Parameters
    ----------
    work : list of callables
        Independent of each other (each writes only its own outputs).
    costs : None or one number per callable (rows, say)
        The largest blocks start first, so the threads finish together.
    like : an array of the blocks' backend
        Blocks on CuPy arrays run in order (the GPU is already parallel).
    serial_below : number
        When the costs add up to less than this, run in order in the calling thread (small batches:
        starting threads would cost more than it saves).

    Exceptions raised by a block are re-raised here after every started block has finished.
    """
    on_device = type(like).__module__.split(".")[0] == "cupy"
    small = costs is not None and sum(costs) < serial_below
    threads = 1 if on_device or small or len(work) < 2 else min(n_threads(), len(work))
    if threads < 2:
        for fn in work:
            fn()
        return
    order = range(len(work)) if costs is None else sorted(range(len(work)), key=lambda i: -costs[i])
    todo = queue.SimpleQueue()
    for i in order:
        todo.put(work[i])

    def worker():
        while True:
            try:
                fn = todo.get_nowait()
            except queue.Empty:
                return
            fn()

    controllers = _blas_controllers()
    saved = [c.num_threads for c in controllers]
    for c in controllers:
        c.set_num_threads(1)
    try:
        futures = [_pool(threads - 1).submit(worker) for _ in range(threads - 1)]
        error = None
        try:
            worker()  # the calling thread is one of the workers
        except BaseException as err:  # let the others finish before raising
            error = err
            while not todo.empty():
                todo.get_nowait()
        for f in futures:
            try:
                f.result()
            except BaseException as err:
                error = error or err
        if error is not None:
            raise error
    finally:
        for c, n in zip(controllers, saved):
            c.set_num_threads(n)
