"""Gates: map a batch to combine weights over experts, one module per router family (MATH.md §2, §4, §10).

- :mod:`.base`: :class:`Routing` (the assignments a sparse gate chose), :func:`routing_backward`,
  top-k selection; shared by every gate.
- :mod:`.softmax`: :class:`SoftmaxGate` (dense) and :class:`TopKGate` (top-k in either convention, with
  Shazeer or V-MoE noise).
- :mod:`.expert_choice`: :class:`ExpertChoiceGate` (each expert picks its samples).
- :mod:`.scored`: :class:`ScoreGate` (softmax or sigmoid scores, group-limited top-k, a selection bias
  balanced without a loss, renormalised and scaled weights: Mixtral, Qwen2-MoE, DeepSeek-V2/V3).
- :mod:`.balanced`: :class:`BaseGate` (BASE layers: exact balanced assignment in training).
- :mod:`.sinkhorn_gate`: :class:`SinkhornGate` (S-BASE: top-k on a Sinkhorn-balanced plan) and :func:`sinkhorn`.
- :mod:`.hash`: :class:`HashGate` (hash layers: a fixed expert per key, random or balanced).

Soft MoE mixes tokens into slots rather than choosing experts: it is a layer, numpy_moe.soft_moe.

Every gate checks its input x (validation.check_input: a 2-D float array of D columns, finite, converted to
the gate's dtype). ``forward(x, ..., checked=True)`` skips that check for an x that has passed it already
and only converts the dtype: MoE passes it, having checked x itself (as it does for ExpertBank and
SharedExpert).

``numpy_moe.gates.sinkhorn`` is the function :func:`sinkhorn`. Its module is ``numpy_moe.gates.sinkhorn_gate``:
while it was called ``sinkhorn`` too, the function hid it (``import numpy_moe.gates.sinkhorn as m`` gave
the function). Code that imports from the old module name (``from numpy_moe.gates.sinkhorn import
SinkhornGate``) still works: that name is an alias of the module in ``sys.modules``.
"""
import sys

from .balanced import BaseGate, balanced_assignment
from .base import Routing, expert_major_logits, fixed_selection_backward, routing_backward, topk_indices
from .expert_choice import ExpertChoiceGate, expert_choice_capacity
from .hash import HASHES, HashGate
from .scored import GROUP_SCORES, SCORES, ScoreGate
from . import sinkhorn_gate
from .sinkhorn_gate import SinkhornGate, sinkhorn
from .softmax import CONVENTIONS, NOISES, SoftmaxGate, TopKGate, route_topk

__all__ = ["CONVENTIONS", "GROUP_SCORES", "HASHES", "NOISES", "SCORES", "BaseGate", "ExpertChoiceGate", "HashGate",
           "Routing", "ScoreGate", "SinkhornGate", "SoftmaxGate", "TopKGate", "balanced_assignment",
           "expert_choice_capacity", "expert_major_logits", "fixed_selection_backward", "route_topk",
           "routing_backward", "sinkhorn", "topk_indices"]

sys.modules.setdefault(__name__ + ".sinkhorn", sinkhorn_gate)  # the module's old name (a module, not the function)
