"""Gates: map a batch to combine weights over experts, one module per router family (MATH.md §2, §4, §10).

- :mod:`.base`: :class:`Routing` (the assignments a sparse gate chose), :func:`routing_backward`,
  top-k selection; shared by every gate.
- :mod:`.softmax`: :class:`SoftmaxGate` (dense) and :class:`TopKGate` (top-k in either convention, with
  Shazeer or V-MoE noise).
- :mod:`.expert_choice`: :class:`ExpertChoiceGate` (each expert picks its samples).
- :mod:`.scored`: :class:`ScoreGate` (softmax or sigmoid scores, group-limited top-k, a selection bias
  balanced without a loss, renormalised and scaled weights: Mixtral, Qwen2-MoE, DeepSeek-V2/V3).
"""
from .base import Routing, expert_major_logits, routing_backward, topk_indices
from .expert_choice import ExpertChoiceGate, expert_choice_capacity
from .scored import GROUP_SCORES, SCORES, ScoreGate
from .softmax import CONVENTIONS, NOISES, SoftmaxGate, TopKGate, route_topk

__all__ = ["CONVENTIONS", "GROUP_SCORES", "NOISES", "SCORES", "ExpertChoiceGate", "Routing", "ScoreGate",
           "SoftmaxGate", "TopKGate", "expert_choice_capacity", "expert_major_logits", "route_topk",
           "routing_backward", "topk_indices"]
