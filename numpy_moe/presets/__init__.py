"""Every framework's MoE block, named and pinned (docs/FRAMEWORKS.md).

``build(preset, config)`` makes the block of a framework from that framework's own configuration keys;
``from_state_dict(preset, state_dict, config)`` makes it and copies in the framework's weights (a dict of
NumPy arrays in the framework's names and layouts, or :func:`load_safetensors` of a checkpoint);
``to_state_dict(preset, moe)`` writes them back in the framework's names. No torch anywhere.

Presets (``PRESETS``): mixtral, qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3, switch, gshard
(fairseq top-2), deepspeed_top1, deepspeed_top2, deepspeed_topk, megablocks, vmoe, gpt_oss. Each builder's docstring
cites the reference file and function it follows (:mod:`.builders`); :mod:`.weights` has the name map.

Example (a tiny random Mixtral block, its weights round-tripped through transformers' names)::

    cfg = {"hidden_size": 8, "intermediate_size": 16, "num_local_experts": 4, "num_experts_per_tok": 2}
    moe = build("mixtral", cfg, seed=0)
    sd = to_state_dict("mixtral", moe, layout="fused")   # gate.weight, experts.gate_up_proj, ...
    same = from_state_dict("mixtral", sd, cfg)            # the same function
"""
from ..backend import default_rng
from .builders import BUGS, BUILDERS
from .weights import export_weights, import_weights

PRESETS = tuple(BUILDERS)
LAYOUTS = ("per_expert", "fused")


def _check_preset(preset):
    if not isinstance(preset, str) or preset not in BUILDERS:  # a list: 'unhashable type'
        raise ValueError(f"preset={preset!r} must be one of {PRESETS}")


def build(preset, config, seed=None, dtype="float64", bugs=()):
    """The ``preset`` block (a :class:`numpy_moe.moe.MoE`) from the framework's configuration dict.

    ``bugs``: names from ``BUGS[preset]`` to reproduce a reference implementation's known bug (the
    builders' docstrings and docs/FRAMEWORKS.md say which issue); empty (default) builds the intended block.
    """
    _check_preset(preset)
    if not isinstance(config, dict):
        raise TypeError(f"config={config!r} must be a dict of the framework's configuration keys")
    bugs = tuple(bugs)
    unknown = set(bugs) - set(BUGS.get(preset, ()))
    if unknown:
        raise ValueError(f"bugs={list(bugs)!r}: the {preset!r} preset reproduces only {BUGS.get(preset, ())}")
    extra = {"bugs": bugs} if preset in BUGS else {}
    return BUILDERS[preset](config, seed=default_rng(seed), dtype=dtype, **extra)


def from_state_dict(preset, state_dict, config, dtype="float64", prefix=""):
    """The ``preset`` block with the framework's weights: ``state_dict`` maps the framework's parameter names
    (after ``prefix``) to NumPy arrays, per-expert or fused (detected). Every name must be used, every
    shape must match the config and every value must be a finite number, or ValueError names the entry."""
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict must be a dict name -> array; got {type(state_dict).__name__}")
    moe = build(preset, config, seed=0, dtype=dtype)
    return import_weights(preset, moe, state_dict, prefix)


def to_state_dict(preset, moe, layout="per_expert", prefix=""):
    """``moe``'s weights in the framework's names: ``layout`` "per_expert" (checkpoints, transformers < 5)
    or "fused" (transformers >= 5 ``gate_up_proj`` / ``down_proj``; gated-linear presets only)."""
    _check_preset(preset)
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} must be one of {LAYOUTS}")
    if layout == "fused" and not getattr(moe.experts, "glu", False):
        raise ValueError(f"layout='fused' is for gated-linear experts; the {preset!r} block has "
                         f"{moe.experts.activation} experts")
    return export_weights(preset, moe, layout, prefix)


def load_safetensors(path):
    """A ``.safetensors`` file as a dict name -> NumPy array, through the ``safetensors`` package's NumPy
    API (``pip install 'numpy-moe[safetensors]'``)."""
    try:
        from safetensors.numpy import load_file
    except ImportError as err:
        raise ImportError("reading .safetensors needs the optional safetensors package: "
                          "pip install 'numpy-moe[safetensors]' (or pip install safetensors)") from err
    return load_file(str(path))


__all__ = ["BUGS", "LAYOUTS", "PRESETS", "build", "from_state_dict", "load_safetensors", "to_state_dict"]
