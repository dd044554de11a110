"""Load-balancing (auxiliary) losses and how frameworks apply them (MATH.md §3, §10.6).

- :mod:`.losses`: the losses, each a parameterless Module: Seed000Loss, Importance, ShazeerLoad,
  VMoELoad, SwitchLoss, ZLoss, SequenceBalance (DeepSeek's per-sequence loss);
- :mod:`.conventions`: the f·P loss in each framework's scaling (FrameworkBalance) and the z-loss on
  probabilities (ProbsZLoss, a documented bug);
- :mod:`.aggregate`: token masks (select_samples, expand_grad) and several layers (MultiLayer);
- :mod:`.names`: the losses by name, MoE's short form ``balance={"importance": 0.01}`` (from_names).
"""
from .aggregate import MultiLayer, expand_grad, select_samples
from .conventions import FrameworkBalance, ProbsZLoss
from .losses import (BalanceLoss, Importance, Seed000Loss, SequenceBalance, ShazeerLoad, SwitchLoss, VMoELoad,
                     ZLoss)
from .names import NAMES, from_names

__all__ = ["BalanceLoss", "FrameworkBalance", "ProbsZLoss", "Importance", "MultiLayer", "NAMES", "Seed000Loss",
           "SequenceBalance", "ShazeerLoad", "SwitchLoss", "VMoELoad", "ZLoss", "expand_grad", "from_names",
           "select_samples"]
