"""Hash routing: a fixed expert per discrete key, no router parameters (Roller et al. 2021, "Hash layers
for large sparse models"; MATH.md §10.12)."""
import heapq

from ..backend import asarray, default_rng, get_array_module, to_numpy
from ..layers import Module, zeros_param
from ..validation import check_input, check_positive_int, to_dtype
from .base import Routing

HASHES = ("random", "balanced")


class HashGate(Module):
    """Route sample n to expert table[key_n], with weight 1: a random or a frequency-balanced hash.

    Parameters
    ----------
    in_features : D (the layer's input width; the gate does not read x). n_experts : E.
    n_keys : V, keys are ints in [0, V) (token ids).
    kind : "random" (table[v] drawn uniformly from the E experts with ``seed``, Roller et al.'s random hash)
        or "balanced" (built by :meth:`balance` from key frequencies; until then the table is the
        random one, so the gate works before balancing).
    seed : int or numpy Generator for the random table. dtype : float32 or float64.

    Shapes: x (N, D), keys (N,) ints -> Routing with M = N assignments (top_k = 1). No parameters;
    the table (V,) is a buffer (saved by numpy_moe.io), holding expert ids as floats.

    Notes
    -----
    Balanced hash (Roller et al. 2021, "balanced assignment"): sort the V keys by descending count in the
    construction data (ties: smaller key first) and give each in turn to the expert with the smallest
    load so far (ties: smaller expert), adding its count. This is the greedy longest-processing-time rule:
    the final loads differ by at most the count of the most frequent key, so they are within one token of
    equal when every key occurs at most once, and never can be closer than that key allows. The
    weight is 1 and nothing is learned, so backward returns dx = 0; the routing's logits are zeros
    (probs uniform) only so the balance statistics can read it.
    """

    convention = "hash"

    def __init__(self, in_features, n_experts, n_keys, kind="random", seed=None, dtype="float64"):
        super().__init__(dtype)
        self.in_features = check_positive_int(in_features, "in_features")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        V = self.n_keys = check_positive_int(n_keys, "n_keys")
        if kind not in HASHES:
            raise ValueError(f"kind={kind!r} must be one of {HASHES}")
        self.kind, self.top_k = kind, 1
        self.buffers["table"] = zeros_param(V, self.dtype)
        self.buffers["table"][...] = asarray(default_rng(seed).integers(0, E, size=V), dtype=self.dtype)
        self.zero_grad()

    def check_keys(self, keys, n_samples=None):
        """keys as an (N,) integer array on the backend; TypeError / ValueError naming the problem."""
        if keys is None:
            raise ValueError("HashGate needs the samples' keys: gate.forward(x, keys=ids) or "
                             "MoE.forward(x, keys=ids), ids (N,) ints in [0, n_keys)")
        keys = asarray(keys)
        if keys.dtype.kind not in "iu":
            raise TypeError(f"keys have dtype {keys.dtype}; expected integers in [0, {self.n_keys})")
        if keys.ndim != 1 or (n_samples is not None and keys.shape[0] != n_samples):
            raise ValueError(f"keys have shape {tuple(keys.shape)}; expected ({n_samples or 'N'},), one per sample")
        if keys.size and (int(keys.min()) < 0 or int(keys.max()) >= self.n_keys):
            raise ValueError(f"keys range over [{int(keys.min())}, {int(keys.max())}]; expected keys in "
                             f"[0, n_keys={self.n_keys})")
        return keys

    def balance(self, keys):
        """Rebuild the table from the key counts of ``keys`` (construction data) by the greedy rule; returns self."""
        if self.kind != "balanced":
            raise ValueError(f"balance() builds the balanced hash; this gate has kind={self.kind!r}")
        keys = self.check_keys(keys)
        counts = to_numpy(get_array_module(keys).bincount(keys, minlength=self.n_keys)).tolist()
        heap, table = [(0, e) for e in range(self.n_experts)], [0] * self.n_keys  # (load, expert), a valid heap
        for v in sorted(range(self.n_keys), key=lambda v: (-counts[v], v)):
            load, e = heapq.heappop(heap)  # the lightest expert, the smaller on ties
            table[v] = e
            heapq.heappush(heap, (load + counts[v], e))
        self.buffers["table"][...] = asarray(table, dtype=self.dtype)
        return self

    def check_buffers(self):
        """Raise ValueError unless every table entry is an expert id, an integer in [0, E) (numpy_moe.io
        calls this on loading: a tampered table would otherwise route to wrong or wrapped-around experts)."""
        xp = get_array_module(self.buffers["table"])
        t = self.buffers["table"]
        if not bool(((t == xp.floor(t)) & (t >= 0) & (t < self.n_experts)).all()):
            raise ValueError(f"HashGate table holds values that are not expert ids in [0, {self.n_experts})")

    def forward(self, x, keys=None, *, checked=False):
        """x (N, D), keys (N,) ints -> Routing."""
        x = to_dtype(x, self.dtype) if checked else check_input(x, self.in_features, self.dtype)  # MoE checked x
        xp = get_array_module(x)
        N, E = x.shape[0], self.n_experts
        keys = self.check_keys(keys, N)
        self.n_samples = N
        expert = self.buffers["table"][keys].astype(xp.intp)
        zeros = xp.zeros((N, E), dtype=self.dtype)
        uniform = xp.full((N, E), 1.0 / E, dtype=self.dtype)
        self.routing = Routing(sample=xp.arange(N), expert=expert, weight=xp.ones(N, dtype=self.dtype),
                               kept=xp.ones(N, dtype=bool), logits=zeros, clean=zeros, sigma=None, eps=None,
                               probs=uniform, top_k=1, convention="hash", scores=uniform)
        return self.routing

    def backward(self, grad):
        """No parameters, and the input only picks nothing: dx = 0 (N, D)."""
        xp = get_array_module(self.routing.logits)
        return xp.zeros((self.n_samples, self.in_features), dtype=self.dtype)
