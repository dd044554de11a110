"""The Module base class: parameters, children, modes, construction config, and the checks that wrap
every forward and backward pass (a backward needs its forward; a gradient of another float dtype is
converted; a module is in one thread's pass at a time). The contract itself is in :mod:`numpy_moe.layers`."""
import functools
import inspect
import os
import threading

from ..backend import device_inputs, on_backend, result_dtype, to_numpy
from ..validation import check_bool


class NoForwardPassError(RuntimeError, ValueError):
    """``backward`` called on a module with no forward pass to differentiate: none has run, or the last one
    raised. A ValueError too, which MoE and SoftMoE raised for it before every module checked it."""


# each forward pass and the backward that differentiates it; a balance loss's forward is its __call__
_PASSES = {"forward": "backward", "__call__": "backward", "forward_grouped": "backward_grouped"}
_FORWARD_OF = {"backward": "forward", "backward_grouped": "forward_grouped"}


# id(module) -> [thread, depth] while a thread is inside one of the module's checked passes (_enter_pass); the
# entry is removed when its outermost pass returns or raises
_in_pass = {}
_in_pass_lock = threading.Lock()


def _enter_pass(module):
    """Mark ``module`` as in a pass of this thread (nested passes of the thread count up); returns its key for
    :func:`_leave_pass`. RuntimeError when another thread is inside one of ``module``'s passes.

    A module keeps its forward pass's arrays on itself for the backward (and a composite one reads back what
    its children kept), so two threads in one module at once read each other's: an MoE layer used from two
    threads returned another input's output in about 40% of the calls, without an error, and raised
    TypeError or IndexError in others. Passes from different threads one after the other are allowed
    (numpy_moe's own threads run a gate's backward whose forward ran in the calling thread).
    """
    key, me = id(module), threading.get_ident()
    with _in_pass_lock:
        entry = _in_pass.get(key)
        if entry is None:
            _in_pass[key] = [me, 1]
            return key
        if entry[0] == me:
            entry[1] += 1
            return key
    raise RuntimeError(f"{type(module).__name__} is in a forward or backward pass in another thread: a module "
                       "keeps its last forward pass for its backward, so one module serves one thread at a "
                       "time; give each thread its own copy (copy.deepcopy(model)), or take turns with a lock")


def _leave_pass(key):
    """End one :func:`_enter_pass`; the outermost removes the mark."""
    with _in_pass_lock:
        entry = _in_pass.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _in_pass[key]


def _forget_other_threads_passes():
    """In a child made by fork, only the forking thread exists: forget the passes of the parent's others."""
    global _in_pass_lock
    _in_pass_lock = threading.Lock()
    me = threading.get_ident()
    for key in [k for k, (thread, _) in _in_pass.items() if thread != me]:
        del _in_pass[key]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_other_threads_passes)


def _records_forward(method, backward):
    """``method`` (a forward pass) that records in the module whether it ran to the end, and the dtype and shape of
    what it returned (the dtype of a Routing's weights; None for a float), for ``backward``."""
    flag = "_ran_" + _FORWARD_OF[backward]
    out_dtype = flag + "_dtype"

    def run(self, *args, **kwargs):
        state = self.__dict__
        if "_constructed" not in state:  # the attributes before any pass: what Module.drop_caches keeps
            state["_constructed"] = frozenset(state) | {"_constructed"}
        state[flag] = False  # until it returns: a forward that raises may have replaced part of the cache
        args, kwargs = device_inputs(args, kwargs)  # under CuPy, NumPy inputs go to the GPU (a no-op under NumPy)
        try:
            out = method(self, *args, **kwargs)
        except BaseException:
            # False again: a forward that called super().forward (or another checked forward of the module)
            # which returned, and then raised itself, would otherwise leave the inner call's True
            state[flag] = False
            raise
        state[flag] = True
        dtype = getattr(out, "dtype", None)
        if dtype is None:  # a gate's Routing: the dtype of its weights, for the gradient dict its backward takes
            dtype = getattr(getattr(out, "weight", None), "dtype", None)
        state[out_dtype] = dtype
        # the shape backward's gradient must have (an array output only: a gate's Routing, a loss's float
        # have none)
        state[flag + "_shape"] = tuple(out.shape) if hasattr(out, "dtype") and isinstance(
            getattr(out, "shape", None), tuple) else None
        return out

    @functools.wraps(method)
    def forward(self, *args, **kwargs):
        key = _enter_pass(self)
        try:
            return run(self, *args, **kwargs)
        finally:
            _leave_pass(key)

    forward._pass_checked = True
    return forward


def _other_float(a, dtype):
    """True for an array of a real dtype (float or integer) other than ``dtype``, the forward output's float."""
    given = getattr(a, "dtype", None)
    return given is not None and given != dtype and given.kind in "fiu"


def _needs_forward(method):
    """``method`` (a backward pass) that raises NoForwardPassError unless its forward pass has run, checks its
    gradient against the shape of the forward's output (:func:`_check_grad`), and converts a gradient of another
    real dtype to the dtype of the forward's output (a float64 dy given to a float32 model would otherwise make
    float64 gradients and a float64 dx)."""
    name = method.__name__
    flag = "_ran_" + _FORWARD_OF[name]
    out_dtype = flag + "_dtype"
    grad_name = next(iter(list(inspect.signature(method).parameters)[1:]), None)  # dy, dout, dlogits

    def run(self, *args, **kwargs):
        state = self.__dict__
        if not state.get(flag):
            raise NoForwardPassError(f"{type(self).__name__}.{name} called before {_FORWARD_OF[name]}: it needs a "
                                     "forward pass first (none has run, or the last one raised)")
        shape = state.get(flag + "_shape")
        args, kwargs = device_inputs(args, kwargs)  # a NumPy gradient goes to the GPU under CuPy, as forward's x
        if name == "backward" and shape is not None and (args or grad_name in kwargs):
            args, kwargs = _check_grad(self, args, kwargs, grad_name, shape)
        dtype = state.get(out_dtype)
        if args and isinstance(args[0], dict):  # a routing gradient: NumPy arrays go to the GPU under CuPy
            args = (device_inputs((), args[0])[1],) + args[1:]
        if args and dtype is not None:
            dy = args[0]
            if isinstance(dy, dict):  # a routing gradient: "weight", "logits", ... arrays
                if any(_other_float(g, dtype) for g in dy.values()):
                    args = ({k: g.astype(dtype) if _other_float(g, dtype) else g for k, g in dy.items()},) + args[1:]
            elif _other_float(dy, dtype):
                args = (dy.astype(dtype),) + args[1:]
        return method(self, *args, **kwargs)

    @functools.wraps(method)
    def backward(self, *args, **kwargs):
        key = _enter_pass(self)
        try:
            return run(self, *args, **kwargs)
        finally:
            _leave_pass(key)

    backward._pass_checked = True
    return backward


def _check_grad(module, args, kwargs, grad_name, shape):
    """``args, kwargs`` of ``module.backward`` with its gradient checked against the output's ``shape``: a
    gradient of another shape would broadcast into wrong parameter gradients (dy (N, 1) for (N, D)) or fail
    deep inside; one that is not a real array would fail there with an AttributeError."""
    dy = args[0] if args else kwargs[grad_name]
    if not (hasattr(dy, "dtype") and isinstance(getattr(dy, "shape", None), tuple)):
        dy = to_numpy(dy)  # a nested list of the right shape is a gradient too (checked on the host first)
    if dy.dtype.kind not in "fiu":
        raise TypeError(f"{grad_name} has dtype {dy.dtype}; expected a real-valued array, the gradient of "
                        f"{type(module).__name__}.forward's output")
    if tuple(dy.shape) != shape:
        raise ValueError(f"{grad_name} has shape {tuple(dy.shape)}; expected {shape}, the shape of "
                         f"{type(module).__name__}.forward's output")
    dy = on_backend(dy)  # a NumPy gradient for a model on the GPU is copied there, as forward copies x
    if args:
        return (dy,) + args[1:], kwargs
    return args, {**kwargs, grad_name: dy}


def _copy_containers(value):
    """``value`` with its lists, tuples and dicts (nested) copied; anything else (a child module, a
    generator, a balance loss) is the same object."""
    if type(value) in (list, tuple):
        return type(value)(_copy_containers(v) for v in value)
    if type(value) is dict:
        return {k: _copy_containers(v) for k, v in value.items()}
    return value


class Module:
    """Base class: parameter bookkeeping, child traversal, train/eval mode, construction config.

    Every subclass's forward and backward passes are checked in one place (``__init_subclass__``): a
    backward called before its forward (or after a forward that raised) raises :class:`NoForwardPassError`
    naming the class, instead of an AttributeError about a missing cache; a ``backward`` whose forward
    returned an array takes a real gradient of that array's shape only (TypeError / ValueError naming it
    otherwise). The pairs are ``forward`` (or ``__call__``, a balance loss's forward) / ``backward`` and
    ``forward_grouped`` / ``backward_grouped``.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name, wrap in [(f, lambda m, b=b: _records_forward(m, b)) for f, b in _PASSES.items()] + \
                [(b, _needs_forward) for b in _FORWARD_OF]:
            method = getattr(cls, name, None)  # its own, or a plain base class's (ExpertBank's GroupedPasses)
            if callable(method) and not getattr(method, "_pass_checked", False) \
                    and method is not getattr(Module, name, None):
                setattr(cls, name, wrap(method))

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        # what the caller passed to the constructor, for get_config(); lists and dicts copied, so that a
        # caller who changes them afterwards does not change the configuration (and the saved file)
        self._init_args = (_copy_containers(args), _copy_containers(kwargs))
        return self

    def get_config(self):
        """The constructor's arguments by name, defaults filled in: ``type(m).from_config(m.get_config())``
        builds a module of the same architecture (with freshly drawn parameters). Lists, tuples and dicts
        are copies: changing them changes neither the module nor its configuration."""
        args, kwargs = self._init_args
        bound = inspect.signature(type(self).__init__).bind(self, *args, **kwargs)
        bound.apply_defaults()
        return _copy_containers(dict(list(bound.arguments.items())[1:]))  # without self

    @classmethod
    def from_config(cls, config):
        """A new module built from a :meth:`get_config` dict (``*layers`` style arguments included)."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        unknown = set(config) - {p.name for p in params}
        if unknown:
            raise TypeError(f"config has arguments {sorted(unknown)} that {cls.__name__} does not take")
        var_positional = any(p.kind == p.VAR_POSITIONAL for p in params)
        args, kwargs = [], {}
        for p in params:
            if p.name not in config:
                continue
            value = config[p.name]
            if p.kind == p.VAR_POSITIONAL:
                args.extend(value)
            elif p.kind == p.VAR_KEYWORD:
                kwargs.update(value)
            elif var_positional and p.kind != p.KEYWORD_ONLY:
                args.append(value)  # before *args, so it must go by position
            else:
                kwargs[p.name] = value
        return cls(*args, **kwargs)

    def __init__(self, dtype="float64"):
        self.dtype = result_dtype(dtype)
        self.params = {}
        self.grads = {}
        self.buffers = {}
        self.training = True

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} defines no forward pass")

    def backward(self, dy):
        raise NotImplementedError(f"{type(self).__name__} defines no backward pass (numpy_moe.classic.LocalExperts "
                                  "trains by its own rules: fit_local_experts)")

    def __call__(self, x):
        return self.forward(x)

    def __setattr__(self, name, value):
        # children() keeps the names of the attributes that may hold children; assigning a Module, a list or
        # a tuple, or replacing such an attribute, makes it look again (lists are read afresh every call)
        names = self.__dict__.get("_child_names")
        if names is not None and (name in names or isinstance(value, (Module, list, tuple))):
            object.__setattr__(self, "_child_names", None)
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        object.__setattr__(self, "_child_names", None)
        object.__delattr__(self, name)

    def children(self):
        """Yield (name, child Module) for attributes that are Modules or lists/tuples of Modules.

        A list or tuple counts as a list of children when its first element is a Module (then every Module
        in it is yielded); lists of arrays or numbers, which the layers keep for their backward passes, are
        not scanned element by element. The names of the attributes that can hold children are remembered
        between calls (training calls this several times a step) and looked for again whenever an
        attribute is assigned a Module, a list or a tuple.
        """
        attrs = vars(self)
        names = attrs.get("_child_names")
        if names is None:
            names = tuple(name for name, value in attrs.items()
                          if isinstance(value, Module) or type(value) in (list, tuple))
            object.__setattr__(self, "_child_names", names)
        for name in names:
            value = attrs[name]
            if isinstance(value, Module):
                yield name, value
            elif value and isinstance(value[0], Module):
                for i, v in enumerate(value):
                    if isinstance(v, Module):
                        yield f"{name}.{i}", v

    def modules(self):
        """Yield this module and every descendant, depth first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def named_parameters(self, prefix=""):
        """Yield (dotted name, parameter array) for this module and all descendants."""
        for key, p in self.params.items():
            yield prefix + key, p
        for name, child in self.children():
            yield from child.named_parameters(prefix + name + ".")

    def named_grads(self, prefix=""):
        """Yield (dotted name, gradient array) in the order of :meth:`named_parameters`."""
        for key in self.params:
            yield prefix + key, self.grads[key]
        for name, child in self.children():
            yield from child.named_grads(prefix + name + ".")

    def named_buffers(self, prefix=""):
        """Yield (dotted name, buffer array) for this module and all descendants (state without gradient)."""
        for key, b in self.buffers.items():
            yield prefix + key, b
        for name, child in self.children():
            yield from child.named_buffers(prefix + name + ".")

    def end_step(self):
        """Called by the training loops after each optimiser step in training mode: update ``buffers``.

        The default passes the call on to the children; a module with state overrides it and calls
        ``super().end_step()``.
        """
        for _, child in self.children():
            child.end_step()

    @property
    def aux_loss(self):
        """Sum of the auxiliary losses of the last forward (0.0 for modules without one)."""
        return sum(float(child.aux_loss) for _, child in self.children())

    def zero_grad(self):
        for m in self.modules():
            for key, p in m.params.items():
                m.grads[key] = p * 0

    def train(self, mode=True):
        mode = check_bool(mode, "mode")  # train("eval") would have left every module training
        for m in self.modules():
            m.training = mode
        return self

    def eval(self):
        return self.train(False)

    def n_parameters(self):
        return sum(int(p.size) for _, p in self.named_parameters())

    def drop_caches(self):
        """Forget what the passes kept for their backward (the input, activations, routings, and the records that
        let a backward run), in this module and every descendant; returns self.

        Kept: every attribute the module had before its first pass (parameters, gradients, buffers, settings,
        children, a gate's generator). For a model done with its batch: the estimators call it after fit,
        partial_fit and predict, so that a pickled or copied estimator holds its parameters, not arrays of its
        last batch. A backward then needs a new forward (NoForwardPassError otherwise)."""
        for m in list(self.modules()):
            constructed = m.__dict__.get("_constructed")
            if constructed is not None:
                for name in [name for name in m.__dict__ if name not in constructed]:
                    del m.__dict__[name]
                m.__dict__["_child_names"] = None  # it may list a deleted attribute (a list of arrays)
        return self
