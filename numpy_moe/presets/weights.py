"""Framework parameter names and layouts <-> numpy_moe parameters, from dicts of NumPy arrays (no torch).

numpy_moe stores x W (W is (D, E), expert weights (E, D, H)); PyTorch's ``nn.Linear`` stores the transpose,
(out, in). A framework block's parameters are found under these names (the block's own ``state_dict``
keys; pass ``prefix`` for a whole model's, e.g. "model.layers.0.mlp."):

- mixtral, transformers >= 5: ``gate.weight`` (E, D); ``experts.gate_up_proj`` (E, 2H, D), gate rows
  first, and ``experts.down_proj`` (E, D, H);
- mixtral checkpoints (transformers < 5): ``experts.{e}.w1`` / ``w3`` / ``w2`` ``.weight``, (H, D), (H, D),
  (D, H);
- qwen2_moe, qwen3_moe, olmoe, deepseek_v2, deepseek_v3: ``gate.weight``; experts fused as Mixtral's or
  ``experts.{e}.gate_proj`` / ``up_proj`` / ``down_proj`` ``.weight``; deepseek_v3 also
  ``gate.e_score_correction_bias`` (E,), the gate's ``bias`` buffer;
- shared experts: ``shared_expert.*_proj.weight`` and ``shared_expert_gate.weight`` (1, D) (Qwen2-MoE),
  ``shared_experts.*_proj.weight`` (DeepSeek);
- switch: ``router.classifier.weight``; ``experts.expert_{e}.wi.weight`` (H, D), ``wo.weight`` (D, H);
- gshard, deepspeed_*: ``gate.wg.weight``; ``experts.{e}.fc1.weight`` / ``.bias``, ``fc2.weight`` / ``.bias``;
- megablocks: ``router.layer.weight``; ``experts.mlp.w1`` (E H, D), [``v1`` (E H, D) for glu], ``w2``
  (E H, D), not transposed;
- gpt_oss (transformers ``GptOssMLP``): ``router.weight`` (E, D), ``router.bias`` (E,);
  ``experts.gate_up_proj`` (E, D, 2H), NOT transposed (x @ gate_up_proj[e]), gate in the even columns and
  up in the odd ones, ``experts.gate_up_proj_bias`` (E, 2H) interleaved the same way;
  ``experts.down_proj`` (E, H, D), ``experts.down_proj_bias`` (E, D). One layout (``layout`` is ignored);
  openai's own checkpoints (``mlp1_weight``, ...) are not mapped.

Sources: transformers models/*/modeling_*.py (``*Experts``, ``*TopKRouter``; ``GptOssExperts``), fairseq
modules/moe/top2gate.py (``Top2Gate.wg``), megablocks layers/mlp.py (``MLP``, ``GLU``).
"""
import numpy as np  # the edge: framework arrays arrive and leave as NumPy

from ..backend import get_array_module, to_numpy


def _rules(preset, moe, layout):
    """[(framework key(s), numpy_moe path, to_numpy_moe(list of arrays) -> array, to_framework(array) -> list)]."""
    E = moe.n_experts
    ex = moe.experts
    H = ex.hidden
    per_e = lambda fmt: [fmt.format(e=e) for e in range(E)]  # noqa: E731

    def stack_T(arrays):  # E arrays (out, in) -> (E, in, out)
        return _stack([a.T for a in arrays])

    def unstack_T(W):  # (E, in, out) -> E arrays (out, in)
        return [W[e].T for e in range(W.shape[0])]

    def glu(prefix, names, bank, experts_key):
        g, u, d = names
        if layout == "fused":
            return [([prefix + "gate_up_proj"], bank + "W_gate", lambda a: a[0][:, :H].transpose(0, 2, 1),
                     None),
                    ([prefix + "gate_up_proj"], bank + "W_up", lambda a: a[0][:, H:].transpose(0, 2, 1), None),
                    ([prefix + "down_proj"], bank + "W_down", lambda a: a[0].transpose(0, 2, 1),
                     lambda W: [W.transpose(0, 2, 1)])]
        return [(per_e(prefix + experts_key + g + ".weight"), bank + "W_gate", stack_T, unstack_T),
                (per_e(prefix + experts_key + u + ".weight"), bank + "W_up", stack_T, unstack_T),
                (per_e(prefix + experts_key + d + ".weight"), bank + "W_down", stack_T, unstack_T)]

    def shared_glu(prefix, names):
        return [([prefix + n + ".weight"], "shared.mlp.W_" + role, lambda a: a[0].T[None], lambda W: [W[0].T])
                for n, role in zip(names, ("gate", "up", "down"))]

    if preset == "gpt_oss":
        return [(["router.weight"], "gate.W", lambda a: a[0].T, lambda W: [W.T]),
                (["router.bias"], "gate.b", lambda a: a[0], lambda b: [b]),
                (["experts.gate_up_proj"], "experts.W_gate", lambda a: a[0][:, :, 0::2], None),
                (["experts.gate_up_proj"], "experts.W_up", lambda a: a[0][:, :, 1::2], None),
                (["experts.gate_up_proj_bias"], "experts.b_gate", lambda a: a[0][:, 0::2], None),
                (["experts.gate_up_proj_bias"], "experts.b_up", lambda a: a[0][:, 1::2], None),
                (["experts.down_proj"], "experts.W_down", lambda a: a[0], lambda W: [W]),
                (["experts.down_proj_bias"], "experts.b_down", lambda a: a[0], lambda b: [b])]
    router = {"switch": "router.classifier.weight", "gshard": "gate.wg.weight", "deepspeed_top1": "gate.wg.weight",
              "deepspeed_top2": "gate.wg.weight", "deepspeed_topk": "gate.wg.weight",
              "megablocks": "router.layer.weight"}.get(preset, "gate.weight")
    rules = [([router], "gate.W", lambda a: a[0].T, lambda W: [W.T])]
    proj = ("gate_proj", "up_proj", "down_proj")
    if preset == "mixtral":
        rules += glu("experts.", ("w1", "w3", "w2"), "experts.", "{e}.")
    elif preset in ("qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3"):
        rules += glu("experts.", proj, "experts.", "{e}.")
    if preset == "qwen2_moe":
        rules += shared_glu("shared_expert.", proj)
        rules.append((["shared_expert_gate.weight"], "shared.w", lambda a: a[0].T, lambda W: [W.T]))
    if preset.startswith("deepseek") and moe.shared is not None:
        rules += shared_glu("shared_experts.", proj)
    if preset == "deepseek_v3":
        rules.append((["gate.e_score_correction_bias"], "gate.bias", lambda a: a[0], lambda b: [b]))
    if preset == "switch":
        rules += [(per_e("experts.expert_{e}.wi.weight"), "experts.W1", stack_T, unstack_T),
                  (per_e("experts.expert_{e}.wo.weight"), "experts.W2", stack_T, unstack_T)]
    if preset in ("gshard", "deepspeed_top1", "deepspeed_top2", "deepspeed_topk"):
        rules += [(per_e("experts.{e}.fc1.weight"), "experts.W1", stack_T, unstack_T),
                  (per_e("experts.{e}.fc1.bias"), "experts.b1", _stack, list),
                  (per_e("experts.{e}.fc2.weight"), "experts.W2", stack_T, unstack_T),
                  (per_e("experts.{e}.fc2.bias"), "experts.b2", _stack, list)]
    if preset == "megablocks":
        D = moe.in_features
        blocks = lambda a: a[0].reshape(E, H, D)  # noqa: E731, (E H, D) -> (E, H, D)
        flat = lambda W: [W.reshape(E * H, D)]  # noqa: E731
        if ex.glu:
            rules += [(["experts.mlp.w1"], "experts.W_gate", lambda a: blocks(a).transpose(0, 2, 1),
                       lambda W: flat(W.transpose(0, 2, 1))),
                      (["experts.mlp.v1"], "experts.W_up", lambda a: blocks(a).transpose(0, 2, 1),
                       lambda W: flat(W.transpose(0, 2, 1))),
                      (["experts.mlp.w2"], "experts.W_down", blocks, flat)]
        else:
            rules += [(["experts.mlp.w1"], "experts.W1", lambda a: blocks(a).transpose(0, 2, 1),
                       lambda W: flat(W.transpose(0, 2, 1))),
                      (["experts.mlp.w2"], "experts.W2", blocks, flat)]
    return rules


def _stack(arrays):
    return np.stack([np.asarray(a) for a in arrays])


def detect_layout(preset, state_dict, prefix=""):
    """'fused' when the state dict holds transformers >= 5 fused experts, else 'per_expert'."""
    return "fused" if prefix + "experts.gate_up_proj" in state_dict else "per_expert"


def fused_gate_up(moe):
    """(E, 2H, D) [W_gate; W_up] in transformers' fused layout, from a numpy_moe ExpertBank."""
    p = moe.experts.params
    both = np.concatenate([to_numpy(p["W_gate"]), to_numpy(p["W_up"])], axis=2)  # (E, D, 2H)
    return np.ascontiguousarray(both.transpose(0, 2, 1))  # safetensors writes the buffer: C order


def interleaved(gate, up):
    """gpt-oss's fused layout: gate in the even and up in the odd entries of the last axis."""
    both = np.empty(gate.shape[:-1] + (2 * gate.shape[-1],), dtype=gate.dtype)
    both[..., 0::2], both[..., 1::2] = gate, up
    return both


def import_weights(preset, moe, state_dict, prefix=""):
    """Copy a framework state dict (name -> NumPy array) into ``moe``; names, shapes and finiteness are checked."""
    layout = detect_layout(preset, state_dict, prefix)
    targets = dict(moe.named_parameters())
    targets.update(moe.named_buffers())
    used = set()
    for keys, path, to_ours, _ in _rules(preset, moe, layout):
        missing = [prefix + k for k in keys if prefix + k not in state_dict]
        if missing:
            raise ValueError(f"state_dict lacks {missing[:3]} for the {preset!r} preset (it has "
                             f"{sorted(state_dict)[:6]}...)")
        arrays = [to_numpy(state_dict[prefix + k]) for k in keys]
        for k, a in zip(keys, arrays):  # as numpy_moe.io refuses a diverged model: no NaN weights in silence
            if a.dtype.kind not in "biuf" or not np.isfinite(a).all():
                what = f"dtype {a.dtype}" if a.dtype.kind not in "biuf" else \
                    f"{int((~np.isfinite(a)).sum())} NaN or inf values"
                raise ValueError(f"state_dict[{prefix + k!r}] has {what}; expected finite numbers")
        value = to_ours(arrays)
        if path not in targets:
            raise ValueError(f"the {preset!r} block has no parameter {path!r}; check the config")
        target = targets[path]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"state_dict[{prefix + keys[0]!r}] gives {path} the shape {tuple(value.shape)}; "
                             f"the config makes it {tuple(target.shape)}")
        if value.dtype != target.dtype:  # a float64 state dict into a float32 block: refuse what the cast overflows
            with np.errstate(over="ignore"):
                cast = value.astype(target.dtype)
            if not np.isfinite(cast).all():
                raise ValueError(f"state_dict[{prefix + keys[0]!r}] has values up to {float(np.abs(value).max()):.3g} "
                                 f"that overflow the block's dtype {np.dtype(target.dtype).name} (inf weights); "
                                 "build the block with dtype='float64'")
            value = cast
        target[...] = get_array_module(target).asarray(value)  # onto the GPU for a block built under CuPy
        used.update(prefix + k for k in keys)
    unused = sorted(k for k in state_dict if k.startswith(prefix) and k not in used)
    if unused:
        raise ValueError(f"state_dict has entries the {preset!r} preset does not use: {unused[:5]}")
    return moe


def export_weights(preset, moe, layout="per_expert", prefix=""):
    """The framework's state dict (name -> NumPy array) of ``moe``'s weights, in ``layout``."""
    if not callable(getattr(moe, "named_parameters", None)) or not hasattr(moe, "experts"):
        raise TypeError(f"moe={moe!r:.80} must be a numpy_moe MoE built by presets.build({preset!r}, ...)")
    values = {k: to_numpy(v) for k, v in moe.named_parameters()}
    values.update({k: to_numpy(v) for k, v in moe.named_buffers()})
    rules = _rules(preset, moe, layout)
    # another preset's block raised a KeyError below, or lost the parameters the rules do not name without a
    # word (a buffer, the selection bias, may be the layer's own and is not exported)
    named = {path for _, path, _, _ in rules}
    missing, unnamed = sorted(named - values.keys()), sorted({k for k, _ in moe.named_parameters()} - named)
    if missing or unnamed:
        raise ValueError(f"moe is not a {preset!r} block (presets.build({preset!r}, ...)): it lacks {missing}, "
                         f"and the preset has no name for its {unnamed}")
    out = {}
    for keys, path, _, to_theirs in rules:
        if to_theirs is None:  # the fused gate_up_proj (and gpt-oss's bias), written once from both halves
            if preset == "gpt_oss":
                kind = "experts.b_" if keys[0].endswith("_bias") else "experts.W_"
                out[prefix + keys[0]] = interleaved(values[kind + "gate"], values[kind + "up"])
            else:
                out[prefix + keys[0]] = fused_gate_up(moe)
            continue
        for k, a in zip(keys, to_theirs(values[path])):
            out[prefix + k] = a.copy()
    return out
