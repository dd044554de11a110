"""Presets: each framework's block from its own config keys, weight import/export, gradients (issue 13).

The comparison with transformers' own blocks (torch, float64) is tools/verify_hf.py, run outside the test
suite; here every preset is checked against an independent NumPy transcription of its reference code,
by finite differences, and through the name maps. Measured time: about 6 s on the shared 2-core machine.
"""
import numpy as np
import pytest

from numpy_moe import presets as P
from numpy_moe.gradcheck import check_module

CONFIGS = {
    "mixtral": {"hidden_size": 6, "intermediate_size": 5, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"hidden_size": 6, "moe_intermediate_size": 4, "shared_expert_intermediate_size": 7,
                  "num_experts": 4, "num_experts_per_tok": 2},
    "qwen3_moe": {"hidden_size": 6, "moe_intermediate_size": 4, "num_experts": 5, "num_experts_per_tok": 3},
    "olmoe": {"hidden_size": 6, "intermediate_size": 4, "num_experts": 4, "num_experts_per_tok": 2,
              "router_z_loss_coef": 0.001},
    "deepseek_v2": {"hidden_size": 6, "moe_intermediate_size": 4, "n_routed_experts": 8, "num_experts_per_tok": 2,
                    "n_group": 4, "topk_group": 2, "topk_method": "group_limited_greedy", "n_shared_experts": 2,
                    "routed_scaling_factor": 1.5, "norm_topk_prob": False, "aux_loss_alpha": 0.001},
    "deepseek_v3": {"hidden_size": 6, "moe_intermediate_size": 4, "n_routed_experts": 8, "num_experts_per_tok": 2,
                    "n_group": 4, "topk_group": 2, "n_shared_experts": 1, "routed_scaling_factor": 2.5},
    "switch": {"d_model": 6, "d_ff": 4, "num_experts": 4, "capacity_factor": 1.0},
    "gshard": {"model_dim": 6, "hidden": 4, "num_experts": 4},
    "deepspeed_top1": {"model_dim": 6, "hidden": 4, "num_experts": 4},
    "deepspeed_top2": {"model_dim": 6, "hidden": 4, "num_experts": 4},
    "deepspeed_topk": {"model_dim": 6, "hidden": 4, "num_experts": 5, "k": 3},
    "megablocks": {"hidden_size": 6, "ffn_hidden_size": 4, "moe_num_experts": 4, "moe_top_k": 2, "mlp_type": "glu"},
    "vmoe": {"hidden_size": 6, "mlp_dim": 4, "num_experts": 4, "capacity_factor": 1.5},
    "gpt_oss": {"hidden_size": 6, "intermediate_size": 4, "num_local_experts": 5, "num_experts_per_tok": 2,
                "swiglu_limit": 1.5},
}


def test_every_preset_has_a_config_here_and_cites_its_reference_code():
    from numpy_moe.presets.builders import BUILDERS
    assert set(CONFIGS) == set(P.PRESETS)
    for name, builder in BUILDERS.items():
        assert ".py" in builder.__doc__, f"{name} must cite the reference file it follows"


@pytest.mark.parametrize("preset", [p for p in P.PRESETS if p != "vmoe"])
def test_weights_round_trip_through_the_framework_names(preset, rng):
    moe = P.build(preset, CONFIGS[preset], seed=1)
    if preset == "deepseek_v3":  # the only framework with a selection bias (e_score_correction_bias)
        moe.gate.buffers["bias"][...] = rng.normal(0, 0.1, moe.n_experts)
    moe.eval()
    x = rng.standard_normal((9, 6))
    y = moe.forward(x)
    for layout in ("per_expert", "fused") if moe.experts.glu else ("per_expert",):
        sd = P.to_state_dict(preset, moe, layout=layout, prefix="model.layers.0.mlp.")
        assert all(k.startswith("model.layers.0.mlp.") and isinstance(v, np.ndarray) for k, v in sd.items())
        back = P.from_state_dict(preset, sd, CONFIGS[preset], prefix="model.layers.0.mlp.")
        back.eval()
        np.testing.assert_array_equal(back.forward(x), y)


def silu(a):
    return a / (1 + np.exp(-a))


def test_mixtral_matches_a_transcription_of_transformers(rng):
    """modeling_mixtral.py MixtralTopKRouter / MixtralExperts, written out with the framework's own arrays."""
    cfg = CONFIGS["mixtral"]
    sd = P.to_state_dict("mixtral", P.build("mixtral", cfg, seed=3), layout="fused")
    W, gu, down = sd["gate.weight"], sd["experts.gate_up_proj"], sd["experts.down_proj"]  # (E,D) (E,2H,D) (E,D,H)
    x = rng.standard_normal((7, 6))
    logits = x @ W.T
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = np.argsort(-p, axis=1)[:, :2]
    want = np.zeros_like(x)
    for n in range(7):
        w = p[n, top[n]] / p[n, top[n]].sum()
        for k, e in enumerate(top[n]):
            g, u = np.split(gu[e] @ x[n], 2)
            want[n] += w[k] * (down[e] @ (silu(g) * u))
    moe = P.from_state_dict("mixtral", sd, cfg)
    moe.eval()
    np.testing.assert_allclose(moe.forward(x), want, rtol=1e-12, atol=1e-12)


def test_deepseek_v3_matches_a_transcription_of_transformers(rng):
    """modeling_deepseek_v3.py DeepseekV3TopkRouter: sigmoid, bias for the choice only, top-2-sum groups,
    renormalise (+1e-20), times routed_scaling_factor; shared expert added."""
    cfg = CONFIGS["deepseek_v3"]
    model = P.build("deepseek_v3", cfg, seed=4)
    model.gate.buffers["bias"][...] = rng.normal(0, 0.3, 8)
    sd = P.to_state_dict("deepseek_v3", model)
    x = rng.standard_normal((7, 6))
    s = 1 / (1 + np.exp(-(x @ sd["gate.weight"].T)))  # (N, E)
    c = s + sd["gate.e_score_correction_bias"]
    want = np.zeros_like(x)
    for n in range(7):
        groups = np.sort(c[n].reshape(4, 2), axis=1).sum(axis=1)
        keep = np.argsort(-groups)[:2]
        cn = np.where(np.isin(np.arange(8) // 2, keep), c[n], -np.inf)
        top = np.argsort(-cn)[:2]
        w = 2.5 * s[n, top] / (s[n, top].sum() + 1e-20)
        for k, e in enumerate(top):
            h = silu(sd[f"experts.{e}.gate_proj.weight"] @ x[n]) * (sd[f"experts.{e}.up_proj.weight"] @ x[n])
            want[n] += w[k] * (sd[f"experts.{e}.down_proj.weight"] @ h)
        h = silu(sd["shared_experts.gate_proj.weight"] @ x[n]) * (sd["shared_experts.up_proj.weight"] @ x[n])
        want[n] += sd["shared_experts.down_proj.weight"] @ h
    moe = P.from_state_dict("deepseek_v3", sd, cfg)
    moe.eval()
    np.testing.assert_allclose(moe.forward(x), want, rtol=1e-12, atol=1e-12)


def test_deepseek_v2_scales_only_what_it_does_not_renormalise():
    """modeling_deepseek.py MoEGate: renormalised weights (norm_topk_prob, K > 1) are not scaled."""
    cfg = dict(CONFIGS["deepseek_v2"], norm_topk_prob=True)
    assert P.build("deepseek_v2", cfg).gate.scale == 1.0 and P.build("deepseek_v2", cfg).gate.normalize
    gate = P.build("deepseek_v2", CONFIGS["deepseek_v2"]).gate
    assert gate.scale == 1.5 and not gate.normalize and gate.group_score == "max"


def test_missing_keys_take_the_documented_defaults_and_given_loss_weights_are_used():
    """docs/FRAMEWORKS.md "Missing keys": a key missing from the config takes the builder's default (some
    differ from transformers' config classes on purpose); a key that is given is used. The transcription
    tests set or fix these keys, so without this a default could change unseen."""
    renormalised = {"mixtral": True, "qwen2_moe": False, "qwen3_moe": True, "olmoe": False}  # norm_topk_prob
    aux = {"mixtral": 0.02, "qwen2_moe": 0.001, "qwen3_moe": 0.001, "olmoe": 0.01, "gpt_oss": 0.001}
    for preset, weight in aux.items():
        moe = P.build(preset, CONFIGS[preset])
        assert [type(loss).__name__ for loss in moe.losses][0] == "FrameworkBalance", preset
        assert moe.losses[0].weight == weight, preset
        assert P.build(preset, dict(CONFIGS[preset], router_aux_loss_coef=0.37)).losses[0].weight == 0.37, preset
        if preset in renormalised:
            assert moe.gate.normalize is renormalised[preset], preset
        if preset in renormalised and preset != "mixtral":  # Mixtral always renormalises: no such key
            flipped = P.build(preset, dict(CONFIGS[preset], norm_topk_prob=not renormalised[preset]))
            assert flipped.gate.normalize is not renormalised[preset], preset
    switch = P.build("switch", CONFIGS["switch"])  # SwitchTransformersConfig: 0.001 and 0.001
    assert [(type(loss).__name__, loss.weight) for loss in switch.losses] == [("SwitchLoss", 0.001), ("ZLoss", 0.001)]
    switch = P.build("switch", dict(CONFIGS["switch"], router_aux_loss_coef=0.2, router_z_loss_coef=0.3))
    assert [loss.weight for loss in switch.losses] == [0.2, 0.3]

@pytest.mark.parametrize("preset", P.PRESETS)
def test_every_preset_passes_the_gradient_check(preset, rng):
    """Every parameter and the input against central differences, aux losses included (tolerance 1e-6, a
    composed model; MATH.md §8); the routing must not change under the perturbation."""
    moe = P.build(preset, CONFIGS[preset], seed=2)
    moe.eval()
    x = rng.standard_normal((6, 6))
    moe.forward(x)
    chosen = moe.routing.expert.copy()
    errors = check_module(moe, x, tol=1e-6)
    moe.forward(x)
    assert np.array_equal(moe.routing.expert, chosen)
    assert max(errors.values()) < 1e-6


def test_bad_state_dicts_are_named(rng):
    cfg = CONFIGS["qwen3_moe"]
    sd = P.to_state_dict("qwen3_moe", P.build("qwen3_moe", cfg, seed=0))
    with pytest.raises(ValueError, match="lacks"):
        P.from_state_dict("qwen3_moe", {k: v for k, v in sd.items() if k != "gate.weight"}, cfg)
    with pytest.raises(ValueError, match="shape"):
        P.from_state_dict("qwen3_moe", dict(sd, **{"gate.weight": np.zeros((5, 7))}), cfg)
    with pytest.raises(ValueError, match="does not use"):
        P.from_state_dict("qwen3_moe", dict(sd, extra=np.zeros(3)), cfg)
    with pytest.raises(ValueError, match="preset="):
        P.build("mixtral2", cfg)
    with pytest.raises(ValueError, match="num_experts"):
        P.build("qwen3_moe", {"hidden_size": 6, "moe_intermediate_size": 4})
    with pytest.raises(ValueError, match="layout='fused'"):
        P.to_state_dict("switch", P.build("switch", CONFIGS["switch"]), layout="fused")


def test_safetensors_file_loads_through_the_numpy_api(tmp_path, rng):
    st = pytest.importorskip("safetensors.numpy", reason="the optional [safetensors] extra is not installed")
    cfg = CONFIGS["olmoe"]
    moe = P.build("olmoe", cfg, seed=0)
    st.save_file(P.to_state_dict("olmoe", moe, layout="fused"), str(tmp_path / "block.safetensors"))
    back = P.from_state_dict("olmoe", P.load_safetensors(tmp_path / "block.safetensors"), cfg)
    x = rng.standard_normal((5, 6))
    moe.eval(), back.eval()
    np.testing.assert_array_equal(back.forward(x), moe.forward(x))


def test_bug_options_reproduce_the_reported_behaviour(rng):
    """Switch "capacity_cumsum" (transformers #48293): nothing is ever dropped; "z_loss_on_probs" swaps in
    the probability z-loss; "double_softmax" (#45120) changes only the balance loss, not the output."""
    cfg = dict(CONFIGS["switch"], capacity_factor=0.5)
    x = rng.standard_normal((16, 6))
    right, bugged = P.build("switch", cfg, seed=0), P.build("switch", cfg, seed=0, bugs=["capacity_cumsum"])
    right.eval(), bugged.eval()
    right.forward(x), bugged.forward(x)
    assert right.diagnostics["dropped"] > 0 and bugged.diagnostics["dropped"] == 0
    assert type(P.build("switch", cfg, bugs=["z_loss_on_probs"]).losses[1]).__name__ == "ProbsZLoss"
    a, b = (P.build("mixtral", CONFIGS["mixtral"], seed=0, bugs=bugs) for bugs in ((), ("double_softmax",)))
    a.eval(), b.eval()
    np.testing.assert_array_equal(a.forward(x), b.forward(x))
    assert a.aux_loss != b.aux_loss and b.losses[0].double_softmax
    with pytest.raises(ValueError, match="reproduces only"):
        P.build("deepseek_v3", CONFIGS["deepseek_v3"], bugs=["double_softmax"])


@pytest.mark.parametrize("preset", ["deepseek_v3", "mixtral", "switch", "gpt_oss", "deepspeed_topk"])
def test_preset_blocks_save_and_load_through_io(preset, tmp_path, rng):
    from numpy_moe import io
    cfg = dict(CONFIGS[preset], capacity_factor=0.5, min_capacity=2, drop_policy="position") \
        if preset == "deepspeed_topk" else CONFIGS[preset]  # a Capacity with every field set
    moe = P.build(preset, cfg, seed=0, **({"bugs": ["double_softmax"]} if preset == "mixtral" else {}))
    if "bias" in moe.gate.buffers:
        moe.gate.buffers["bias"][...] = rng.normal(0, 0.1, moe.n_experts)
    loaded = io.load(io.save(moe, tmp_path / "block.npz"))
    x = rng.standard_normal((7, 6))
    moe.eval(), loaded.eval()
    np.testing.assert_array_equal(loaded.forward(x), moe.forward(x))
    assert loaded.aux_loss == moe.aux_loss


def test_gpt_oss_block_from_transformers_names_matches_the_published_forward(rng):
    """GptOssMLP written in NumPy from its own parameter names and layouts (transformers
    models/gpt_oss/modeling_gpt_oss.py: router Linear with bias, topk of the logits, softmax of the k values;
    gate_up_proj (E, D, 2H) used as x @ W with gate = even columns, up = odd; clamps; (up + 1) * glu) against
    the preset built by from_state_dict. The limit is small so that the clamps act."""
    cfg = {"hidden_size": 6, "intermediate_size": 4, "num_local_experts": 5, "num_experts_per_tok": 2,
           "swiglu_limit": 1.0}
    E, D, H, K, limit, alpha = 5, 6, 4, 2, 1.0, 1.702
    sd = {"router.weight": rng.standard_normal((E, D)), "router.bias": rng.standard_normal(E),
          "experts.gate_up_proj": rng.standard_normal((E, D, 2 * H)), "experts.gate_up_proj_bias":
          rng.standard_normal((E, 2 * H)), "experts.down_proj": rng.standard_normal((E, H, D)),
          "experts.down_proj_bias": rng.standard_normal((E, D))}
    x = rng.standard_normal((10, D))
    logits = x @ sd["router.weight"].T + sd["router.bias"]
    top = np.argsort(-logits, axis=1)[:, :K]
    v = np.take_along_axis(logits, top, 1)
    w = np.exp(v - v.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    y = np.zeros_like(x)
    clamped = 0
    for n in range(10):
        for k in range(K):
            e = top[n, k]
            gu = x[n] @ sd["experts.gate_up_proj"][e] + sd["experts.gate_up_proj_bias"][e]
            gate, up = gu[0::2], gu[1::2]
            clamped += (gate > limit).sum() + (abs(up) > limit).sum()
            gate, up = np.minimum(gate, limit), np.clip(up, -limit, limit)
            h = (up + 1) * gate / (1 + np.exp(-alpha * gate))
            y[n] += w[n, k] * (h @ sd["experts.down_proj"][e] + sd["experts.down_proj_bias"][e])
    assert clamped > 0
    moe = P.from_state_dict("gpt_oss", sd, cfg)
    np.testing.assert_allclose(moe.forward(x), y, rtol=1e-12, atol=1e-13)
    back = P.to_state_dict("gpt_oss", moe)
    assert set(back) == set(sd)
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)


def test_switch_refuses_transformers_integer_expert_capacity_without_a_factor(rng):
    # transformers' SwitchTransformersConfig carries expert_capacity (64 by default) and no capacity_factor; the
    # preset used to ignore it and never drop, where transformers drops beyond C tokens per expert and sequence
    cfg = {"d_model": 6, "d_ff": 4, "num_experts": 4, "expert_capacity": 3}
    with pytest.raises(ValueError, match=r"expert_capacity'\]=3 .*capacity_factor"):
        P.build("switch", cfg)
    # the conversion the message gives keeps exactly C slots
    moe = P.build("switch", dict(cfg, capacity_factor=3 * 4 / 16), seed=0)
    moe.eval()
    moe.forward(rng.standard_normal((16, 6)))
    assert moe.capacity.slots(16, 1, 4) == 3
    assert P.build("switch", dict(cfg, capacity_factor=None)).capacity is None  # no limit, on purpose


def test_deepseek_v3_sequence_loss_counts_the_top_k_scores_as_eq_18_says(rng):
    # DeepSeek-V3 eq. 17-20: f_i = N_r / (K_r T) sum_t 1(s_{i,t} in Topk({s_{j,t}}, K_r)), the top-k of the
    # scores s without the selection bias; P_i = mean_t s_{i,t} / sum_j s_{j,t}. The preset counted the
    # experts chosen on s + bias within the kept groups, which differ as soon as the bias moves a choice
    cfg = dict(CONFIGS["deepseek_v3"], aux_loss_alpha=0.01)
    moe = P.build("deepseek_v3", cfg, seed=0)
    moe.gate.buffers["bias"][:] = [0.0, 0.0, 0.0, 0.6, 0.0, 0.0, 0.0, -0.6]  # moves choices
    moe.eval()
    x = rng.standard_normal((12, 6))
    moe.forward(x, seq_lengths=[5, 7])
    s = 1 / (1 + np.exp(-x @ moe.gate.params["W"]))  # (N, E) sigmoid scores, no bias
    K, E = 2, 8
    top = np.argsort(-s, axis=1, kind="stable")[:, :K]
    assert (np.sort(top, axis=1) != np.sort(moe.routing.expert.reshape(-1, K), axis=1)).any()  # the bias acted
    per_seq = []
    for lo, hi in [(0, 5), (5, 12)]:
        f = np.bincount(top[lo:hi].ravel(), minlength=E) * E / (K * (hi - lo))
        P_ = (s[lo:hi] / s[lo:hi].sum(axis=1, keepdims=True)).mean(axis=0)
        per_seq.append((f * P_).sum())
    assert moe.aux_loss == pytest.approx(0.01 * np.mean(per_seq), rel=1e-13)
