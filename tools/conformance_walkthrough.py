# %% [markdown]
# # Testing your own MoE block against a numpy_moe conformance fixture
#
# You maintain a PyTorch MoE block and want to know that it computes what the framework it copies
# computes, aux losses and gradients included. numpy_moe writes fixtures (inputs, weights in the
# framework's own names, outputs, losses, routing, gradients); you run your block on them, save what
# it computed under the same names, and let numpy_moe compare. This walk-through does it for the
# transformers blocks themselves ("your block" = transformers' class); swap in your own.
#
#     python -m numpy_moe.conformance export fixtures      # no torch needed
#     python tools/conformance_walkthrough.py fixtures      # needs torch and transformers
#
# Tests never import this file (the test suite runs without torch).

# %%
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numpy_moe import conformance  # noqa: E402

fixtures = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()
if not os.path.exists(os.path.join(fixtures, "manifest.json")):
    conformance.export(fixtures)
manifest, data = conformance.load(fixtures)

# %% [markdown]
# ## 1. Your block, with the fixture's weights
#
# The fixture's `weights/<name>` entries are the block's own `state_dict` names, so `load_state_dict`
# takes them as they are. Everything in float64.


# %%
def hf_block(preset, cfg):
    from transformers import (DeepseekV3Config, MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig,
                              SwitchTransformersConfig)
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
    from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP
    cfg = {k: v for k, v in cfg.items() if k not in ("aux_loss_alpha", "router_z_loss_coef", "capacity_factor")}
    if preset == "switch":  # numpy_moe's capacity_factor 0.75 over 16 tokens and 4 experts = 3 per expert
        cfg["expert_capacity"] = 3
    Config, Block = {"mixtral": (MixtralConfig, MixtralSparseMoeBlock),
                     "qwen2_moe": (Qwen2MoeConfig, Qwen2MoeSparseMoeBlock),
                     "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeSparseMoeBlock), "olmoe": (OlmoeConfig, OlmoeSparseMoeBlock),
                     "deepseek_v3": (DeepseekV3Config, DeepseekV3MoE),
                     "switch": (SwitchTransformersConfig, SwitchTransformersSparseMLP)}[preset]
    block = Block(Config(**cfg)).double().eval()
    if preset == "switch":
        block.router.dtype = torch.float64
    return block


# %% [markdown]
# ## 2. Run it and save what it computed under the fixture's names
#
# The gradients are of sum(output * projection), the task part only; the aux loss is the framework's
# own function on the router logits, with the fixture's mask as the attention mask.

# %%
def run(preset, fx, entry):
    block = hf_block(preset, entry["config"])
    block.load_state_dict({k[len("weights/"):]: torch.from_numpy(v) for k, v in fx.items() if k.startswith("weights/")})
    seen = {}
    router = block.router if preset == "switch" else block.gate
    router.register_forward_hook(lambda m, i, o: seen.update(out=o))
    x = torch.from_numpy(fx["input"]).requires_grad_(True)
    y = block(x)
    (y * torch.from_numpy(fx["projection"])).sum().backward()
    res = {"output": y.detach().numpy(), "grad/input": x.grad.numpy()}
    res.update({"grad/" + k: p.grad.numpy() for k, p in block.named_parameters()})
    mask = torch.from_numpy(fx["mask"].astype(np.float64))
    if preset == "switch":
        logits = seen["out"][2].reshape(-1, entry["config"]["num_experts"]).detach()
        from transformers.models.switch_transformers.modeling_switch_transformers import (load_balancing_loss_func,
                                                                                         router_z_loss_func)
        keep = fx["mask"].reshape(-1)
        lg = logits[torch.from_numpy(keep)][None]
        res["aux/switch"] = 0.001 * load_balancing_loss_func(torch.softmax(lg, -1), lg.argmax(-1)).numpy()
        res["aux/z_loss"] = 0.001 * router_z_loss_func(lg).numpy()
        res["routing/experts"] = logits.argmax(-1, keepdim=True).numpy()
    else:
        logits, weights, experts = (t.detach() for t in seen["out"])
        res.update({"routing/experts": experts.numpy(), "routing/weights": weights.numpy()})
        if preset != "deepseek_v3":  # transformers has no DeepSeek-V3 balance loss
            import importlib
            lb = importlib.import_module(f"transformers.models.{preset}.modeling_{preset}").load_balancing_loss_func
            E, K = logits.shape[1], experts.shape[1]
            loss = next(loss for loss in entry["losses"] if loss["class"] == "FrameworkBalance")
            res["aux/" + loss["name"]] = loss["weight"] * lb((logits,), E, K, mask).numpy()
    res["router_logits"] = logits.numpy()
    return res


# %% [markdown]
# ## 3. Compare
#
# `numpy_moe.conformance.check` (or `python -m numpy_moe.conformance check FIXTURES RESULTS`) prints one
# row per array and exits 1 on a failure.

# %%
results = tempfile.mkdtemp()
for preset in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "switch"):
    np.savez(os.path.join(results, f"{preset}.npz"), **run(preset, data[preset], manifest["presets"][preset]))
ok = conformance.check(fixtures, results)
print("all within tolerance" if ok else "some arrays differ: see the FAIL rows")
sys.exit(0 if ok else 1)
