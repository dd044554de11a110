"""Load-balancing (auxiliary) losses and how frameworks apply them (MATH.md §3, §10.6).

- :mod:`.losses`: the losses, each a parameterless Module: Seed000Loss, Importance, ShazeerLoad,
  VMoELoad, SwitchLoss, ZLoss, SequenceBalance (DeepSeek's per-sequence loss);
- :mod:`.aggregate`: token masks (select_samples, expand_grad) and several layers (MultiLayer).
"""
from .aggregate import MultiLayer, expand_grad, select_samples
from .losses import (BalanceLoss, Importance, Seed000Loss, SequenceBalance, ShazeerLoad, SwitchLoss, VMoELoad,
                     ZLoss)

__all__ = ["BalanceLoss", "Importance", "MultiLayer", "Seed000Loss", "SequenceBalance", "ShazeerLoad",
           "SwitchLoss", "VMoELoad", "ZLoss", "expand_grad", "select_samples"]
