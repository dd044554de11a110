"""The gates moved to the package :mod:`numpy_moe.gates` (one module per router family); this module
re-exports its names so that ``from numpy_moe.gating import TopKGate`` keeps working."""
from .gates import *  # noqa: F401,F403
from .gates import __all__  # noqa: F401
