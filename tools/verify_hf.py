"""Compare numpy_moe's presets with HuggingFace transformers' own MoE blocks, in float64.

Needs torch and transformers, which are never numpy_moe dependencies; run it from a separate environment:

    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch transformers numpy scipy
    /tmp/torchenv/bin/python tools/verify_hf.py

For each block (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, DeepSeek-V3, gpt-oss, Switch) it builds a tiny random
configuration, converts the block to float64, draws every weight at random, imports them with
``numpy_moe.presets.from_state_dict`` and compares: the output, the auxiliary loss (HF's own loss
function on the block's router logits), and the gradients of sum(y * R) + aux (R a fixed random
projection) with respect to the input and every weight. It prints the maximum relative error of each
(max |a - b| / max |b|) and exits 1 when any exceeds its tolerance. Tests never import this file.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from numpy_moe import presets  # noqa: E402
from numpy_moe.balance import FrameworkBalance, MultiLayer  # noqa: E402

torch.manual_seed(0)
N_BATCH, N_SEQ, D = 2, 8, 8
F64 = 1e-12  # float64 throughout
F32 = 1e-5   # where transformers computes the router (or the loss) in float32 on purpose


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def hf_blocks():
    from transformers import (DeepseekV3Config, MixtralConfig, OlmoeConfig, Qwen2MoeConfig, Qwen3MoeConfig,
                              SwitchTransformersConfig)
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
    from transformers.models.mixtral import modeling_mixtral as mix
    from transformers.models.olmoe import modeling_olmoe as olm
    from transformers.models.qwen2_moe import modeling_qwen2_moe as q2
    from transformers.models.qwen3_moe import modeling_qwen3_moe as q3
    from transformers.models.switch_transformers import modeling_switch_transformers as sw
    # (name, preset, HF config kwargs, block class, aux function of the router logits or None, coef key)
    yield ("Mixtral", "mixtral", MixtralConfig, dict(hidden_size=D, intermediate_size=12, num_local_experts=4,
           num_experts_per_tok=2, router_aux_loss_coef=0.02), mix.MixtralSparseMoeBlock,
           lambda lg, cfg: mix.load_balancing_loss_func((lg,), cfg.num_local_experts, cfg.num_experts_per_tok),
           "router_aux_loss_coef")
    yield ("Qwen2-MoE", "qwen2_moe", Qwen2MoeConfig, dict(hidden_size=D, moe_intermediate_size=6,
           shared_expert_intermediate_size=10, num_experts=6, num_experts_per_tok=2, norm_topk_prob=False,
           router_aux_loss_coef=0.001), q2.Qwen2MoeSparseMoeBlock,
           lambda lg, cfg: q2.load_balancing_loss_func((lg,), cfg.num_experts, cfg.num_experts_per_tok),
           "router_aux_loss_coef")
    yield ("Qwen3-MoE", "qwen3_moe", Qwen3MoeConfig, dict(hidden_size=D, moe_intermediate_size=6, num_experts=6,
           num_experts_per_tok=3, norm_topk_prob=True, router_aux_loss_coef=0.001), q3.Qwen3MoeSparseMoeBlock,
           lambda lg, cfg: q3.load_balancing_loss_func((lg,), cfg.num_experts, cfg.num_experts_per_tok),
           "router_aux_loss_coef")
    yield ("OLMoE", "olmoe", OlmoeConfig, dict(hidden_size=D, intermediate_size=6, num_experts=8,
           num_experts_per_tok=2, norm_topk_prob=False, router_aux_loss_coef=0.01), olm.OlmoeSparseMoeBlock,
           lambda lg, cfg: olm.load_balancing_loss_func((lg,), cfg.num_experts, cfg.num_experts_per_tok),
           "router_aux_loss_coef")
    yield ("DeepSeek-V3", "deepseek_v3", DeepseekV3Config, dict(hidden_size=D, moe_intermediate_size=6,
           n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, n_shared_experts=1,
           routed_scaling_factor=2.5, norm_topk_prob=True), DeepseekV3MoE, None, None)
    from transformers import GptOssConfig
    from transformers.models.gpt_oss import modeling_gpt_oss as oss
    # swiglu_limit 2 (gpt-oss: 7) so that both clamps act on these small random weights
    yield ("gpt-oss", "gpt_oss", GptOssConfig, dict(hidden_size=D, intermediate_size=6, num_local_experts=6,
           num_experts_per_tok=2, swiglu_limit=2.0, router_aux_loss_coef=0.001, num_attention_heads=2,
           num_key_value_heads=1, head_dim=4), oss.GptOssMLP,
           lambda lg, cfg: oss.load_balancing_loss_func((lg,), cfg.num_local_experts, cfg.num_experts_per_tok),
           "router_aux_loss_coef")
    yield ("Switch", "switch", SwitchTransformersConfig, dict(d_model=D, d_ff=6, num_experts=4, expert_capacity=3,
           router_aux_loss_coef=0.001, router_z_loss_coef=0.001),
           sw.SwitchTransformersSparseMLP, None, None)


def numpy_config(preset, cfg_kwargs, n_tokens):
    cfg = dict(cfg_kwargs)
    if preset == "switch":  # HF's integer expert_capacity C per sequence = numpy_moe's ceil(N cf / E), cf = C E / N
        cfg["capacity_factor"] = cfg.pop("expert_capacity") * cfg["num_experts"] / n_tokens
    return cfg


def run_one(name, preset, Config, kwargs, Block, aux_fn, coef_key, rng):
    cfg = Config(**kwargs)
    block = Block(cfg).double().eval()
    if preset == "switch":
        block.router.dtype = torch.float64  # its config only allows float32/16 (router_dtype); float64 here
    with torch.no_grad():
        for _, p in block.named_parameters():
            p.copy_(torch.from_numpy(rng.normal(0, 0.5, tuple(p.shape))))
        for bname, b in block.named_buffers():
            if "e_score_correction_bias" in bname:
                b.copy_(torch.from_numpy(rng.normal(0, 0.1, tuple(b.shape))))
    batch, seq = (1, 16) if preset == "switch" else (N_BATCH, N_SEQ)
    x = torch.from_numpy(rng.standard_normal((batch, seq, D))).requires_grad_(True)
    R = rng.standard_normal((batch * seq, D))
    logits = {}
    router = block.router if preset in ("switch", "gpt_oss") else block.gate
    router.register_forward_hook(lambda m, i, o: logits.__setitem__("l", o[2] if preset == "switch" else o[0]))
    y = block(x)
    if isinstance(y, tuple):  # GptOssMLP returns (hidden_states, router_scores)
        y = y[0]
    lg = logits["l"].reshape(batch * seq, -1)
    if preset == "switch":
        probs = torch.softmax(lg, -1)[None]
        aux = (kwargs["router_aux_loss_coef"] * sw_lb(probs, lg.argmax(-1)[None])
               + kwargs["router_z_loss_coef"] * sw_z(lg[None]))
    elif aux_fn is not None:
        aux = kwargs[coef_key] * aux_fn(lg, cfg)
    else:
        aux = torch.zeros((), dtype=torch.float64)
    total = (y.reshape(-1, D) * torch.from_numpy(R)).sum() + aux
    total.backward()

    sd = {k: v.detach().numpy() for k, v in block.state_dict().items()}
    moe = presets.from_state_dict(preset, sd, numpy_config(preset, kwargs, batch * seq))
    moe.eval()
    xn = x.detach().numpy().reshape(-1, D)
    yn = moe.forward(xn, seq_lengths=[seq] * batch)
    dx = moe.backward(R)
    grads = {k: g for k, g in moe.named_grads()}
    for k, p in moe.named_parameters():
        p[...] = grads[k]  # export the gradients through the same name map
    gsd = presets.to_state_dict(preset, moe, layout="fused" if "experts.gate_up_proj" in sd else "per_expert")
    row = {"output": rel(yn, y.detach().numpy().reshape(-1, D)),
           "aux": rel(moe.aux_loss, float(aux.detach())) if moe.losses and float(aux.detach()) else float("nan"),
           "dx": rel(dx, x.grad.numpy().reshape(-1, D))}
    row["dweights"] = max(rel(gsd[k], p.grad.numpy()) for k, p in block.named_parameters())
    row["dropped"] = moe.diagnostics["dropped"]
    return row


class Float64Routers:
    """Within the block, make transformers' float32 casts of the router no-ops on float64 tensors
    (``.float()``, ``.type(torch.float32)``, ``softmax(..., dtype=torch.float)``), to show that they
    alone cause the ~1e-7 differences. The loss function's float32 accumulators are left as they are."""

    def __enter__(self):
        self.saved = torch.Tensor.float, torch.Tensor.type, torch.nn.functional.softmax
        f, t, sm = self.saved
        torch.Tensor.float = lambda x, *a, **k: x if x.dtype == torch.float64 else f(x, *a, **k)
        torch.Tensor.type = lambda x, *a, **k: x if x.dtype == torch.float64 and a and a[0] == torch.float32 \
            else t(x, *a, **k)
        torch.nn.functional.softmax = lambda x, *a, dtype=None, **k: sm(
            x, *a, dtype=None if x.dtype == torch.float64 else dtype, **k)
        return self

    def __exit__(self, *exc):
        torch.Tensor.float, torch.Tensor.type, torch.nn.functional.softmax = self.saved


def sw_lb(probs, idx):
    from transformers.models.switch_transformers.modeling_switch_transformers import load_balancing_loss_func
    return load_balancing_loss_func(probs, idx)


def sw_z(lg):
    from transformers.models.switch_transformers.modeling_switch_transformers import router_z_loss_func
    return router_z_loss_func(lg)


def masked_and_multilayer(rng):
    """HF's loss with an attention mask and over two layers concatenated, against FrameworkBalance('hf')."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func
    from numpy_moe.gates import ScoreGate
    from numpy_moe.moe import MoE
    N, E, K = 16, 4, 2
    rows = {}
    l1, l2 = rng.standard_normal((N, E)), rng.standard_normal((N, E))
    mask = rng.random(N) > 0.3
    hf_mask = load_balancing_loss_func((torch.from_numpy(l1),), E, K, torch.from_numpy(mask[None].astype(float)))
    hf_two = load_balancing_loss_func((torch.from_numpy(l1), torch.from_numpy(l2)), E, K)
    routings = []
    for lgt in (l1, l2):  # a gate whose logits are exactly lgt: x = I, W = lgt
        moe = MoE(gate=ScoreGate(N, E, top_k=K, score="softmax", normalize=True), out_features=2,
                  balance=[FrameworkBalance(1.0, "hf")])
        moe.gate.params["W"][...] = lgt
        moe.forward(np.eye(N), mask=mask if lgt is l1 else None)
        if lgt is l1:
            rows["aux with attention mask"] = rel(moe.aux_loss, float(hf_mask))
            moe.forward(np.eye(N))
        routings.append(moe.routing)
    rows["aux, 2 layers concatenated"] = rel(MultiLayer(FrameworkBalance(1.0, "hf"), "concat")(routings),
                                             float(hf_two))
    return rows


def main():
    import transformers
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, float64\n")
    print(f"| {'block':<12} | {'output':>8} | {'aux loss':>8} | {'dL/dx':>8} | {'dL/dW':>8} | "
          f"{'float64 routers: output, dL/dx, dL/dW':>38} | dropped |")
    print("|" + "|".join("-" * w for w in (14, 10, 10, 10, 10, 40, 9)) + "|")
    worst = 0.0
    for name, preset, Config, kwargs, Block, aux_fn, coef in hf_blocks():
        seed = int(rng.integers(2 ** 31))
        row = run_one(name, preset, Config, kwargs, Block, aux_fn, coef, np.random.default_rng(seed))
        with Float64Routers():
            r64 = run_one(name, preset, Config, kwargs, Block, aux_fn, coef, np.random.default_rng(seed))
        tol = F64 if preset == "switch" else F32
        worst = max(worst, max(v for k, v in row.items() if k != "dropped" and v == v) / tol,
                    max(r64[k] for k in ("output", "dx")) / F64)
        f64 = f"{r64['output']:8.1e}, {r64['dx']:8.1e}, {r64['dweights']:8.1e}"
        print(f"| {name:<12} | {row['output']:8.1e} | {row['aux']:8.1e} | {row['dx']:8.1e} | {row['dweights']:8.1e} | "
              f"{f64:>38} | {row['dropped']:7d} |")
    for what, err in masked_and_multilayer(rng).items():
        worst = max(worst, err / F32)
        print(f"| {what}: {err:.1e}")
    print("\nworst error / tolerance:", f"{worst:.2g}")
    return 0 if worst <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
