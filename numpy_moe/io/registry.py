"""The classes a numpy-moe file may name: an explicit registry, never a lookup by the file's say-so.

A file names each object's class as ``"module:qualname"``. :func:`lookup` finds that name in this
registry or refuses it: it never imports a module and never walks an attribute path, so a file cannot
reach ``subprocess:Popen``, ``io:FileIO``, ``numpy_moe.io:zipfile.ZipFile`` or anything else that is
not listed here.

The registry holds

- every Module subclass (not Module itself) defined in numpy_moe's own modules (:data:`BUILTIN_MODULES`, imported by this
  module, not by a file) and the four numpy_moe estimators;
- :data:`SKLEARN_CLASSES`, the scikit-learn classes a saved Pipeline may contain: the Pipeline itself and
  the transformers people put before an MoE estimator;
- what the program registers itself with :func:`register` (a Module defined in your own code).

numpy_moe.parallel's ExpertParallelMoE is not registered: each rank holds only its own experts, so a
file written by one rank would be a partial model; io.save refuses it (:data:`UNSAVABLE`).
"""
import importlib
import inspect

from ..layers import Module

BUILTIN_MODULES = (
    "numpy_moe.layers", "numpy_moe.gates.softmax", "numpy_moe.gates.expert_choice", "numpy_moe.gates.scored",
    "numpy_moe.gates.balanced", "numpy_moe.gates.sinkhorn_gate", "numpy_moe.gates.hash", "numpy_moe.soft_moe",
    "numpy_moe.experts.bank", "numpy_moe.experts.shared", "numpy_moe.balance.losses", "numpy_moe.balance.conventions",
    "numpy_moe.moe", "numpy_moe.classic",
    "numpy_moe.image_layers.conv", "numpy_moe.image_layers.shape", "numpy_moe.image_layers.norm",
    "numpy_moe.models.image_moe", "numpy_moe.models.sparse_mlp", "numpy_moe.hme",
    "numpy_moe.models.mmoe", "numpy_moe.conv_moe",
    "numpy_moe.models.transformer.embedding", "numpy_moe.models.transformer.attention",
    "numpy_moe.models.transformer.blocks", "numpy_moe.models.transformer.lm",
)
# Classes that moved, under the names older files use for them: the gates lived in numpy_moe.gating and the
# estimators in one module numpy_moe.estimators (version-1 files); the experts and the image layers were
# one module each, numpy_moe.experts and numpy_moe.image_layers, and SinkhornGate lived in
# numpy_moe.gates.sinkhorn, a name the function numpy_moe.gates.sinkhorn hid (version 2).
# io.load and io.load_into read a moved name as the class's current one.
MOVED = {f"numpy_moe.{old}:{name}": f"numpy_moe.{new}:{name}" for old, new, name in (
    ("gating", "gates.softmax", "SoftmaxGate"), ("gating", "gates.softmax", "TopKGate"),
    ("gating", "gates.expert_choice", "ExpertChoiceGate"), ("estimators", "estimators.moe", "MoEClassifier"),
    ("estimators", "estimators.moe", "MoERegressor"), ("estimators", "estimators.local", "LocalExpertsClassifier"),
    ("estimators", "estimators.local", "LocalExpertsRegressor"),
    ("experts", "experts.bank", "ExpertBank"), ("experts", "experts.shared", "SharedExpert"),
    ("image_layers", "image_layers.conv", "Conv2d"), ("image_layers", "image_layers.conv", "MaxPool2d"),
    ("image_layers", "image_layers.shape", "Flatten"), ("image_layers", "image_layers.shape", "Unflatten"),
    ("image_layers", "image_layers.norm", "LayerNorm"), ("image_layers", "image_layers.norm", "GELU"),
    ("gates.sinkhorn", "gates.sinkhorn_gate", "SinkhornGate"))}
BUILTIN_ESTIMATORS = ("MoEClassifier", "MoERegressor", "LocalExpertsClassifier", "LocalExpertsRegressor",
                      "HMERegressor", "HMEClassifier")
SKLEARN_CLASSES = (
    ("sklearn.pipeline", "Pipeline"),
    ("sklearn.preprocessing", "StandardScaler"),
    ("sklearn.preprocessing", "MinMaxScaler"),
    ("sklearn.preprocessing", "MaxAbsScaler"),
    ("sklearn.preprocessing", "RobustScaler"),
    ("sklearn.preprocessing", "Normalizer"),
    ("sklearn.decomposition", "PCA"),
)  # transformers whose whole fitted state is public attributes (PolynomialFeatures, SimpleImputer keep
#    private ones, which a file does not hold)

# Classes io.save refuses, with the reason: a file of one would be a model no one can load.
UNSAVABLE = {
    "numpy_moe.parallel.moe:ExpertParallelMoE": "each rank holds only its own experts, so a file would hold part "
                                                "of the layer (and io does not load it); copy the gate and every "
                                                "rank's experts into a numpy_moe.moe.MoE of the same arguments and "
                                                "save that",
}

_registry = {}
_builtins_loaded = []


def class_name(cls):
    """The name a file stores for ``cls``: ``"module:qualname"``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def is_estimator_class(cls):
    """A scikit-learn style estimator class (get_params / set_params), not a numpy_moe Module."""
    return (isinstance(cls, type) and not issubclass(cls, Module) and callable(getattr(cls, "get_params", None))
            and callable(getattr(cls, "set_params", None)))


def register(cls):
    """Make ``cls`` loadable by :func:`numpy_moe.io.load`; returns ``cls`` (so it works as a decorator).

    ``cls`` must be a subclass of numpy_moe.layers.Module (a model you defined) or a scikit-learn style
    estimator class. Registering a class again under the same name replaces the earlier one (a class
    redefined in a notebook cell).

    Only register classes whose constructors do nothing but build a model from their arguments: loading
    a file calls the constructor with the file's arguments.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register({cls!r}): expected a class")
    if not (issubclass(cls, Module) or is_estimator_class(cls)):
        raise TypeError(f"register({cls.__qualname__}): only numpy_moe Modules and scikit-learn estimators "
                        "can be registered")
    _load_builtins()
    _registry[class_name(cls)] = cls
    return cls


def registered():
    """A copy of the registry: {"module:qualname": class}."""
    _load_builtins()
    return dict(_registry)


def lookup(name):
    """The registered class called ``name``, or None. Never imports anything named by the caller."""
    _load_builtins()
    if not isinstance(name, str):
        return None
    return _registry.get(MOVED.get(name, name))


def _load_builtins():
    """Fill the registry with numpy_moe's own classes and the allowed scikit-learn ones (once)."""
    if _builtins_loaded:
        return
    for module_name in BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Module) and cls is not Module and cls.__module__ == module_name \
                    and not cls.__name__.startswith("_"):  # private bases are not models
                _registry[class_name(cls)] = cls
    estimators = importlib.import_module("numpy_moe.estimators")
    for name in BUILTIN_ESTIMATORS:
        cls = getattr(estimators, name)
        _registry[class_name(cls)] = cls
    for module_name, name in SKLEARN_CLASSES:
        cls = getattr(importlib.import_module(module_name), name)
        _registry[class_name(cls)] = cls
    _builtins_loaded.append(True)
