"""numpy_moe.workers: blocks run concurrently give exactly the sequential result, errors come back, BLAS's
thread count is put back, and NUMPY_MOE_THREADS is validated."""
import os
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from numpy_moe import moe as moe_module
from numpy_moe import workers
from numpy_moe.moe import MoE
from numpy_moe.experts import ExpertBank


def test_blocks_all_run_once_and_write_their_own_rows(monkeypatch):
    monkeypatch.setenv("NUMPY_MOE_THREADS", "3")
    out = np.zeros(10)

    def block(i):
        def run():
            out[i] += i + 1
        return run

    workers.run_blocks([block(i) for i in range(10)], costs=list(range(10)))
    np.testing.assert_array_equal(out, np.arange(1, 11))


def test_an_error_in_a_block_is_raised_after_the_others_finish_and_blas_threads_are_restored(monkeypatch):
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    before = [c.num_threads for c in workers._blas_controllers()]
    done = []

    def bad():
        raise KeyError("block 3")

    work = [lambda: done.append(1), lambda: done.append(2), bad, lambda: done.append(4)]
    with pytest.raises(KeyError, match="block 3"):
        workers.run_blocks(work)
    assert [c.num_threads for c in workers._blas_controllers()] == before


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_thread_counts_are_refused(monkeypatch, value):
    monkeypatch.setenv("NUMPY_MOE_THREADS", value)
    with pytest.raises(ValueError, match="NUMPY_MOE_THREADS"):
        workers.n_threads()


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_the_sparse_layer_on_threads_equals_the_layer_in_order_bit_for_bit(monkeypatch, activation):
    # large enough that the experts go to the threads (rows x width above experts.SERIAL_BELOW)
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2048, 32)), rng.standard_normal((2048, 32))
    results, overlapped = [], []
    run_blocks = moe_module.run_blocks

    def recording(work, *args, **kwargs):  # the backward's two blocks, the gate's and the combine: at once?
        if os.environ["NUMPY_MOE_THREADS"] == "1":  # in order by definition (and a barrier would wait 10 s)
            overlapped.append(False)
            return run_blocks(work, *args, **kwargs)
        meet, met = threading.Barrier(len(work), timeout=10), []

        def waiting(fn):
            try:
                meet.wait()  # passes only when every block has started: they run at the same time
                met.append(True)
            except threading.BrokenBarrierError:  # one after the other: the first waited in vain
                met.append(False)
            fn()

        run_blocks([lambda fn=fn: waiting(fn) for fn in work], *args, **kwargs)
        overlapped.append(len(work) == 2 and all(met))

    monkeypatch.setattr(moe_module, "run_blocks", recording)
    for threads in ("1", "2"):  # in order with single-threaded BLAS (as each block has), then on 2 threads
        monkeypatch.setenv("NUMPY_MOE_THREADS", threads)
        experts = ExpertBank(8, 32, 32, 64, seed=1, activation=activation)
        layer = MoE(32, 32, 8, seed=0, top_k=2, experts=experts, dispatch="sparse")
        with threadpool_limits(1 if threads == "1" else None, user_api="blas"):
            y = layer.forward(x)
            results.append((y, layer.backward(dy), dict(layer.named_grads())))
    assert overlapped == [False, True], "the backward's combine must run beside the gate's backward on 2 threads"
    (y1, dx1, g1), (y2, dx2, g2) = results
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(dx1, dx2)
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name], err_msg=name)


class _FakeBlas:
    def __init__(self, threads):
        self.num_threads = threads


@pytest.mark.parametrize("spin, blas_threads, expected", [(28, 2, 1), (None, 4, 1), (21, 2, 1), (20, 2, 2),
                                                           (4, 3, 3), (20, 1, 1)])
def test_threads_follow_blas_only_when_its_idle_threads_stop_spinning(monkeypatch, spin, blas_threads, expected):
    monkeypatch.delenv("NUMPY_MOE_THREADS", raising=False)
    monkeypatch.setattr(workers, "blas_spin_exponent", lambda: spin)
    monkeypatch.setattr(workers, "_blas_controllers", lambda: [_FakeBlas(blas_threads)])
    assert workers.n_threads() == expected
    monkeypatch.setenv("NUMPY_MOE_THREADS", "3")  # an explicit count wins over the rule
    assert workers.n_threads() == 3


@pytest.mark.parametrize("setting, expected", [(None, 28), ("20", 20), ("2", 4), ("40", 30)])
def test_the_spin_of_openblas_is_read_from_the_library_as_loaded(setting, expected):
    import os
    import subprocess
    import sys
    if workers.blas_spin_exponent() is None:
        pytest.skip("NumPy's BLAS here is not OpenBLAS with pthreads: there is no spin setting to read")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "NUMPY_MOE_THREADS")}
    if setting is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = setting
    code = "from numpy_moe import workers; print(workers.blas_spin_exponent())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) == expected


def test_run_blocks_called_from_a_block_runs_in_order_in_that_thread(monkeypatch):
    # the other threads are busy with the outer call's blocks; a nested call handed to the pool could wait
    # for a thread that is waiting for it, so it runs in the calling block's thread
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    seen, both = {}, threading.Barrier(2, timeout=10)

    def outer(name):
        def run():
            both.wait()  # the two outer blocks run at once, on two threads
            inner = []
            workers.run_blocks([lambda: inner.append(threading.get_ident()) for _ in range(4)])
            seen[name] = (threading.get_ident(), inner)
        return run

    caller = threading.Thread(target=workers.run_blocks, args=([outer("a"), outer("b")],), daemon=True)
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "a nested run_blocks deadlocked: it waited for the pool thread that called it"
    assert seen["a"][0] != seen["b"][0]
    for ident, inner in seen.values():
        assert inner == [ident] * 4
    after = []  # and the flag is cleared: a later call from this thread uses the threads again
    barrier = threading.Barrier(2, timeout=10)
    workers.run_blocks([lambda: (barrier.wait(), after.append(threading.get_ident())) for _ in range(2)])
    assert len(set(after)) == 2


def test_overlapping_calls_from_two_threads_put_blas_back_only_when_the_last_one_ends(monkeypatch):
    # A starts (BLAS -> 1 thread), B starts, A ends, B ends. Saving and restoring per call would let A put
    # BLAS back to its threads under B's blocks, and B then "restore" the one thread it found: BLAS would
    # stay at one thread for the rest of the program.
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    with threadpool_limits(limits=2, user_api="blas"):
        before = [c.num_threads for c in workers._blas_controllers()]
        if max(before, default=1) < 2:
            pytest.skip("no BLAS here takes a thread count of 2 (threadpoolctl found none to set)")
        a_in, b_in, a_go, b_go = (threading.Event() for _ in range(4))
        seen_by_b = []

        def a_block():
            a_in.set()
            assert a_go.wait(10)

        def b_block():
            b_in.set()
            assert b_go.wait(10)
            seen_by_b.extend(c.num_threads for c in workers._blas_controllers())

        calls = [threading.Thread(target=workers.run_blocks, args=([block, lambda: None],), daemon=True)
                 for block in (a_block, b_block)]
        calls[0].start()
        assert a_in.wait(10)
        calls[1].start()
        assert b_in.wait(10)
        a_go.set()
        calls[0].join(10)
        assert not calls[0].is_alive()
        b_go.set()
        calls[1].join(10)
        assert not calls[1].is_alive()
        assert seen_by_b == [1] * len(before), "A put BLAS's threads back while B's blocks were still running"
        assert [c.num_threads for c in workers._blas_controllers()] == before


def test_running_blocks_leaves_threadpool_limits_working_in_other_threads(monkeypatch):
    # threadpoolctl >= 3.8 lets only one "controlling" thread set OpenBLAS's (pthreads) thread count; had
    # run_blocks gone through it, this thread would hold that control for good and a threadpool_limits in
    # any other thread would silently do nothing
    import threadpoolctl
    clear = getattr(getattr(threadpoolctl, "OpenBLASController", None), "clear_controlling_thread", None)
    if clear is not None:
        clear(force=True)  # whatever earlier tests left
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    before = [c.num_threads for c in workers._blas_controllers()]
    if max(before, default=1) < 2:
        pytest.skip("BLAS runs on one thread here (OPENBLAS_NUM_THREADS=1?): no limit to see taking effect")
    workers.run_blocks([lambda: None, lambda: None])  # from this thread
    seen = []

    def elsewhere():
        with threadpool_limits(limits=1, user_api="blas"):
            seen.extend(c.num_threads for c in workers._blas_controllers())

    other = threading.Thread(target=elsewhere)
    other.start()
    other.join(10)
    assert seen == [1] * len(before), "threadpool_limits in another thread was ignored"
    assert [c.num_threads for c in workers._blas_controllers()] == before


def test_a_blas_other_than_openblas_is_set_through_threadpoolctl():
    class Other:  # an MKL or BLIS controller: no OpenBLAS symbols, so its own set_num_threads
        internal_api, threading_layer, calls = "mkl", "intel", []

        def set_num_threads(self, n):
            self.calls.append(n)

    other = Other()
    workers._set_threads(other, 3)
    assert other.calls == [3]
    assert workers._openblas_setter(other) is None


def _fork_context():
    import multiprocessing
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform: no child inherits the parent's pool")
    return multiprocessing.get_context("fork")


def _child_reports(queue):
    """In a forked child: BLAS's counts as inherited, then whether two blocks ran at once on threads."""
    counts = [c.num_threads for c in workers._blas_controllers()]
    both = threading.Barrier(2, timeout=10)
    met = []
    workers.run_blocks([lambda: met.append(both.wait() is not None) for _ in range(2)])
    queue.put((counts, met))


def _run_child(ctx):
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reports, args=(queue,))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung in run_blocks: it waited for a pool thread that only its parent has")
    assert child.exitcode == 0
    return queue.get(timeout=10)


def test_a_forked_child_runs_blocks_on_threads_of_its_own(monkeypatch):
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    ctx = _fork_context()
    workers.run_blocks([lambda: None, lambda: None])  # the parent's pool now has a thread
    _, met = _run_child(ctx)
    assert met == [True, True], "the child's two blocks did not run at the same time"


def test_a_child_forked_during_a_call_gets_blas_threads_back(monkeypatch):
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    ctx = _fork_context()
    with threadpool_limits(limits=2, user_api="blas"):
        before = [c.num_threads for c in workers._blas_controllers()]
        if max(before, default=1) < 2:
            pytest.skip("no BLAS here takes a thread count of 2 (threadpoolctl found none to set)")
        inside, go = threading.Event(), threading.Event()
        call = threading.Thread(target=workers.run_blocks,
                                args=([lambda: (inside.set(), go.wait(30)), lambda: None],), daemon=True)
        call.start()
        try:
            assert inside.wait(10)  # the parent holds BLAS at one thread now
            counts, met = _run_child(ctx)
        finally:
            go.set()
            call.join(10)
        assert counts == before, "the child kept the one BLAS thread of its parent's running call"
        assert met == [True, True]
        assert [c.num_threads for c in workers._blas_controllers()] == before


_SPIN_SCRIPT = r"""
import glob, json, os, sys, threading, time
import numpy as np
from numpy_moe import workers

def states():
    me = str(threading.get_native_id())
    return [open(p).read().rsplit(")", 1)[1].split()[0] for p in glob.glob("/proc/self/task/*/stat")
            if p.split("/")[-2] != me]

def asleep_after(product):
    # seconds from the end of a product until every other thread is seen asleep (at most 1 s). A thread
    # that busy-waits is runnable ("R"), a sleeping one waits ("S"). 2**28 cycles, OpenBLAS's default
    # spin, take at least 67 ms at 4 GHz; 2**20 cycles take at most 1 ms at 1 GHz
    product()
    start = time.monotonic()
    while time.monotonic() - start < 1.0 and "R" in states():
        time.sleep(0.002)
    return time.monotonic() - start

rng = np.random.default_rng(0)
a, b = rng.standard_normal((512, 512)).astype(np.float32), rng.standard_normal((512, 512)).astype(np.float32)
expected = a @ b
result = {"spin": workers.blas_spin_exponent(), "threads": workers.n_threads(),
          "asleep": asleep_after(lambda: a @ b)}
result["returned"] = workers.set_blas_spin(int(sys.argv[1]))
result["after"] = workers.blas_spin_exponent()
result["threads_after"] = workers.n_threads()
result["env"] = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
result["asleep_after"] = asleep_after(lambda: a @ b)
result["same_product"] = bool(np.array_equal(a @ b, expected))
print(json.dumps(result))
"""


def _run_spin_script(exponent):
    import json
    import subprocess
    import sys
    if workers.blas_spin_exponent() is None:
        pytest.skip("NumPy's BLAS here is not OpenBLAS with pthreads: there is no spin to set")
    if min(c.num_threads for c in workers._blas_controllers()) < 2:
        pytest.skip("BLAS runs on one thread here: no idle BLAS thread whose spin could be seen")
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("no /proc/self/task here to see whether BLAS's threads spin or sleep")
    env = {k: v for k, v in os.environ.items()
           if k not in ("OPENBLAS_THREAD_TIMEOUT", "NUMPY_MOE_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", _SPIN_SCRIPT, str(exponent)], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_set_blas_spin_makes_openblas_threads_sleep_soon_in_a_running_program():
    r = _run_spin_script(20)
    # as loaded (no OPENBLAS_THREAD_TIMEOUT): OpenBLAS's 2**28 cycles, BLAS's threads spin 67 ms or more
    assert (r["spin"], r["threads"]) == (28, 1)
    assert r["asleep"] >= 0.05
    # after the call: 2**20 cycles, asleep within a few ms (50 leaves room for a busy host), the experts go
    # to BLAS's threads, and the environment is as it was
    assert (r["returned"], r["after"], r["env"]) == (28, 20, None)
    assert r["asleep_after"] < 0.05
    assert r["threads_after"] >= 2
    assert r["same_product"]


def test_set_blas_spin_back_to_openblas_default_spins_again():
    r = _run_spin_script(28)
    assert (r["returned"], r["after"], r["threads_after"]) == (28, 28, 1)
    assert r["asleep_after"] >= 0.05
    assert r["same_product"]


@pytest.mark.parametrize("exponent, error", [(3, ValueError), (31, ValueError), (20.0, TypeError), ("20", TypeError),
                                             (True, TypeError), (None, TypeError)])
def test_set_blas_spin_refuses_exponents_outside_openblas_range(exponent, error):
    with pytest.raises(error, match="exponent"):
        workers.set_blas_spin(exponent)


def test_set_blas_spin_refuses_a_blas_without_the_setting_and_changes_nothing(monkeypatch):
    class OtherBlas:
        internal_api, threading_layer, filepath, num_threads = "mkl", "intel", "libmkl_rt.so", 2
    monkeypatch.setattr(workers, "_blas_controllers", lambda: [OtherBlas()])
    monkeypatch.setitem(workers._state, "spin", 28)
    with pytest.raises(RuntimeError, match="libmkl_rt.so.*nothing was changed"):
        workers.set_blas_spin(20)
    assert workers._state["spin"] == 28


def test_set_blas_spin_refuses_while_blocks_run(monkeypatch):
    if workers.blas_spin_exponent() is None:
        pytest.skip("NumPy's BLAS here is not OpenBLAS with pthreads: the call is refused before this check")
    monkeypatch.setitem(workers._held, "count", 1)  # as while a run_blocks call holds BLAS at one thread
    with pytest.raises(RuntimeError, match="run_blocks"):
        workers.set_blas_spin(20)


def test_a_pool_grown_by_another_call_meanwhile_does_not_break_a_call_submitting_to_it(monkeypatch):
    # Another thread's run_blocks with more threads (NUMPY_MOE_THREADS changed, or BLAS's count in auto mode)
    # replaces the pool, shutting the old one down, between this call's _pool() and its submit(): before,
    # this call then raised "RuntimeError: cannot schedule new futures after shutdown".
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    workers._pool(1)
    pool = workers._state["pool"]
    real_submit = pool.submit

    def submit(fn, *args, **kwargs):
        grow = threading.Thread(target=workers._pool, args=(workers._state["size"] + 1,))
        grow.start()
        grow.join(timeout=0.5)  # with submission under the pool's lock it waits for this submit instead
        return real_submit(fn, *args, **kwargs)

    monkeypatch.setattr(pool, "submit", submit)
    done = []
    workers.run_blocks([lambda: done.append(1), lambda: done.append(2)])
    assert sorted(done) == [1, 2]


def test_auto_threads_do_not_drop_to_one_while_another_call_holds_blas(monkeypatch):
    # Before: n_threads() read BLAS's current count, which another thread's run_blocks holds at 1, so a layer
    # started then ran its experts in order (with BLAS at 1 or at its own count, depending on timing): two models
    # trained on two threads at once in auto mode (OPENBLAS_THREAD_TIMEOUT=20, 2 BLAS threads) then differed
    # from their serial runs and from run to run (up to 5.6e-16 relative in float64).
    monkeypatch.delenv("NUMPY_MOE_THREADS", raising=False)
    blas = _FakeBlas(2)
    monkeypatch.setattr(workers, "blas_spin_exponent", lambda: 20)
    monkeypatch.setattr(workers, "_blas_controllers", lambda: [blas])
    monkeypatch.setattr(workers, "_set_threads", lambda c, n: setattr(c, "num_threads", n))
    assert workers.n_threads() == 2
    inside, leave, seen = threading.Event(), threading.Event(), []

    def holding():  # a block of another call: BLAS is held at one thread while it runs
        inside.set()
        leave.wait(timeout=10)

    other = threading.Thread(target=workers.run_blocks, args=([holding, lambda: None],))
    other.start()
    try:
        assert inside.wait(timeout=10) and blas.num_threads == 1
        seen.append(workers.n_threads())
    finally:
        leave.set()
        other.join()
    assert seen == [2] and blas.num_threads == 2
