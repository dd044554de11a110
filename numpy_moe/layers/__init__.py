"""The Module contract and the basic layers: Linear, ReLU, Tanh, MLP, Sequential.

The package holds the contract (here), the basic layers (here, so that saved files name them
``numpy_moe.layers``), :mod:`.module` (the Module base class and the checks on every pass) and
:mod:`.params` (the parameter constructors and the parameter budget). Their names are importable
from ``numpy_moe.layers`` as before.

Contract (ARCHITECTURE.md): a Module keeps ``params`` and ``grads``, dicts with identical keys;
``forward(x)`` caches what ``backward`` needs; ``backward(dy)`` returns dx (dLoss/dx, x's shape) and
overwrites ``grads`` for that one forward, never accumulating across calls. Composite modules hold
their children as attributes (or lists of them) and expose ``named_parameters()`` with dotted names
(``experts.W1``), which optimisers use as state keys. A module with an auxiliary loss reports it in
``aux_loss`` after forward and adds its gradient in backward.

Every module remembers the arguments it was constructed with: ``get_config()`` returns them by name and
``Cls.from_config(config)`` builds the same architecture again (numpy_moe.io saves a model this way,
as configuration plus parameters by dotted name, so a new Module subclass needs no extra code to be saved).

Non-trainable state that training updates (a selection bias, running statistics) lives in ``buffers``,
a dict beside ``params`` with no gradient: ``named_buffers()`` lists it, numpy_moe.io saves it, and
``end_step()``, which the training loops call after every optimiser step in training mode, is where a
module updates it (the default passes the call on to the children).

Arrays. ``forward`` keeps references to what ``backward`` needs, without copying: the input x (and the
mask, keys or token ids it was given) and, in some layers, the array it returned (Tanh's y, the arrays of a
gate's Routing). Do not modify them in place between a forward and its backward (copy first, or write
``y = y + b`` rather than ``y += b``): the backward would differentiate the modified values without a word.
The other way round is safe: no layer writes an array it is given (read-only arrays work) or reuses an
array it returned in a later call, so y, dx and the ``grads`` entries can be kept. ``drop_caches()`` forgets
what the passes kept (the estimators call it after fit and predict, so a pickled estimator does not carry
its last batch); a copy or pickle of a Module itself keeps them, so its backward still runs. Flatten, Unflatten and
PositionEmbedding's backward return views of what they are given, as NumPy's reshape does. Any memory
layout (views, negative strides, Fortran order, ``np.broadcast_to``) gives the contiguous input's result,
up to the order in which a matrix product sums (rounding).

Threads. Because ``forward`` keeps its arrays on the module for ``backward``, a module serves one thread
at a time: a pass that starts while another thread is inside one of the module's passes raises
RuntimeError (:mod:`.module`), and a forward from another thread between a forward and its backward makes
the backward differentiate that other pass, which no check can see. Give each thread its own copy
(``copy.deepcopy``). Passes from different threads one after the other are fine (numpy_moe's own worker
threads run a gate's backward whose forward ran in the calling thread).

Dtypes. A module with parameters computes in its ``dtype``: an input of another float dtype is converted
to it (check_input, or ``to_dtype`` for the layers other layers call unchecked), integer input is refused,
and ``backward`` converts an output gradient of another float dtype to the dtype of the forward's output,
so a float32 model never returns or stores float64. Layers without parameters (ReLU, Tanh, GELU, Flatten,
Unflatten, MaxPool2d) compute in the float32 or float64 they are given, whatever their ``dtype`` label.

Every parameter is created through :func:`init_weight`, :func:`zeros_param`, :func:`ones_param` or
:func:`normal_param`. Each checks its size against the budget of :func:`parameter_budget` *before* it
allocates anything, so numpy_moe.io can build a model from an untrusted configuration without a huge
``hidden`` exhausting memory first; budget or not, a parameter larger than the machine's physical memory is
refused the same way (:class:`ParameterBudgetError`, a ValueError). A constructor that builds one
sub-module per count (towers per task, blocks per depth) calls :func:`check_budget` on their total first.

Initialisation is seeded: each layer takes ``seed`` (int or numpy Generator) and draws its weights
in float64 from it, then casts to ``dtype``, so float32 and float64 models from the same seed start
from the same weights up to rounding. He init (std sqrt(2 / fan_in)) for layers followed by ReLU,
Glorot (std sqrt(2 / (fan_in + fan_out))) otherwise.
"""
from .. import functional as F
from ..backend import default_rng, sum_rows
from ..validation import check_input, check_positive_int
from .module import NoForwardPassError, Module
from .params import (ParameterBudgetError, check_budget, init_weight, normal_param, ones_param,
                     parameter_budget, zeros_param)

__all__ = ["Linear", "MLP", "Module", "NoForwardPassError", "ParameterBudgetError", "ReLU", "Sequential", "Tanh",
           "check_budget", "init_weight", "normal_param", "ones_param", "parameter_budget", "zeros_param"]


class Linear(Module):
    """y = x W + b.

    Parameters
    ----------
    in_features, out_features : D and O.
    init : "he" or "glorot". seed : int or numpy Generator. dtype : float32 or float64.

    Shapes: x (N, D) -> y (N, O); W (D, O), b (O,).

    Notes
    -----
    dW = xᵀ dy, db = sum_n dy, dx = dy Wᵀ (MATH.md §1.1 derives them).
    """

    def __init__(self, in_features, out_features, init="glorot", seed=None, dtype="float64"):
        super().__init__(dtype)
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        rng = default_rng(seed)
        self.params["W"] = init_weight(rng, in_features, out_features, (in_features, out_features),
                                       init, self.dtype)
        self.params["b"] = zeros_param(out_features, self.dtype)
        self.zero_grad()

    def forward(self, x):
        x = check_input(x, self.in_features, self.dtype)
        self.x = x
        return x @ self.params["W"] + self.params["b"]  # (N, O)

    def backward(self, dy):
        self.grads["W"] = self.x.T @ dy  # (D, O)
        self.grads["b"] = sum_rows(dy)  # (O,)
        return dy @ self.params["W"].T  # (N, D)


class ReLU(Module):
    """y = max(x, 0), elementwise."""

    def forward(self, x):
        self.x = x
        return F.relu(x)

    def backward(self, dy):
        return F.relu_backward(dy, self.x)


class Tanh(Module):
    """y = tanh(x), elementwise."""

    def forward(self, x):
        self.y = F.tanh(x)
        return self.y

    def backward(self, dy):
        return F.tanh_backward(dy, self.y)


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    Each layer (and each module inside one) must be its own instance: a module keeps its last forward for its
    backward, so one instance at two places would backpropagate the second place's input through both.

    ``dtype`` is that of the first layer with parameters (a layer without any, Unflatten or ReLU() in front,
    computes in the dtype it is given, whatever its label), float64 when no layer has parameters.
    """

    def __init__(self, *layers):
        with_params = [layer for layer in layers if any(True for _ in layer.named_parameters())]
        super().__init__(with_params[0].dtype if with_params else layers[0].dtype if layers else "float64")
        seen = {}
        for i, layer in enumerate(layers):
            for m in layer.modules():
                if id(m) in seen and seen[id(m)] != i:
                    raise ValueError(f"layers {seen[id(m)]} and {i} are the same {type(m).__name__} (or hold it); "
                                     "give each place its own instance")
                seen[id(m)] = i
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy


_ACTIVATIONS = {"relu": (ReLU, "he"), "tanh": (Tanh, "glorot")}


class MLP(Sequential):
    """Linear - activation - ... - Linear.

    Parameters
    ----------
    in_features : D. hidden : int or tuple of ints, the hidden widths H. out_features : O.
    activation : "relu" or "tanh". seed, dtype : as for Linear.

    Shapes: x (N, D) -> y (N, O).
    """

    def __init__(self, in_features, hidden, out_features, activation="relu", seed=None, dtype="float64"):
        if not isinstance(activation, str) or activation not in _ACTIVATIONS:  # a list: 'unhashable type'
            raise ValueError(f"activation={activation!r} must be one of {sorted(_ACTIVATIONS)}")
        act, init = _ACTIVATIONS[activation]
        if hasattr(hidden, "__index__"):  # an int, a NumPy integer (a bool too: refused below, by name)
            widths = (hidden,)
        elif isinstance(hidden, (str, bytes, dict)) or not hasattr(hidden, "__iter__"):
            raise TypeError(f"hidden={hidden!r} must be an integer >= 1 or a list or tuple of them")
        else:
            widths = tuple(hidden)
        widths = tuple(check_positive_int(h, "hidden") for h in widths)
        rng = default_rng(seed)
        sizes = (in_features,) + widths + (out_features,)
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(sizes) - 2
            layers.append(Linear(a, b, init="glorot" if last else init, seed=rng, dtype=dtype))
            if not last:
                layers.append(act(dtype))
        super().__init__(*layers)
