"""Each framework's MoE block, built from its own configuration keys (docs/FRAMEWORKS.md has the flag map).

A builder takes the framework's configuration (a dict with the framework's key names; a missing key takes
the builder's default, which is not always the default of transformers' config class: docs/FRAMEWORKS.md
lists where they differ, so pass every key, as a config's ``to_dict()`` does, to compare) and returns a :class:`numpy_moe.moe.MoE` computing that block's function in
evaluation mode. Each cites the reference file and function it follows. A reference implementation's
known bugs (:data:`BUGS`) are reproduced on request (``build(..., bugs=[name])``); by default the
intended formula is built.
"""
from .. import balance as B
from ..experts import ExpertBank, SharedExpert
from ..gates import ScoreGate, TopKGate
from ..moe import MoE
from ..routing import Capacity
from ..validation import check_positive_int


def _get(config, key, default=None, required=False):
    if key in config:
        return config[key]
    if required:
        raise ValueError(f"config lacks {key!r}, which this preset needs (config has {sorted(config)})")
    return default


def _int(config, key, default=None):
    value = _get(config, key, default, required=default is None)
    return check_positive_int(value, f"config[{key!r}]")


def _hf_loss(config, default, bugs):
    """transformers' load_balancing_loss_func weighted by ``router_aux_loss_coef``."""
    return B.FrameworkBalance(_get(config, "router_aux_loss_coef", default), "hf", "double_softmax" in bugs)


def _softmax_topk(config, D, E, K, normalize, key_jitter, seed, dtype):
    return ScoreGate(D, E, top_k=K, score="softmax", normalize=normalize, norm_eps=0.0,
                     jitter=float(_get(config, key_jitter, 0.0)), seed=seed, dtype=dtype)


def mixtral(config, seed=None, dtype="float64", bugs=()):
    """Mixtral-8x7B: softmax, top-2, renormalised; SwiGLU experts w1 (gate), w3 (up), w2 (down).

    transformers models/mixtral/modeling_mixtral.py, ``MixtralSparseMoeBlock.forward``: softmax over the
    router logits, top-k, divide by the sum of the kept; the balance loss is ``load_balancing_loss_func``
    (FrameworkBalance "hf", weight ``router_aux_loss_coef``). ``router_jitter_noise`` multiplies the
    router's input by U(1 - j, 1 + j) in training; HuggingFace also feeds that jittered input to the
    experts, numpy_moe only to the router (equal in evaluation mode). Bug "double_softmax": the loss on
    softmax(softmax(logits)) (transformers #45120, fixed by #45131), for this and the Qwen / OLMoE presets.
    """
    D, H, E = _int(config, "hidden_size"), _int(config, "intermediate_size"), _int(config, "num_local_experts", 8)
    K = _int(config, "num_experts_per_tok", 2)
    gate = _softmax_topk(config, D, E, K, True, "router_jitter_noise", seed, dtype)
    return MoE(gate=gate, experts=ExpertBank(E, D, D, H, seed=seed, dtype=dtype, activation="swiglu"),
               balance=[_hf_loss(config, 0.02, bugs)], dtype=dtype)


def qwen2_moe(config, seed=None, dtype="float64", bugs=()):
    """Qwen2-MoE / Qwen1.5-MoE: softmax top-k, renormalised only with ``norm_topk_prob``, a shared expert
    scaled by sigmoid(x w).

    transformers models/qwen2_moe/modeling_qwen2_moe.py, ``Qwen2MoeSparseMoeBlock.forward``.
    """
    D, E = _int(config, "hidden_size"), _int(config, "num_experts")
    H, Hs, K = _int(config, "moe_intermediate_size"), _int(config, "shared_expert_intermediate_size"), \
        _int(config, "num_experts_per_tok", 4)
    gate = _softmax_topk(config, D, E, K, bool(_get(config, "norm_topk_prob", False)), "router_jitter_noise",
                         seed, dtype)
    return MoE(gate=gate, experts=ExpertBank(E, D, D, H, seed=seed, dtype=dtype, activation="swiglu"),
               shared=SharedExpert(D, D, Hs, gated=True, seed=seed, dtype=dtype),
               balance=[_hf_loss(config, 0.001, bugs)], dtype=dtype)


def qwen3_moe(config, seed=None, dtype="float64", bugs=()):
    """Qwen3-MoE: Qwen2-MoE without the shared expert, ``norm_topk_prob`` True by default.

    transformers models/qwen3_moe/modeling_qwen3_moe.py, ``Qwen3MoeSparseMoeBlock.forward``.
    """
    D, E = _int(config, "hidden_size"), _int(config, "num_experts")
    H, K = _int(config, "moe_intermediate_size"), _int(config, "num_experts_per_tok", 8)
    gate = _softmax_topk(config, D, E, K, bool(_get(config, "norm_topk_prob", True)), "router_jitter_noise",
                         seed, dtype)
    return MoE(gate=gate, experts=ExpertBank(E, D, D, H, seed=seed, dtype=dtype, activation="swiglu"),
               balance=[_hf_loss(config, 0.001, bugs)], dtype=dtype)


def olmoe(config, seed=None, dtype="float64", bugs=()):
    """OLMoE: softmax top-8 of 64, not renormalised by default (``norm_topk_prob`` False).

    transformers models/olmoe/modeling_olmoe.py, ``OlmoeSparseMoeBlock.forward``; OLMoE also trains with
    a router z-loss (``router_z_loss_coef`` in its training code, not in transformers).
    """
    D, E = _int(config, "hidden_size"), _int(config, "num_experts", 64)
    H, K = _int(config, "intermediate_size"), _int(config, "num_experts_per_tok", 8)
    gate = _softmax_topk(config, D, E, K, bool(_get(config, "norm_topk_prob", False)), "router_jitter_noise",
                         seed, dtype)
    losses = [_hf_loss(config, 0.01, bugs)]
    if _get(config, "router_z_loss_coef"):
        losses.append(B.ZLoss(config["router_z_loss_coef"]))
    return MoE(gate=gate, experts=ExpertBank(E, D, D, H, seed=seed, dtype=dtype, activation="swiglu"),
               balance=losses, dtype=dtype)


def _deepseek(config, seed, dtype, version):
    D, E = _int(config, "hidden_size"), _int(config, "n_routed_experts")
    H, K = _int(config, "moe_intermediate_size"), _int(config, "num_experts_per_tok")
    G, T = _int(config, "n_group", 1), _int(config, "topk_group", 1)
    scale = float(_get(config, "routed_scaling_factor", 1.0))
    normalize = bool(_get(config, "norm_topk_prob", version == 3))
    if version == 2:
        method = _get(config, "topk_method", "greedy")
        if method not in ("greedy", "group_limited_greedy"):
            raise ValueError(f"config['topk_method']={method!r} must be 'greedy' or 'group_limited_greedy'")
        if method == "greedy":
            G = T = 1
        score, group_score = _get(config, "scoring_func", "softmax"), "max"
        if normalize and K > 1:
            scale = 1.0  # DeepSeek-V2 scales only the weights it does not renormalise
        else:
            normalize = False
    else:
        score, group_score = _get(config, "scoring_func", "sigmoid"), "top2"
    gate = ScoreGate(D, E, top_k=K, score=score, normalize=normalize, scale=scale, n_groups=G, topk_groups=T,
                     group_score=group_score, bias_update=float(_get(config, "bias_update_speed", 0.0)),
                     norm_eps=1e-20, seed=seed, dtype=dtype)
    n_shared = _get(config, "n_shared_experts") or 0
    shared = SharedExpert(D, D, H * n_shared, seed=seed, dtype=dtype) if n_shared else None
    alpha = _get(config, "aux_loss_alpha", 0.0)
    counts = "chosen" if version == 2 else "top_scores"  # V2 counts its selection, V3 eq. 18 the top-k of s
    losses = [B.SequenceBalance(alpha, per_sequence=bool(_get(config, "seq_aux", True)), counts=counts)] \
        if alpha else []
    return MoE(gate=gate, experts=ExpertBank(E, D, D, H, seed=seed, dtype=dtype, activation="swiglu"),
               shared=shared, balance=losses, dtype=dtype)


def deepseek_v2(config, seed=None, dtype="float64"):
    """DeepSeek-V2: softmax scores, greedy or group-limited (group score = max) top-k; the kept weights are
    renormalised (``norm_topk_prob``, K > 1) or else multiplied by ``routed_scaling_factor``; shared experts;
    ``aux_loss_alpha`` with ``seq_aux`` (SequenceBalance per sequence or over the batch).

    deepseek-ai/DeepSeek-V2 modeling_deepseek.py, ``MoEGate.forward`` and ``DeepseekV2MoE.forward``.
    """
    return _deepseek(config, seed, dtype, 2)


def deepseek_v3(config, seed=None, dtype="float64"):
    """DeepSeek-V3: sigmoid scores, selection on scores + ``e_score_correction_bias`` within the
    ``topk_group`` best of ``n_group`` groups (group score = sum of its two best), weights renormalised
    (``norm_topk_prob``, + 1e-20) then times ``routed_scaling_factor``; ``n_shared_experts`` shared experts.

    transformers models/deepseek_v3/modeling_deepseek_v3.py, ``DeepseekV3TopkRouter`` and
    ``DeepseekV3MoE.route_tokens_to_experts``; the bias update (``bias_update_speed``, the paper's gamma) and
    the sequence-wise loss (``aux_loss_alpha``) are the paper's (DeepSeek-V3 report, auxiliary-loss-free
    balancing), not in transformers; the loss counts the top-k of the scores s, without the bias or the group
    limit (eq. 18: ``SequenceBalance(counts="top_scores")``), where DeepSeek-V2's counts its choice.
    """
    return _deepseek(config, seed, dtype, 3)


def switch(config, seed=None, dtype="float64", bugs=()):
    """Switch Transformer: softmax, top-1 (weight = its probability, not renormalised), ReLU experts
    wi / wo without bias, a capacity, the Switch loss and the router z-loss.

    transformers models/switch_transformers/modeling_switch_transformers.py,
    ``SwitchTransformersTop1Router`` and ``SwitchTransformersSparseMLP``; Fedus et al. 2021 eq. 4 and the
    capacity ``expert_capacity = tokens * capacity_factor / E``. Pass ``capacity_factor`` (Switch's own
    key; numpy_moe keeps ceil(N cf / E) per expert, tokens in order) or leave it out for no limit.
    transformers' config has an integer ``expert_capacity`` C per sequence instead: a config with it and
    without ``capacity_factor`` is refused (it used to be ignored, so the block never dropped a token);
    give ``capacity_factor = C E / S`` for sequences of S tokens, fed one sequence per forward, or
    ``capacity_factor=None`` for no limit. transformers also takes the balance loss per sequence (f and P
    of each sequence, the products averaged): :class:`~numpy_moe.balance.SwitchLoss` is that loss for one
    sequence; for several, ``SequenceBalance(router_aux_loss_coef)`` with ``seq_lengths`` is transformers'
    value (top-1: f_e = E count_e / S, P_e = mean softmax).
    Earlier transformers passed a dropped token through as ``router_prob * x`` (#37017, fixed by
    #37123); numpy_moe gives it 0, as transformers does now (the residual connection carries it).
    Bugs: "capacity_cumsum" (transformers 5.0 until #48421: the capacity cumsum ran over a singleton axis,
    so no token was ever dropped, #48293) and "z_loss_on_probs" (the same regression fed the max
    probability to the z-loss as the router logits).
    """
    D, H, E = _int(config, "d_model"), _int(config, "d_ff"), _int(config, "num_experts")
    if _get(config, "router_bias", False):
        raise ValueError("config['router_bias']=True is not supported: the Switch preset's router has no bias")
    gate = _softmax_topk(config, D, E, 1, False, "router_jitter_noise", seed, dtype)
    if _get(config, "expert_capacity") is not None and "capacity_factor" not in config:
        raise ValueError(f"config['expert_capacity']={config['expert_capacity']!r} is transformers' integer capacity C "
                         "per sequence; the switch preset takes a factor: pass capacity_factor = C * num_experts / "
                         "tokens_per_sequence and one sequence per forward, or capacity_factor=None for no limit")
    z_loss = B.ProbsZLoss if "z_loss_on_probs" in bugs else B.ZLoss
    losses = [B.SwitchLoss(_get(config, "router_aux_loss_coef", 0.001)),
              z_loss(_get(config, "router_z_loss_coef", 0.001))]
    capacity = None if "capacity_cumsum" in bugs else _get(config, "capacity_factor")
    return MoE(gate=gate, experts=ExpertBank(E, D, D, H, seed=seed, dtype=dtype, activation="relu", bias=False),
               capacity_factor=capacity, balance=losses, dtype=dtype)


def _classic(config, seed, dtype, K, convention, policy, renormalize, min_capacity=0):
    """Softmax top-K gate, ReLU experts with biases, a FrameworkBalance loss; with ``capacity_factor``, a
    :class:`~numpy_moe.routing.Capacity` of ``policy``. ``renormalize``: "before" (the gate renormalises the
    top-K, dropping then zeroes a weight), "after" (the kept weights are renormalised after dropping, MATH.md
    §4.4) or False (top-1: weight = its probability)."""
    D, H, E = _int(config, "model_dim"), _int(config, "hidden"), _int(config, "num_experts")
    cf = _get(config, "capacity_factor")
    after = renormalize == "after" and cf is not None  # without a capacity nothing is dropped: before = after
    gate = ScoreGate(D, E, top_k=K, score="softmax", normalize=bool(renormalize) and not after, norm_eps=0.0,
                     seed=seed, dtype=dtype)
    capacity = None if cf is None else Capacity(cf, policy, min_capacity=min_capacity, renormalize=after)
    return MoE(gate=gate, experts=ExpertBank(E, D, D, H, seed=seed, dtype=dtype, bias=True), capacity=capacity,
               balance=[B.FrameworkBalance(_get(config, "aux_loss_weight", 0.01), convention)], dtype=dtype)


def _min_capacity(config):
    m = _get(config, "min_capacity", 4)
    if isinstance(m, bool) or not isinstance(m, int) or m < 0:
        raise ValueError(f"config['min_capacity']={m!r} must be an integer >= 0")
    return m


def gshard(config, seed=None, dtype="float64"):
    """GShard / fairseq top-2: softmax, top-2, the first-choice loss ``mean(me * ce) * E^2``.

    fairseq moe/top2gate.py ``top2gating``. Keys: ``model_dim``, ``hidden``, ``num_experts``,
    ``capacity_factor`` (None: no limit), ``aux_loss_weight``, ``normalize_gate_prob_before_dropping``
    (fairseq's default False: the kept weights are renormalised AFTER dropping, the sum clamped at eps, so
    a token whose second choice was dropped puts weight 1 on its first; True: renormalised before, the
    survivor keeps p1 / (p1 + p2)). Capacity order: every first choice before any second choice, tokens
    in order (fairseq's ``locations2 += sum(mask1)``). The second expert is the second largest logit
    (``second_expert_policy='all'``; 'sampling' adds Gumbel noise in training, not modelled). fairseq's own
    capacity is ``2 * ceil(S / E)`` in training and ``ceil(moe_eval_capacity_token_fraction * S)`` in
    evaluation, with no capacity factor; numpy_moe keeps ``ceil(S * 2 * capacity_factor / E)``: pick the
    factor that gives the same C.
    """
    before = bool(_get(config, "normalize_gate_prob_before_dropping", False))
    return _classic(config, seed, dtype, 2, "gshard", "gshard", "before" if before else "after")


def deepspeed_top1(config, seed=None, dtype="float64"):
    """DeepSpeed top-1: softmax, argmax, weight = its probability (not renormalised); loss
    ``sum(me * ce) * E``; capacity ``max(ceil(S cf / E), min_capacity)``, tokens kept in order.

    DeepSpeed deepspeed/moe/sharded_moe.py ``top1gating`` (``use_rts`` random token selection and noisy
    gate policies not modelled: ``use_rts=False``). Keys as :func:`gshard` plus ``min_capacity``
    (DeepSpeed's MoE layer default 4; its TopKGate's own default is 8).
    """
    return _classic(config, seed, dtype, 1, "gshard", "position", False, _min_capacity(config))


def deepspeed_top2(config, seed=None, dtype="float64"):
    """DeepSpeed top-2: sharded_moe.py ``top2gating``: loss ``mean(me * ce) * E * E``, capacity
    ``max(ceil(S 2 cf / E), min_capacity)`` with every first choice before any second choice, the kept
    weights renormalised after dropping (sum clamped at eps). ``top2_2nd_expert_sampling`` (Gumbel noise on
    the second choice, training only) is not modelled.
    """
    return _classic(config, seed, dtype, 2, "gshard", "gshard", "after", _min_capacity(config))


DROP_POLICIES = {"probs": "logits", "position": "position"}


def deepspeed_topk(config, seed=None, dtype="float64"):
    """DeepSpeed top-k: softmax, top-k, loss ``mean(me * ce) * E * E / k`` over all k choices, capacity
    ``max(ceil(S k cf / E), min_capacity)``, the kept weights renormalised after dropping.

    DeepSpeed sharded_moe.py ``topkgating``; keys ``k``, ``min_capacity`` and ``drop_policy``: 'probs'
    (DeepSpeed's default) keeps each expert's assignments of largest ``topk(logits)`` value, as in the
    revision whose hand-written masks DeepSpeed's tests hold (Capacity policy "logits"); a later revision
    ranks by the softmax probability instead (pass ``Capacity(..., policy="probs")`` to MoE for it);
    'position' keeps them in token order, every choice alike.
    """
    policy = _get(config, "drop_policy", "probs")
    if policy not in DROP_POLICIES:
        raise ValueError(f"config['drop_policy']={policy!r} must be one of {tuple(DROP_POLICIES)}")
    return _classic(config, seed, dtype, _int(config, "k", 2), "deepspeed_topk", DROP_POLICIES[policy], "after",
                    _min_capacity(config))


def megablocks(config, seed=None, dtype="float64"):
    """MegaBlocks dMoE: softmax top-k, weights not renormalised (``moe_normalize_expert_weights`` None),
    SwiGLU (``mlp_type='glu'``) or ReLU-MLP experts (MegaBlocks' GELU is not modelled); no capacity (dropless).

    databricks/megablocks megablocks/layers/router.py ``LearnedRouter`` and layers/moe.py
    ``batched_load_balancing_loss`` (the "megablocks" convention, averaged over layers). Keys:
    ``hidden_size``, ``ffn_hidden_size``, ``moe_num_experts``, ``moe_top_k``, ``moe_loss_weight``,
    ``mlp_type`` ('mlp' or 'glu'), ``moe_jitter_eps``.
    """
    D, H, E = _int(config, "hidden_size"), _int(config, "ffn_hidden_size"), _int(config, "moe_num_experts")
    K = _int(config, "moe_top_k", 1)
    if _get(config, "moe_normalize_expert_weights") not in (None, 1, 1.0):
        raise ValueError("config['moe_normalize_expert_weights'] must be None or 1 (an L1 renormalisation)")
    normalize = _get(config, "moe_normalize_expert_weights") is not None
    mlp = _get(config, "mlp_type", "mlp")
    if mlp not in ("mlp", "glu"):
        raise ValueError(f"config['mlp_type']={mlp!r} must be 'mlp' or 'glu'")
    gate = _softmax_topk(config, D, E, K, normalize, "moe_jitter_eps", seed, dtype)
    experts = ExpertBank(E, D, D, H, seed=seed, dtype=dtype, activation="swiglu" if mlp == "glu" else "relu",
                         bias=False)
    return MoE(gate=gate, experts=experts, dtype=dtype,
               balance=[B.FrameworkBalance(_get(config, "moe_loss_weight", 0.1), "megablocks")])


def vmoe(config, seed=None, dtype="float64"):
    """V-MoE: softmax then top-k (not renormalised), noise std ``noise_std / E``, capacity with batch
    prioritised routing, importance + load losses.

    google-research/vmoe vmoe/nn/routing.py ``NoisyTopExpertsPerItemRouter``. Keys: ``hidden_size``,
    ``mlp_dim``, ``num_experts``, ``num_selected_experts``, ``noise_std``, ``capacity_factor``,
    ``importance_loss_weight``, ``load_loss_weight``; ReLU experts stand in for V-MoE's GELU MLP.
    """
    D, H, E = _int(config, "hidden_size"), _int(config, "mlp_dim"), _int(config, "num_experts")
    K = _int(config, "num_selected_experts", 2)
    gate = TopKGate(D, E, K, "softmax_then_topk", noise="vmoe", noise_std=_get(config, "noise_std", 1.0),
                    seed=seed, dtype=dtype)
    losses = [B.Importance(_get(config, "importance_loss_weight", 0.005), "softmax"),
              B.VMoELoad(_get(config, "load_loss_weight", 0.005))]
    return MoE(gate=gate, experts=ExpertBank(E, D, D, H, seed=seed, dtype=dtype),
               capacity_factor=_get(config, "capacity_factor"), batch_priority=True, balance=losses, dtype=dtype)


def gpt_oss(config, seed=None, dtype="float64"):
    """gpt-oss: a router Linear with bias, top-k on the logits, softmax over the k kept logits; experts with
    biases and gpt-oss's clamped SwiGLU (``ExpertBank(activation="gptoss_swiglu")``).

    transformers models/gpt_oss/modeling_gpt_oss.py, ``GptOssTopKRouter.forward`` (``topk(logits)`` then
    ``softmax`` of the k values) and ``GptOssExperts._apply_gate`` (gate and up interleaved in the fused
    ``gate_up_proj``: gate = even columns, up = odd; gate clamped above at ``swiglu_limit``, up to
    [-limit, limit], out = (up + 1) * gate * sigmoid(``swiglu_alpha`` * gate)); openai/gpt-oss
    gpt_oss/torch/model.py ``swiglu`` and ``MLPBlock.forward`` (the same block). TopKGate's
    "topk_then_softmax" convention with its bias is that router exactly. The balance loss is transformers'
    ``load_balancing_loss_func`` (``router_aux_loss_coef``, default 0.001) on the softmax of the router
    logits, bias included. Keys: ``hidden_size``, ``intermediate_size``, ``num_local_experts`` (128),
    ``num_experts_per_tok`` (4), ``swiglu_alpha`` (1.702), ``swiglu_limit`` (7.0).
    """
    D, H = _int(config, "hidden_size"), _int(config, "intermediate_size")
    E, K = _int(config, "num_local_experts", 128), _int(config, "num_experts_per_tok", 4)
    gate = TopKGate(D, E, K, "topk_then_softmax", seed=seed, dtype=dtype)
    experts = ExpertBank(E, D, D, H, seed=seed, dtype=dtype, activation="gptoss_swiglu", bias=True,
                         alpha=float(_get(config, "swiglu_alpha", 1.702)),
                         limit=float(_get(config, "swiglu_limit", 7.0)))
    return MoE(gate=gate, experts=experts, balance=[_hf_loss(config, 0.001, ())], dtype=dtype)


BUGS = {"mixtral": ("double_softmax",), "qwen2_moe": ("double_softmax",), "qwen3_moe": ("double_softmax",),
        "olmoe": ("double_softmax",), "switch": ("capacity_cumsum", "z_loss_on_probs")}
BUILDERS = {"mixtral": mixtral, "qwen2_moe": qwen2_moe, "qwen3_moe": qwen3_moe, "olmoe": olmoe,
            "deepseek_v2": deepseek_v2, "deepseek_v3": deepseek_v3, "switch": switch, "gshard": gshard,
            "deepspeed_top1": deepspeed_top1, "deepspeed_top2": deepspeed_top2, "deepspeed_topk": deepspeed_topk,
            "megablocks": megablocks, "vmoe": vmoe, "gpt_oss": gpt_oss}
