"""How the MoE layer is put together: the gate of its keyword forms, and the checks on composed parts.

:class:`numpy_moe.moe.MoE` builds its gate here from the short keyword arguments (``top_k``, ``gate``,
``noise``, ``router``), or takes a gate object after refusing the keywords that belong on the gate, and
checks that the gate, the expert bank and the shared expert agree on sizes and dtype. Running the layer
(routing, dispatch, combine and their backward) is :mod:`numpy_moe.moe`'s own concern.
"""
from .. import balance as B
from ..gates import (CONVENTIONS, NOISES, BaseGate, ExpertChoiceGate, HashGate, ScoreGate, SinkhornGate, SoftmaxGate,
                     TopKGate)
from ..validation import check_positive_int

ROUTERS = ("topk", "expert_choice")
GATES = (SoftmaxGate, TopKGate, ExpertChoiceGate, ScoreGate, BaseGate, SinkhornGate, HashGate)


def router_trains(gate, losses):
    """False when the gate's weights are constant (top-1 renormalised) and no loss gives the router a gradient."""
    constant = getattr(gate, "top_k", None) == 1 and (getattr(gate, "convention", None) == "topk_then_softmax"
                                    or isinstance(gate, ScoreGate) and gate.normalize)
    useful = [loss for loss in losses if loss.weight > 0 and not isinstance(loss, B.Seed000Loss)
              and not (isinstance(loss, B.Importance) and loss.source == "gates")]
    return not constant or bool(useful)


def keyword_gate(gate, top_k, noise, noise_std, router, capacity_factor, balance, D, E, rng, dtype):
    """Build the gate of the short keyword forms; returns (the gate, the balance convention)."""
    D = check_positive_int(D, "in_features")
    E = check_positive_int(E, "n_experts")
    if router not in ROUTERS:
        raise ValueError(f"router={router!r} must be one of {ROUTERS}")
    if gate not in CONVENTIONS:
        raise ValueError(f"gate={gate!r} must be one of {CONVENTIONS}")
    if noise not in NOISES:
        raise ValueError(f"noise={noise!r} must be one of {NOISES}")
    dense = router == "topk" and top_k is None
    if dense and (noise is not None or capacity_factor is not None or balance):
        raise ValueError(f"noise={noise!r}, capacity_factor={capacity_factor!r} and balance={balance!r} "
                         "need a sparse gate: pass top_k=K or router='expert_choice'")
    if router == "expert_choice" and (top_k is not None or noise is not None or capacity_factor is None):
        raise ValueError(f"router='expert_choice' takes capacity_factor (got {capacity_factor!r}) and "
                         f"no top_k or noise (got top_k={top_k!r}, noise={noise!r})")
    if dense:
        made = SoftmaxGate(D, E, seed=rng, dtype=dtype)
    elif router == "expert_choice":
        made = ExpertChoiceGate(D, E, capacity_factor, seed=rng, dtype=dtype)
    else:
        made = TopKGate(D, E, top_k, gate, noise, noise_std, seed=rng, dtype=dtype)
    return made, (gate if router == "topk" else "expert_choice")


def check_gate_object(gate, top_k, noise, noise_std, router, capacity_factor):
    """Check a gate object; refuse the keywords that belong on it, saying where they go."""
    if not isinstance(gate, GATES):
        raise TypeError(f"gate={gate!r} must be one of {[g.__name__ for g in GATES]}")
    moved = {k: v for k, v, default in [("top_k", top_k, None), ("noise", noise, None),
                                         ("noise_std", noise_std, 1.0), ("router", router, "topk")]
             if v != default}
    if moved:
        raise ValueError(f"{moved} configure the gate; with a gate object set them on it "
                         f"(for example TopKGate(D, E, top_k=2, noise='vmoe') or ScoreGate(D, E, top_k=2))")
    if isinstance(gate, SoftmaxGate) and capacity_factor is not None:
        raise ValueError(f"capacity_factor={capacity_factor!r} needs a sparse gate, not a SoftmaxGate")
    if isinstance(gate, ExpertChoiceGate) and capacity_factor is not None:
        raise ValueError(f"capacity_factor={capacity_factor!r}: an ExpertChoiceGate carries its own "
                         "capacity_factor; leave the layer's at None")


def check_parts(gate, experts, shared, residual, out_features, dtype):
    """Raise ValueError unless the gate, the experts and the shared expert agree with each other, with
    ``out_features`` (None: any) and ``dtype``, and ``residual`` has out_features = in_features."""
    D, E = gate.in_features, gate.n_experts
    for name, have, want in [("n_experts", experts.n_experts, E), ("in_features", experts.in_features, D),
                             ("out_features", experts.out_features, out_features or experts.out_features)]:
        if have != want:
            raise ValueError(f"experts has {name}={have}; expected {want} (from the gate or the arguments)")
    if shared is not None and (shared.in_features, shared.out_features) != (D, experts.out_features):
        raise ValueError(f"shared maps {shared.in_features} -> {shared.out_features} features; expected "
                         f"{D} -> {experts.out_features}")
    for name, part in [("gate", gate), ("experts", experts), ("shared", shared)]:
        if part is not None and part.dtype != dtype:
            raise ValueError(f"{name} has dtype {part.dtype} but the layer has dtype={dtype}: pass "
                             f"dtype='{part.dtype}' to MoE as well")
    if residual and experts.out_features != D:
        raise ValueError(f"residual=True adds x to the output, so out_features ({experts.out_features}) must "
                         f"equal in_features ({D})")
