"""numpy_moe: Mixture-of-Experts models written out in NumPy, every gradient derived by hand and checked.

Where to start
--------------
- Learners: the teaching path of the README, rendered with its figures in the documentation's gallery
  (``make docs``, then open ``docs/_build/html/index.html``), or run it from the repository root:
  ``python -m experiments`` lists the walk-throughs and studies, ``python -m experiments tutorial_dense``
  runs the first one. Every formula and its gradient is in ``docs/MATH.md``.
- Users of scikit-learn: :class:`MoEClassifier`, :class:`MoERegressor`, :class:`LocalExpertsClassifier`
  and :class:`LocalExpertsRegressor` are estimators (``fit``, ``predict``, ``Pipeline``,
  ``GridSearchCV``); :mod:`numpy_moe.io` saves and loads them without pickle.
- Engineers checking a framework: :class:`MoE` is the layer (dense or top-k, any gate convention, noise,
  capacity, balance losses), :func:`check_module` compares every gradient of a module with central
  finite differences, :func:`fit` and :func:`predict` train and run any module.

``python -m numpy_moe`` prints the version, the array backend and where the docs and experiments are.

The names below are loaded on first use, so ``import numpy_moe`` stays fast (scikit-learn, for one,
is only imported when an estimator is asked for)::

    import numpy_moe as nm
    layer = nm.MoE(4, 3, n_experts=4, top_k=2, seed=0)
    nm.check_module(layer.eval(), x)           # x: (N, 4) float64
    clf = nm.MoEClassifier(random_state=0).fit(X, y)
    nm.io.save(clf, "model.npz")
"""
import importlib

__version__ = "0.1.0"  # the single source: setup.cfg reads it (version = attr: numpy_moe.__version__)

# public name -> modules that may define it, first match wins (a module may move into a package)
_LAZY = {
    "MoE": ("numpy_moe.moe",),
    "SoftmaxGate": ("numpy_moe.gates", "numpy_moe.gating"),
    "TopKGate": ("numpy_moe.gates", "numpy_moe.gating"),
    "ExpertChoiceGate": ("numpy_moe.gates", "numpy_moe.gating"),
    "ScoreGate": ("numpy_moe.gates",),
    "BaseGate": ("numpy_moe.gates",),
    "SinkhornGate": ("numpy_moe.gates",),
    "HashGate": ("numpy_moe.gates",),
    "SoftMoE": ("numpy_moe.soft_moe",),
    "Capacity": ("numpy_moe.routing",),
    "combine_weights": ("numpy_moe.routing",),
    "ExpertBank": ("numpy_moe.experts",),
    "SharedExpert": ("numpy_moe.experts",),
    "Module": ("numpy_moe.layers",),
    "Linear": ("numpy_moe.layers",),
    "MLP": ("numpy_moe.layers",),
    "Sequential": ("numpy_moe.layers",),
    "LocalExperts": ("numpy_moe.classic",),
    "MoEClassifier": ("numpy_moe.estimators",),
    "MoERegressor": ("numpy_moe.estimators",),
    "LocalExpertsClassifier": ("numpy_moe.estimators",),
    "LocalExpertsRegressor": ("numpy_moe.estimators",),
    "HMERegressor": ("numpy_moe.estimators",),
    "HMEClassifier": ("numpy_moe.estimators",),
    "check_module": ("numpy_moe.gradcheck",),
    "fit": ("numpy_moe.train",),
    "predict": ("numpy_moe.train",),
    "SGD": ("numpy_moe.optim",),
    "Adam": ("numpy_moe.optim",),
    "FTRL": ("numpy_moe.optim",),
    "set_backend": ("numpy_moe.backend",),
    "get_backend": ("numpy_moe.backend",),
}
_SUBMODULES = ("io", "backend", "gradcheck", "estimators", "models", "plotting", "datasets", "presets", "balance",
               "gates")

__all__ = ["__version__", *_LAZY, *_SUBMODULES]


def __getattr__(name):
    """Import a public name on first use (PEP 562) and keep it, so the next access is a plain lookup."""
    if name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif name in _LAZY:
        errors = []
        for module_name in _LAZY[name]:  # the first candidate that imports and defines the name wins
            try:
                module = importlib.import_module(module_name)
            except ImportError as err:
                errors.append(err)
                continue
            if hasattr(module, name):
                value = getattr(module, name)
                break
        else:
            if errors:
                raise errors[0]
            raise AttributeError(f"numpy_moe.{name} is listed but none of {_LAZY[name]} defines it")
    else:
        raise AttributeError(f"module 'numpy_moe' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
