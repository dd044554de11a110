"""Multi-task mixtures of experts: MMoE, its one-gate variant OMoE, and the shared-bottom baseline.

Ma, Zhao, Yi, Chen, Hong & Chi (2018), "Modeling task relationships in multi-task learning with
multi-gate mixture-of-experts" (KDD), §3 and §4. T tasks share E experts; in MMoE each task has its own
softmax gate over the experts and its own tower:

    e_k(x) = relu(x W_k + b_k)                     expert k, (N, H)
    g^t(x) = softmax(x Wg_t)                        gate of task t, (N, E) (no bias, as in the paper)
    f^t(x) = Σ_k g^t_k(x) e_k(x)                    task t's input to its tower, (N, H)
    y_t    = tower_t(f^t(x))                        an MLP H -> tower_hidden -> O

OMoE (``gates="one"``) uses one gate for every task; the shared-bottom model (Caruana 1997) replaces
experts and gates by one ReLU layer that every tower reads. Outputs of the T tasks are concatenated,
(N, T O), so ``train.fit(loss="mse")`` trains all tasks with equal weight on (N, T O) targets.
"""
from .. import functional as F
from ..backend import default_rng, get_array_module, sum_rows
from ..layers import MLP, Linear, Module, ReLU, check_budget, init_weight, zeros_param
from ..validation import check_input, check_positive_int, to_dtype

GATES = ("multi", "one")


def _towers(n_tasks, hidden, tower_hidden, n_outputs, rng, dtype):
    return [MLP(hidden, tower_hidden, n_outputs, seed=rng, dtype=dtype) for _ in range(n_tasks)]


def _check_size(model, own, n_tasks, hidden, tower_hidden, n_outputs):
    """Count the model's parameters, its ``own`` plus n_tasks towers, against the budget (layers.check_budget)
    before any is built: n_tasks=10**12 would otherwise loop over towers until memory runs out."""
    tower = hidden * tower_hidden + tower_hidden + tower_hidden * n_outputs + n_outputs
    check_budget((own + n_tasks * tower,), model.dtype, what=f"{type(model).__name__}(n_tasks={n_tasks})'s "
                                                            f"{own + n_tasks * tower} parameters")


def _towers_forward(towers, inputs):
    """Each tower on its own input (list of (N, H)) -> (N, T O)."""
    xp = get_array_module(inputs[0])
    return xp.concatenate([tower.forward(f) for tower, f in zip(towers, inputs)], axis=1)


def _towers_backward(towers, dy):
    """Split dy (N, T O) per task and run each tower's backward: list of (N, H)."""
    O = dy.shape[1] // len(towers)
    return [tower.backward(dy[:, t * O:(t + 1) * O]) for t, tower in enumerate(towers)]


class MMoE(Module):
    """Shared ReLU experts, one softmax gate per task (or one for all), one MLP tower per task.

    Parameters
    ----------
    n_features : D. n_tasks : T (>= 1). n_experts : E. expert_hidden : H, each expert's width.
    tower_hidden : each tower's hidden width. n_outputs : O per task. gates : "multi" (MMoE, one gate
    per task) or "one" (OMoE). seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (N, D) -> y (N, T O), task t in columns t O ... (t + 1) O - 1.
    Parameters: W (E, D, H), b (E, H), Wg (number of gates, D, E), zero at first (uniform gates); towers.t.* (MLP).

    Notes
    -----
    Backward, for df^t = ∂L/∂f^t from tower t:
        ∂L/∂g^t_k = <df^t, e_k>,  ∂L/∂e_k = Σ_t g^t_k df^t,
        gate logits: softmax backward (§2.1), ∂L/∂Wg_t = xᵀ (∂L/∂logits_t);
        expert pre-activations dz_k = ∂L/∂e_k ⊙ [z_k > 0], ∂L/∂W_k = xᵀ dz_k, ∂L/∂b_k = Σ_n dz_k;
        ∂L/∂x = Σ_k dz_k W_kᵀ + Σ_t (∂L/∂logits_t) Wg_tᵀ.
    """

    def __init__(self, n_features, n_tasks=2, n_experts=8, expert_hidden=16, tower_hidden=8, n_outputs=1,
                 gates="multi", seed=None, dtype="float64"):
        super().__init__(dtype)
        if gates not in GATES:
            raise ValueError(f"gates={gates!r} must be one of {GATES}")
        D = self.n_features = check_positive_int(n_features, "n_features")
        T = self.n_tasks = check_positive_int(n_tasks, "n_tasks")
        E = self.n_experts = check_positive_int(n_experts, "n_experts")
        H = check_positive_int(expert_hidden, "expert_hidden")
        check_positive_int(tower_hidden, "tower_hidden")
        check_positive_int(n_outputs, "n_outputs")
        self.gates = gates
        _check_size(self, E * D * H + E * H + (T if gates == "multi" else 1) * D * E, T, H, tower_hidden, n_outputs)
        rng = default_rng(seed)
        self.params["W"] = init_weight(rng, D, H, (E, D, H), "he", self.dtype)
        self.params["b"] = zeros_param((E, H), self.dtype)
        self.params["Wg"] = zeros_param((T if gates == "multi" else 1, D, E), self.dtype)  # uniform gates at first
        self.towers = _towers(T, H, tower_hidden, n_outputs, rng, dtype)
        self.zero_grad()

    def gate(self, x):
        """g (number of gates, N, E): each gate's weights over the experts."""
        x = to_dtype(x, self.dtype)  # float64 x: the float32 model's gates in float32
        return F.softmax(get_array_module(x).einsum("nd,gde->gne", x, self.params["Wg"]), axis=2)

    def forward(self, x):
        xp = get_array_module(x)
        x = check_input(x, self.n_features, self.dtype)
        z = xp.einsum("nd,edh->neh", x, self.params["W"]) + self.params["b"]  # (N, E, H)
        e = F.relu(z)
        g = self.gate(x)  # (G, N, E)
        f = xp.einsum("gne,neh->gnh", g, e)  # (G, N, H)
        self.cache = (x, z, e, g)
        return _towers_forward(self.towers, [f[min(t, len(g) - 1)] for t in range(self.n_tasks)])

    def backward(self, dy):
        xp = get_array_module(dy)
        x, z, e, g = self.cache
        df = xp.stack(_towers_backward(self.towers, dy))  # (T, N, H)
        if len(g) == 1:
            df = df.sum(axis=0, keepdims=True)  # one gate feeds every tower
        dg = xp.einsum("gnh,neh->gne", df, e)  # (G, N, E)
        da = F.softmax_backward(dg, g, axis=2)  # gate logits
        dz = xp.einsum("gne,gnh->neh", g, df) * (z > 0)  # (N, E, H)
        self.grads["W"] = xp.einsum("nd,neh->edh", x, dz)
        self.grads["b"] = sum_rows(dz.reshape(dz.shape[0], -1)).reshape(dz.shape[1:])  # (E, H)
        self.grads["Wg"] = xp.einsum("nd,gne->gde", x, da)
        return xp.einsum("neh,edh->nd", dz, self.params["W"]) + xp.einsum("gne,gde->nd", da, self.params["Wg"])


class SharedBottom(Module):
    """The shared-bottom multi-task baseline: one ReLU layer D -> bottom, read by one MLP tower per task.

    Parameters
    ----------
    n_features : D. n_tasks : T. bottom : width of the shared layer. tower_hidden, n_outputs, seed,
    dtype : as for :class:`MMoE`.

    Shapes: x (N, D) -> y (N, T O). Children: ``bottom`` (Linear), ``towers`` (list of MLP).
    """

    def __init__(self, n_features, n_tasks=2, bottom=113, tower_hidden=8, n_outputs=1, seed=None,
                 dtype="float64"):
        super().__init__(dtype)
        self.n_features = check_positive_int(n_features, "n_features")
        self.n_tasks = check_positive_int(n_tasks, "n_tasks")
        bottom = check_positive_int(bottom, "bottom")
        tower_hidden = check_positive_int(tower_hidden, "tower_hidden")
        n_outputs = check_positive_int(n_outputs, "n_outputs")
        _check_size(self, self.n_features * bottom + bottom, self.n_tasks, bottom, tower_hidden, n_outputs)
        rng = default_rng(seed)
        self.bottom = Linear(n_features, bottom, init="he", seed=rng, dtype=dtype)
        self.act = ReLU(dtype)
        self.towers = _towers(self.n_tasks, bottom, tower_hidden, n_outputs, rng, dtype)

    def forward(self, x):
        h = self.act.forward(self.bottom.forward(x))
        return _towers_forward(self.towers, [h] * self.n_tasks)

    def backward(self, dy):
        dh = sum(_towers_backward(self.towers, dy))
        return self.bottom.backward(self.act.backward(dh))
