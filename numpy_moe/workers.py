"""Run independent blocks of work (one expert's rows each) on several CPU threads at once.

NumPy runs its element-wise operations (bias, ReLU, masks, gathers) on one core, while BLAS spreads each
matrix product over all of them. A sparse MoE layer has E independent blocks of work, one per expert, so
it can do better: run the experts concurrently, each on one thread with single-threaded BLAS. Then every
part of an expert's pass, its products and its element-wise work, uses all the cores, and small products
do not pay BLAS's per-call thread synchronisation. The top-k layer's backward also runs two independent
steps as blocks: the gate's backward beside the combine of the experts' input gradient. Row-wise steps
split their rows into one block per thread: the top-k gate's routing (its logits, softmax and top K,
``gates.softmax.route_topk_blocks``) and the combine of the experts' outputs (``routing.combine_topk``).
NumPy releases the GIL inside its matrix products and its element-wise loops, and SciPy inside its
sparse products, so Python threads run them in parallel.

**When it helps.** OpenBLAS, NumPy's BLAS, runs each product on its own worker threads, and after a product
those threads do not sleep at once: they busy-wait for new work for 2**28 CPU cycles (about 0.1 s at 2 GHz;
OpenBLAS's ``THREAD_TIMEOUT``). For that time they hold the other cores, so a second thread of ours started
within 0.1 s of any multi-threaded product (the gate's, the previous layer's) shares its core with a
spinning OpenBLAS thread and gains nothing. Measured on the 2-core development machine, float32: 16 ReLU
passes over (2048, 128) split over two threads took 4.3 ms when BLAS had been idle for 0.2 s, 6.2-7.7 ms
within 0.1 s of a two-threaded product, against 6.7 ms on one thread; and the whole sparse layer on two
threads was slower than in order (79 against 62 ms at N=16384, E=16). Setting ``OPENBLAS_THREAD_TIMEOUT=n``
in the environment before Python starts makes OpenBLAS's threads sleep after 2**n cycles (n >= 4; OpenBLAS
reads it once, when NumPy loads it). With n <= 20 (under a millisecond) the same layer took 47 ms on two
threads, its GEMM floor 31 ms. :func:`set_blas_spin` sets the same from inside a running program (OpenBLAS
rereads its environment and restarts its threads), for a program that cannot set the environment
before it starts; call it where no other thread is inside BLAS, at the program's start, say.

So :func:`n_threads` decides:

- ``NUMPY_MOE_THREADS=T`` in the environment: T threads (T >= 1), whatever the BLAS;
- otherwise, when every BLAS loaded is OpenBLAS with its own (pthreads) threads and its threads stop
  spinning within 2**20 cycles (:func:`blas_spin_exponent`): as many threads as BLAS uses, read before
  numpy_moe's own hold of BLAS at one thread while another call's blocks run (so
  ``threadpoolctl.threadpool_limits(1)`` or ``OPENBLAS_NUM_THREADS=1`` also means one thread here);
- otherwise 1: blocks run one after the other in the calling thread, each with BLAS's own threads.

On CuPy, or with one thread, blocks run one after the other in the calling thread. Results on threads are
identical to the blocks run in order with BLAS on one thread, as each block's BLAS runs: each block writes
only its own rows and its own expert's gradients, and every block computes exactly what it computes alone. A
step split into blocks of rows is another matter when the split changes a product's shape: the top-k gate's
logits from a block of rows are the rows of the whole product x W unless OpenBLAS picks another kernel for
the block's row count, and then every row differs in its last bits (measured with BLAS on one thread: 6 of
864 shapes and splits, all float32 with E = 8, e.g. D = 33, N = 16384 on 7 threads, up to 2.2e-7 relative; 2
and 4 threads and D = 64, E = 16 gave the same bits). Against blocks run in order with BLAS on several
threads, a weight gradient Xᵀ D summed over many rows can differ in its last bits, as OpenBLAS's threads sum
it in another order (measured at N = 8192, D = 64, H = 32, E = 16, float32: relative 1.5e-7 and 1.9e-7 on
the experts' two weight gradients; outputs, dx and the gate's gradients identical). A block that calls
``run_blocks`` itself runs that call's blocks in order in its own thread: the others are busy with its
siblings, and a call handed to them would wait for a thread that waits for it.

While blocks run, BLAS is limited to one thread for the whole process (OpenBLAS's setting is global) and
restored afterwards. Calls from several of your own threads at once are safe: the first to start saves
BLAS's thread counts, the last to finish puts them back (counted under a lock), so overlapping calls
never leave BLAS at one thread. They share the cores, and any other BLAS work of the program runs on
one thread while a call is running.

A child made by ``fork`` (``multiprocessing``'s default start method on Linux before Python 3.14) has
none of its parent's threads: it starts with no pool, fresh locks and BLAS's counts as they were before
any call of the parent that was running (without this, its first call on threads would wait forever
for a pool thread that does not exist in it).
"""
import ctypes
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

from . import backend  # noqa: F401  (loads NumPy, hence the BLAS library that _blas_controllers inspects)
from .validation import check_positive_int

_state = {"blas": None, "pool": None, "size": 0, "spin": None, "setters": {}}
_lock = threading.Lock()
_held = {"count": 0, "saved": []}  # run_blocks calls now holding BLAS at one thread; the counts they replaced
_held_lock = threading.Lock()
_inside = threading.local()  # .active: this thread runs a block (a nested run_blocks runs in order)


def _blas_controllers():
    """threadpoolctl's controllers of the BLAS libraries loaded in this process (found once)."""
    if _state["blas"] is None:
        try:
            from threadpoolctl import ThreadpoolController
            _state["blas"] = ThreadpoolController().select(user_api="blas").lib_controllers
        except Exception:  # threadpoolctl missing or unable to inspect the process: no BLAS control
            _state["blas"] = []
    return _state["blas"]


SHORT_SPIN = 20  # OpenBLAS threads that busy-wait at most 2**20 cycles (< 1 ms) leave the cores to ours
DEFAULT_SPIN = 28  # OpenBLAS's THREAD_TIMEOUT when OPENBLAS_THREAD_TIMEOUT is not set


def blas_spin_exponent():
    """n such that the BLAS threads busy-wait 2**n cycles after a product before sleeping, or None.

    None unless every BLAS library loaded is OpenBLAS with its own pthreads (an OpenMP build spins by
    OpenMP's rules, which this does not read). The value is what OpenBLAS read from
    ``OPENBLAS_THREAD_TIMEOUT`` when it was loaded (clamped to 4..30, as OpenBLAS does), or 28 when unset.
    """
    if _state["spin"] is None:
        found = []
        for c in _blas_controllers():
            getter = getattr(getattr(c, "dynlib", None), "openblas_thread_timeout", None)
            if (getattr(c, "internal_api", None) != "openblas" or getattr(c, "threading_layer", None) != "pthreads"
                    or getter is None):
                found = []
                break
            getter.restype = ctypes.c_int
            value = int(getter())
            found.append(DEFAULT_SPIN if value <= 0 else min(max(value, 4), 30))
        _state["spin"] = max(found) if found else -1
    return None if _state["spin"] < 0 else _state["spin"]


def set_blas_spin(exponent=SHORT_SPIN):
    """Make OpenBLAS's idle threads busy-wait at most 2**exponent cycles after a product, from now on.

    The effect of starting Python with ``OPENBLAS_THREAD_TIMEOUT=exponent``, for every OpenBLAS loaded in
    this process: each rereads its environment with the variable set (``openblas_read_env``) and stops
    its threads (``blas_thread_shutdown_``, what OpenBLAS itself does before a ``fork``); its next
    multi-threaded product starts them again with the new timeout. The process's environment is left as
    it was, so programs it starts are not affected; a ``fork`` child keeps the setting, as OpenBLAS's
    own does. With ``exponent <= SHORT_SPIN`` :func:`n_threads` then runs blocks on BLAS's threads.

    Parameters
    ----------
    exponent : int, 4 to 30
        OpenBLAS's range for ``OPENBLAS_THREAD_TIMEOUT``. 20 (the default) is under a millisecond at
        1 GHz or more; 28 is OpenBLAS's own default (about 0.1 s).

    Returns
    -------
    int
        The exponent in force before the call (:func:`blas_spin_exponent`).

    Raises
    ------
    RuntimeError
        When a BLAS loaded here is not OpenBLAS with its own (pthreads) threads exporting these two
        functions (nothing is changed then), or when a :func:`run_blocks` call is running.

    Notes
    -----
    Stopping OpenBLAS's threads while another thread of the program is inside a multi-threaded BLAS call
    would leave that call waiting for ever, and no library can see such a call from outside: call this
    where no other thread uses BLAS (at the start of a program, before starting threads). numpy_moe's own
    blocks are checked. The measured effect on the sparse layer is in the README's "Benchmark" section.
    """
    exponent = check_positive_int(exponent, "exponent", 4)  # int or NumPy integer; not float, str or bool
    if exponent > 30:
        raise ValueError(f"exponent={exponent} must be between 4 and 30 (OpenBLAS's range)")
    before = blas_spin_exponent()
    libraries = []
    for c in _blas_controllers():
        dynlib = getattr(c, "dynlib", None)
        found = [getattr(dynlib, name, None) for name in ("openblas_read_env", "blas_thread_shutdown_")]
        if (getattr(c, "internal_api", None) != "openblas" or getattr(c, "threading_layer", None) != "pthreads"
                or None in found):
            raise RuntimeError(f"cannot set the spin of {getattr(c, 'filepath', c)!s}: only OpenBLAS with its own "
                               "(pthreads) threads has one to set, through openblas_read_env and "
                               "blas_thread_shutdown_; nothing was changed")
        for fn in found:
            fn.argtypes, fn.restype = [], None
        libraries.append(found)
    if before is None:  # no BLAS found at all: nothing to set
        raise RuntimeError("no OpenBLAS with its own threads is loaded in this process: no spin to set")
    with _held_lock:
        if _held["count"]:
            raise RuntimeError("set_blas_spin called while numpy_moe runs blocks on threads (run_blocks): "
                               "call it where no other thread uses BLAS")
        saved = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
        try:
            os.environ["OPENBLAS_THREAD_TIMEOUT"] = str(exponent)
            for read_env, shutdown in libraries:
                read_env()  # rereads every OPENBLAS_* / OMP_NUM_THREADS setting; only the timeout differs
                shutdown()  # the threads restart, with the new timeout, at the next threaded product
        finally:
            if saved is None:
                del os.environ["OPENBLAS_THREAD_TIMEOUT"]
            else:
                os.environ["OPENBLAS_THREAD_TIMEOUT"] = saved
        _state["spin"] = None  # read again from the libraries
    return before


def n_threads():
    """Threads :func:`run_blocks` uses now: ``NUMPY_MOE_THREADS`` if set; else BLAS's thread count when
    BLAS's idle threads stop spinning within 2**SHORT_SPIN cycles; else 1 (see the module's text)."""
    env = os.environ.get("NUMPY_MOE_THREADS")
    if env is not None:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"NUMPY_MOE_THREADS={env!r} must be a positive integer") from None
        if value < 1:
            raise ValueError(f"NUMPY_MOE_THREADS={env!r} must be a positive integer")
        return value
    spin = blas_spin_exponent()
    if spin is None or spin > SHORT_SPIN:
        return 1
    with _held_lock:  # while run_blocks calls hold BLAS at one thread, its count is the one they saved
        counts = list(_held["saved"]) if _held["count"] else [c.num_threads for c in _blas_controllers()]
    return max(1, min(counts, default=1))


def _pool(size):
    with _lock:
        return _grown(size)


def _grown(size):
    """The pool, replaced by one of ``size`` threads if it has fewer (call with ``_lock`` held)."""
    if _state["size"] < size:
        if _state["pool"] is not None:
            _state["pool"].shutdown(wait=False)  # what was submitted to it still runs
        _state["pool"] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="numpy_moe")
        _state["size"] = size
    return _state["pool"]


def _submit(fn, count):
    """Submit ``fn`` ``count`` times to a pool of at least ``count`` threads. Under the lock: another call that
    grows the pool shuts the old one down, and a submit to it after that raises RuntimeError."""
    with _lock:
        pool = _grown(count)
        return [pool.submit(fn) for _ in range(count)]


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
    nested = getattr(_inside, "active", False)  # the other threads are busy with this call's blocks
    threads = 1 if on_device or small or nested or len(work) < 2 else min(n_threads(), len(work))
    if threads < 2:
        for fn in work:
            fn()
        return
    order = range(len(work)) if costs is None else sorted(range(len(work)), key=lambda i: -costs[i])
    todo = queue.SimpleQueue()
    for i in order:
        todo.put(work[i])

    def worker():
        _inside.active = True
        try:
            while True:
                try:
                    fn = todo.get_nowait()
                except queue.Empty:
                    return
                fn()
        finally:
            _inside.active = False

    _hold_blas()
    try:
        futures = _submit(worker, threads - 1)
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
        _release_blas()


def _after_fork_in_child():
    """Forget the parent's pool, locks and BLAS hold: none of their threads exists in a forked child."""
    global _lock, _held_lock
    _lock, _held_lock = threading.Lock(), threading.Lock()
    _state["pool"], _state["size"] = None, 0
    if _held["count"]:  # a call of the parent was running: the child inherited BLAS at one thread
        for c, n in zip(_blas_controllers(), _held["saved"]):
            _set_threads(c, n)
    _held["count"] = 0
    _inside.active = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _hold_blas():
    """Limit BLAS to one thread; the first of overlapping run_blocks calls saves the counts it replaces."""
    with _held_lock:
        if _held["count"] == 0:
            controllers = _blas_controllers()
            _held["saved"] = [c.num_threads for c in controllers]
            for c in controllers:
                _set_threads(c, 1)
        _held["count"] += 1


def _release_blas():
    """End one :func:`_hold_blas`; the last of overlapping calls puts the saved counts back."""
    with _held_lock:
        _held["count"] -= 1
        if _held["count"] == 0:
            for c, n in zip(_blas_controllers(), _held["saved"]):
                _set_threads(c, n)


def _set_threads(controller, n):
    """Set a BLAS library's thread count for the whole process, from whichever thread calls.

    OpenBLAS with its own threads is set through its ``openblas_set_num_threads``, process-wide: from
    version 3.8 threadpoolctl's ``set_num_threads`` lets only one "controlling" thread change it (the
    first to call; other threads' calls silently do nothing), so going through it would make the first
    thread that runs blocks the controller for good, and from then on both these calls from any other
    thread and your own ``threadpool_limits`` in another thread would be ignored. Other libraries go
    through threadpoolctl.
    """
    setter = _openblas_setter(controller)
    if setter is None:
        controller.set_num_threads(n)
    else:
        setter(n)


def _openblas_setter(controller):
    """OpenBLAS's own ``openblas_set_num_threads`` (with the build's symbol prefix and suffix) for an OpenBLAS
    with its own (pthreads) threads, else None; looked up once per library."""
    cache, key = _state["setters"], id(controller)
    if key not in cache:
        found, dynlib = None, getattr(controller, "dynlib", None)
        if (dynlib is not None and getattr(controller, "internal_api", None) == "openblas"
                and getattr(controller, "threading_layer", None) == "pthreads"):
            names = [f"{prefix}openblas_set_num_threads{suffix}"
                     for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]  # threadpoolctl's order
            found = next((getattr(dynlib, name) for name in names if hasattr(dynlib, name)), None)
            if found is not None:
                found.argtypes, found.restype = [ctypes.c_int], None
        cache[key] = found
    return cache[key]
