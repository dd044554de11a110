"""One module or estimator used from several threads of your own: a module refuses a second thread while it
is in a pass (it keeps its forward pass on itself), an estimator's predictions take turns, and separate
models on separate threads compute what they compute one after the other, bit for bit. And the same seeds
give the same bits in separate processes, whatever PYTHONHASHSEED."""
import copy
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from numpy_moe.estimators import HMEClassifier, LocalExpertsClassifier, MoEClassifier, MoERegressor
from numpy_moe.layers import Linear
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam


class _Held(Linear):
    """A Linear whose forward waits inside its pass until ``release`` is set (``inside`` tells it is there)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inside, self.release = threading.Event(), threading.Event()

    def forward(self, x):
        self.inside.set()
        self.release.wait(timeout=10)
        return super().forward(x)


def _in_thread(fn):
    """Start fn in a thread; returns (thread, box) where box gets 'value' or 'error'."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            box["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def test_a_module_in_a_pass_in_another_thread_refuses_with_a_clear_error_and_is_free_again_after(rng):
    layer = _Held(4, 3, seed=0)
    x1, x2 = rng.standard_normal((5, 4)), rng.standard_normal((6, 4))
    thread, box = _in_thread(lambda: layer.forward(x1))
    assert layer.inside.wait(timeout=10)
    try:  # before: this call ran too and each thread's backward could read the other's input
        with pytest.raises(RuntimeError, match=r"_Held is in a forward or backward pass in another thread.*copy"):
            layer.forward(x2)
        with pytest.raises(RuntimeError, match="another thread"):
            layer.backward(np.ones((5, 3)))
    finally:
        layer.release.set()
        thread.join()
    np.testing.assert_array_equal(box["value"], x1 @ layer.params["W"] + layer.params["b"])
    # the first pass is over: this thread may run the backward of that thread's forward, and passes of its own
    dx = layer.backward(np.ones((5, 3)))
    np.testing.assert_array_equal(dx, np.ones((5, 3)) @ layer.params["W"].T)
    np.testing.assert_array_equal(layer.forward(x2), x2 @ layer.params["W"] + layer.params["b"])


def test_a_pass_that_raised_in_another_thread_leaves_the_module_free():
    layer = Linear(4, 3, seed=0)
    thread, box = _in_thread(lambda: layer.forward(np.ones((2, 5))))  # wrong width: ValueError
    thread.join()
    assert isinstance(box["error"], ValueError)
    assert layer.forward(np.ones((2, 4))).shape == (2, 3)


def test_one_moe_layer_from_two_threads_at_once_never_returns_another_threads_result():
    # before: about 40% of the outputs were another input's mixture, and some calls raised TypeError
    layer = MoE(16, 8, 4, hidden=32, top_k=2, seed=0).eval()
    xs = [np.random.default_rng(i).standard_normal((512, 16)) for i in range(2)]
    expected = [copy.deepcopy(layer).forward(x) for x in xs]
    start, wrong, refused = threading.Barrier(2), [], []

    def use(i):
        start.wait()
        for _ in range(30):
            try:
                wrong.append(not np.array_equal(layer.forward(xs[i]), expected[i]))
            except RuntimeError as err:
                refused.append("another thread" in str(err))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not any(wrong) and all(refused) and len(wrong) + len(refused) == 60


@pytest.mark.parametrize("make, y_of", [
    (lambda: MoEClassifier(random_state=0, epochs=2, top_k=2, noise="shazeer"), lambda X: (X[:, 0] > 0).astype(int)),
    (lambda: MoERegressor(random_state=0, epochs=2), lambda X: X[:, 0]),
    (lambda: LocalExpertsClassifier(random_state=0, epochs=2), lambda X: (X[:, 0] > 0).astype(int)),
    (lambda: HMEClassifier(random_state=0, max_iter=3), lambda X: (X[:, 0] > 0).astype(int)),
])
def test_an_estimator_predicting_from_two_threads_at_once_takes_turns_and_gives_each_its_own(make, y_of, rng,
                                                                                       monkeypatch):
    X = rng.standard_normal((200, 4))
    est = make().fit(X, y_of(X))
    predict = est.predict_proba if hasattr(est, "predict_proba") else est.predict
    xs = [rng.standard_normal((300, 4)) for _ in range(2)]
    expected = [predict(x) for x in xs]
    model, inside, most = est.model_, [0], [0]
    forward = type(model).forward
    meet = threading.Event()

    def watched(self, *args, **kwargs):  # counts the threads inside the model's forward; the first waits for another
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        if inside[0] == 1:
            meet.wait(timeout=0.3)  # with the lock the second thread cannot come in: this times out
        meet.set()  # the second thread, here at once or after the first, does not wait
        try:
            return forward(self, *args, **kwargs)
        finally:
            inside[0] -= 1

    # on the class, not the instance: predict ends with drop_caches, which removes what the instance gained
    monkeypatch.setattr(type(model), "forward", watched)
    found = [None, None]
    threads = [threading.Thread(target=lambda i=i: found.__setitem__(i, predict(xs[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1, "two predictions were inside the model at once"
    for got, want in zip(found, expected):
        np.testing.assert_array_equal(got, want)


def test_separate_models_trained_on_two_threads_at_once_equal_the_serial_runs_bit_for_bit(monkeypatch):
    # each thread's layer runs its experts on numpy_moe's threads too (2 x 2), sharing one BLAS hold
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")

    def train(seed):
        layer = MoE(32, 32, 8, hidden=32, top_k=2, seed=seed, noise="shazeer", balance={"importance": 0.01},
                    dispatch="sparse")
        opt, data, out = Adam(lr=1e-3), np.random.default_rng(seed), []
        for _ in range(3):
            x = data.standard_normal((2048, 32))
            y = layer.forward(x)
            out += [y, layer.backward(data.standard_normal(y.shape))]
            opt.step(layer)
            layer.end_step()
        return out + [p for _, p in layer.named_parameters()]

    serial = [train(seed) for seed in (0, 1)]
    found = [None, None]
    threads = [threading.Thread(target=lambda i=i: found.__setitem__(i, train(i))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(found, serial):
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))


_DIGESTS = """
import hashlib, sys
import numpy as np
from test_persistence_roundtrip import _all_examples, _in_dtype, _pass, _state_arrays, _train
for name, example in _all_examples().items():
    model = _in_dtype(example, "float64")  # rebuilt from its configuration: its seeds draw the weights again
    arrays = _pass(name, model, np.random.default_rng(7))
    _train(name, model, np.random.default_rng(8), steps=2)
    digest = hashlib.sha256()
    for a in arrays + _state_arrays(model):
        digest.update(np.ascontiguousarray(a).tobytes())
    print(name, digest.hexdigest())
"""


def test_every_registered_class_computes_the_same_bits_in_two_processes_with_other_hash_seeds():
    # forward, backward and two training steps of every example of tests/test_io.py (each registered Module class)
    # and the stateful ones of test_persistence_roundtrip; before, two examples built an MoE without a seed
    root = Path(__file__).resolve().parent.parent
    runs = []
    for hash_seed in ("0", "4242"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=os.pathsep.join([str(root), str(root / "tests")]))
        done = subprocess.run([sys.executable, "-c", _DIGESTS], cwd=root, env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(dict(line.rsplit(" ", 1) for line in done.stdout.splitlines()))
    assert len(runs[0]) >= 50
    assert runs[0] == runs[1], sorted(k for k in runs[0] if runs[0][k] != runs[1].get(k))


def test_an_error_in_an_experts_block_on_a_worker_thread_reaches_the_caller_as_itself_and_leaves_nothing(monkeypatch):
    # the expert blocks of a forward run on numpy_moe's threads; the block of expert 3 raises on whichever runs it
    monkeypatch.setenv("NUMPY_MOE_THREADS", "2")
    from numpy_moe import workers
    from numpy_moe.experts import ExpertBank
    layer = MoE(32, 32, 8, hidden=64, top_k=2, seed=0, dispatch="sparse")
    x = np.random.default_rng(0).standard_normal((2048, 32))
    expected = copy.deepcopy(layer).forward(x)
    blas = [c.num_threads for c in workers._blas_controllers()]
    chunk, raised = ExpertBank._mlp_forward_chunk, []

    def failing(self, c, *args):
        if c == 3:
            raised.append(KeyError(f"expert block {c} in {threading.current_thread().name}"))
            raise raised[-1]
        return chunk(self, c, *args)

    monkeypatch.setattr(ExpertBank, "_mlp_forward_chunk", failing)
    alive = threading.active_count()
    for _ in range(3):
        with pytest.raises(KeyError) as info:
            layer.forward(x)
        assert info.value is raised[-1]  # the block's own exception, not a wrapper
    assert threading.active_count() <= alive + 1  # at most the one pool thread, started once
    assert [c.num_threads for c in workers._blas_controllers()] == blas and workers._held["count"] == 0
    monkeypatch.setattr(ExpertBank, "_mlp_forward_chunk", chunk)
    thread, box = _in_thread(lambda: layer.forward(x))  # no pass mark left behind: another thread may use it
    thread.join()
    np.testing.assert_array_equal(box["value"], expected)


def _forward_in_child(layer, x, queue):
    """In a forked child: a forward of ``layer``, which a thread of the parent was inside when it forked."""
    layer.release.set()  # the child's copy of the event: its own forward does not wait
    try:
        queue.put(("value", layer.forward(x)))
    except Exception as err:  # noqa: BLE001 - reported to the parent
        queue.put(("error", repr(err)))


def test_a_child_forked_while_another_thread_is_in_a_pass_can_use_the_module(rng):
    import multiprocessing
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ctx = multiprocessing.get_context("fork")
    layer = _Held(4, 3, seed=0)
    x = rng.standard_normal((5, 4))
    thread, _ = _in_thread(lambda: layer.forward(x))
    assert layer.inside.wait(timeout=10)
    try:  # the parent's thread is inside the pass when it forks; the child has no such thread
        queue = ctx.Queue()
        child = ctx.Process(target=_forward_in_child, args=(layer, x, queue))
        child.start()
        kind, value = queue.get(timeout=60)
        child.join(60)
    finally:
        layer.release.set()
        thread.join()
    assert kind == "value", value
    np.testing.assert_array_equal(value, x @ layer.params["W"] + layer.params["b"])
