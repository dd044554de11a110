"""Balance losses by name, the short form of ``MoE(balance={"importance": 0.01, ...})``."""
from .losses import BalanceLoss, Importance, Seed000Loss, ShazeerLoad, SwitchLoss, VMoELoad, ZLoss

NAMES = ("importance", "load", "switch", "z_loss", "seed000")


def from_names(balance, convention, noise):
    """A list of BalanceLoss objects from None, a dict name -> weight, or a list of loss objects."""
    if balance is None:
        return []
    if isinstance(balance, dict):
        losses = []
        for name, w in balance.items():
            if name == "importance":
                losses.append(Importance(w, "gates" if convention == "topk_then_softmax" else "softmax"))
            elif name == "load":
                if noise is None:
                    raise ValueError("balance 'load' needs a noisy gate: pass noise='shazeer' or 'vmoe'")
                losses.append(ShazeerLoad(w) if noise == "shazeer" else VMoELoad(w))
            elif name in ("switch", "z_loss", "seed000"):
                losses.append({"switch": SwitchLoss, "z_loss": ZLoss, "seed000": Seed000Loss}[name](w))
            else:
                raise ValueError(f"balance has unknown loss {name!r}; expected names from {NAMES}")
        return losses
    if isinstance(balance, (str, bytes)) or not hasattr(balance, "__iter__"):  # "switch" read as 's', 'w', ...
        raise TypeError(f"balance={balance!r} must be None, a dict name -> weight (names from {NAMES}) or a list "
                        "of numpy_moe.balance loss objects")
    losses = list(balance)
    for loss in losses:
        if not isinstance(loss, BalanceLoss):
            raise TypeError(f"balance contains {loss!r}; expected numpy_moe.balance loss objects")
    return losses
