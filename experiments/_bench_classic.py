"""Classic local experts at batch size 1: numpy_moe against post 003's own NumPy code, epoch by epoch.

Post 003 trains its mixture of local experts with a hand-written NumPy loop (``MOE.sgdTrain`` and
``MOE.ftrlTrainUpdate`` in ``algorithm implementation/MoE/MoE.py`` of the public ZoeYuhan/machine-learning
repository). :class:`Post003` below redoes that loop from its description, NumPy call for NumPy call and in
its data layout (bias column first, one-hot integer targets, M (k, D+1), V (k, D+1, C), the gate and the
experts evaluated on one row at a time, the unused softmax of the blend included, V updated one (expert,
class) column at a time for SGD, and the FTRL state built from Python lists every step as that code does),
so that its time per epoch can be measured on this machine beside numpy_moe's on the same data. Nothing of
that repository is imported or vendored: the loop is written anew from what that code does.

Each row trains both on the standardised circles of post 003 (1000 points, 700 for training): competitive
experts, one shuffled sample per step, SGD (η = 0.1, decay 0.99 per epoch, the post's settings) or
FTRL-Proximal (α = 1, β = 0.2). Two kinds of epoch are timed:

- "epoch": what each code does per epoch: numpy_moe's ``fit_local_experts`` (the pass, the divergence
  check, the training and held-out log-loss of its history; each timed call is a one-epoch fit, which
  also evaluates the model before training, so numpy_moe is charged a little more than an epoch), the
  post's pass plus the held-out log-loss it prints every epoch;
- "pass only": the training pass alone: ``train_epoch`` (+ ``end_epoch``) against the post's inner loop.

Both run in one process, interleaved: each round alternates ``repeats`` epochs of one with ``repeats`` of
the other (which goes first alternates), takes the median of each, and the ratio numpy_moe / post's code.
A row reports the median of the per-round medians in ms and the median and range of the ratios over
rounds; its target is a ratio <= 1. The machine's other load shows up as the ratios' range, which is why
the verdict uses the median over rounds.
"""
import statistics
import time

import numpy as np

from numpy_moe.classic import LocalExperts, fit_local_experts, train_epoch
from numpy_moe.datasets import make_circles, standardizer
from numpy_moe.optim import FTRL, SGD

TARGET = 1.0
CONFIGS = [(2, "SGD"), (2, "FTRL"), (4, "SGD"), (4, "FTRL")]  # (k, optimiser); post 003 runs k = 4, both
KINDS = ("epoch", "pass only")
QUICK_CONFIGS = [(2, "SGD")]


class Post003:
    """Post 003's MOE training loops on (X (N, D), labels (N,)) with its own state layout.

    x holds rows [1, x] (bias first); r one-hot integer rows; M (k, D+1) and V (k, D+1, C) drawn as the
    post draws them, U[-0.1, -0.08), here from a seeded Generator. ``sgd_epoch`` and ``ftrl_epoch`` are one
    pass of ``sgdTrain`` and ``ftrlTrainUpdate``; ``logloss`` is the held-out log-loss each prints per epoch.
    """

    def __init__(self, X, labels, X_test, labels_test, k, seed=0, lamda=0.1, lazy=0.99, alfa=1.0, beta=0.2):
        rng = np.random.default_rng(seed)
        self.x = np.hstack([np.ones([len(X), 1]), np.array(X)])
        self.r = np.eye(2, dtype=int)[labels]
        self.x_test = np.hstack([np.ones([len(X_test), 1]), np.array(X_test)])
        self.r_test = np.eye(2, dtype=int)[labels_test]
        self.m, self.n = self.x.shape
        self.c = self.r.shape[1]
        self.k = k
        self.lamda, self.lazy = lamda, lazy
        self.alfa, self.beta, self.l1, self.l2 = alfa, beta, 0.0, 0.0
        self.M = rng.random((k, self.n)) * 0.02 - 0.1
        self.V = rng.random((k, self.n, self.c)) * 0.02 - 0.1
        self.z_v, self.n_v = np.zeros((k, self.n, self.c)), np.zeros((k, self.n, self.c))
        self.z_m, self.n_m = np.zeros((k, self.n)), np.zeros((k, self.n))

    def _forward(self, xt, rt):
        """Gate g (k,), expert outputs w (C, k), their softmax yih (C, k), posterior fh (k,) for one row."""
        g = np.exp(np.dot(self.M, xt.transpose())).transpose()
        g = g / np.sum(g, axis=0)
        w = np.zeros((self.c, self.k))
        for j in range(self.c):
            w[j, :] = np.dot(self.V[:, :, j], xt.transpose()).transpose()
        blend = np.dot(w, g.transpose()).transpose()
        blend_p = np.exp(blend)  # computed and unused by the post's loop, kept for its cost
        blend_p = blend_p / np.sum(blend_p)
        yih = np.exp(w)
        yih = yih / np.array([np.sum(yih, axis=0)] * self.c)
        fh = np.exp(np.sum(np.log(yih) * np.array([rt] * self.k).transpose(), axis=0)) * g
        fh = fh / np.sum(fh)
        return g, w, yih, fh

    def sgd_epoch(self):
        """One pass of sgdTrain's loop: per row, per expert and class, v += η (r_j - y_j) f x̃; then η decays."""
        for t in range(self.m):
            xt, rt = self.x[t, :], self.r[t, :]
            g, w, yih, fh = self._forward(xt, rt)
            for e in range(self.k):
                for j in range(self.c):
                    dv = self.lamda * (rt[j] - yih[j, e]) * fh[e] * xt
                    self.V[e, :, j] = self.V[e, :, j] + dv
                dm = self.lamda * (fh[e] - g[e]) * xt
                self.M[e, :] = self.M[e, :] + dm
        self.lamda = self.lamda * self.lazy

    def ftrl_epoch(self):
        """One pass of ftrlTrainUpdate's loop: FTRL-Proximal on the whole of V, then of M, per row."""
        k, n, c = self.k, self.n, self.c
        for t in range(self.m):
            xt, rt = self.x[t, :], self.r[t, :]
            g, w, yih, fh = self._forward(xt, rt)
            dv = -((np.array([rt] * k) - yih.transpose()) * fh.reshape(k, 1)).reshape(k, 1, c) * \
                np.array([np.array([xt] * c).transpose()] * k)
            sigma_v = (np.sqrt(self.n_v + dv * dv) - np.sqrt(self.n_v)) / self.alfa
            self.z_v = self.z_v + dv - sigma_v * self.V
            self.n_v = self.n_v + dv * dv
            self.V = -1.0 / ((self.beta + np.sqrt(self.n_v)) / self.alfa + self.l2) * \
                (self.z_v - np.sign(self.z_v) * self.l1)
            self.V[np.where(np.abs(self.z_v) <= self.l1)] = 0
            dm = -(np.array(fh) - np.array(g)).reshape(k, 1) * np.array([xt] * k)
            sigma_m = (np.sqrt(self.n_m + dm * dm) - np.sqrt(self.n_m)) / self.alfa
            self.z_m = self.z_m + dm - sigma_m * self.M
            self.n_m = self.n_m + dm * dm
            self.M = -1.0 / ((self.beta + np.sqrt(self.n_m)) / self.alfa + self.l2) * \
                (self.z_m - np.sign(self.z_m) * self.l1)
            self.M[np.where(np.abs(self.z_m) <= self.l1)] = 0

    def _decide(self, xi):
        """The blended class probabilities (C, 1) of one row, as the post's ``deci``."""
        xi = xi.reshape(1, self.n)
        w = np.zeros((self.c, self.k))
        for j in range(self.c):
            w[j, :] = np.dot(self.V[:, :, j], xi.transpose())[:, 0]
        g = np.exp(np.dot(self.M, xi.transpose()))
        g = g / np.sum(g)
        p = np.exp(np.dot(w, g))
        return p / np.sum(p)

    def logloss(self):
        """Held-out log-loss in bits, one row at a time, as the post's ``logloss``."""
        total = 0
        for i in range(self.x_test.shape[0]):
            ri = self.r_test[i, :]
            p = self._decide(self.x_test[i, :])[:, 0]
            total = total + np.log2(np.power(p[0], ri[0])) + np.log2(np.power(p[1], ri[1]))
        return -total / self.x_test.shape[0]


def _data(n_samples):
    X, X_test, y, y_test = make_circles(n_samples, seed=0)
    scale = standardizer(X)
    return scale(X), scale(X_test), y, y_test


def _contenders(k, opt, kind, data):
    """(ours, theirs): callables that each run one more epoch of their own training run."""
    X, X_test, y, y_test = data
    post = Post003(X, y, X_test, y_test, k, seed=0)
    post_pass = post.sgd_epoch if opt == "SGD" else post.ftrl_epoch
    model = LocalExperts(2, 2, k, mode="competitive", seed=0)
    optimizer = SGD(lr=0.1, decay=0.99) if opt == "SGD" else FTRL(alpha=1.0, beta=0.2)
    rng = np.random.default_rng(0)
    if kind == "pass only":
        def ours():
            train_epoch(model, X, y, optimizer, batch_size=1, seed=rng)
            optimizer.end_epoch()
        return ours, post_pass

    def ours():
        fit_local_experts(model, X, y, optimizer, epochs=1, batch_size=1, seed=rng, X_test=X_test, y_test=y_test)

    def theirs():
        post_pass()
        post.logloss()
    return ours, theirs


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(ours, theirs, rounds, repeats):
    """Interleaved timing: per round, ``repeats`` epochs of each, alternating; returns per-round medians
    (ours, theirs, in s) and ratios."""
    ours(), theirs()  # warm-up
    per_round = []
    for _ in range(rounds):
        a, b = [], []
        for i in range(repeats):
            if i % 2:
                b.append(_time(theirs))
                a.append(_time(ours))
            else:
                a.append(_time(ours))
                b.append(_time(theirs))
        per_round.append((statistics.median(a), statistics.median(b)))
    return per_round


def steps(rounds=5, quick=False):
    """How many times :func:`measure` calls ``progress.step``."""
    return len(QUICK_CONFIGS if quick else CONFIGS) * len(KINDS)


def measure(rounds=5, quick=False, progress=None):
    """Time numpy_moe's classic local experts against post 003's loop; one dict per (k, optimiser, kind).

    rounds : rounds of interleaved repeats (the ratio's median and range are over rounds). quick : 100
    points, k = 2 with SGD, 2 repeats per round (for the tests). progress : None or an object with
    ``step(detail)`` (experiments._common.Progress), called once per row.

    Returns a list of dicts: name, ours_ms, ref_ms (medians over rounds of the per-round medians), ratio_median,
    ratio_min, ratio_max (ours / ref per round), target (1.0) and pass (ratio_median <= target).
    """
    data = _data(100 if quick else 1000)
    repeats = 2 if quick else 3
    rows = []
    for k, opt in QUICK_CONFIGS if quick else CONFIGS:
        for kind in KINDS:
            name = f"classic local experts, batch 1, k={k}, {opt}" + (", pass only" if kind == "pass only" else "")
            per_round = compare(*_contenders(k, opt, kind, data), rounds, repeats)
            ratios = [a / b for a, b in per_round]
            ratio = statistics.median(ratios)
            rows.append({"name": name, "ours_ms": 1e3 * statistics.median(a for a, _ in per_round),
                         "ref_ms": 1e3 * statistics.median(b for _, b in per_round), "ratio_median": ratio,
                         "ratio_min": min(ratios), "ratio_max": max(ratios), "target": TARGET,
                         "pass": ratio <= TARGET})
            if progress is not None:
                progress.step(name)
    return rows


def format_rows(rows):
    """The rows as a text table: ms per epoch, ratio median and range, PASS or MISS."""
    head = f"{'configuration':<52} {'ours ms':>8} {'post ms':>8} {'ratio (range)':>20} {'target':>7} verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        spread = f"{r['ratio_median']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        lines.append(f"{r['name']:<52} {r['ours_ms']:>8.1f} {r['ref_ms']:>8.1f} {spread:>20} "
                     f"{'<= ' + format(r['target'], 'g'):>7} {'PASS' if r['pass'] else 'MISS'}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_rows(measure()))
