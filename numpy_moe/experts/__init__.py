"""Experts: E experts of identical shape with stacked weights, and the shared expert (MATH.md §1, §10).

- :mod:`.bank`: :class:`ExpertBank` (linear, ReLU-MLP, SwiGLU, GeGLU or gpt-oss experts; their
  parameters and the dense pass, every expert on every sample or a batch per expert).
- :mod:`.grouped`: the grouped pass, each expert on its own rows (sparse dispatch), in chunks that may run
  on the CPU's threads.
- :mod:`.gated`: the gated-linear experts' passes (SwiGLU, GeGLU, gpt-oss's clamped SwiGLU).
- :mod:`.shared`: :class:`SharedExpert` (DeepSeek's always-on expert, Qwen2's sigmoid-gated one).
"""
from .bank import ExpertBank
from .grouped import SERIAL_BELOW
from .shared import SharedExpert

__all__ = ["SERIAL_BELOW", "ExpertBank", "SharedExpert"]
