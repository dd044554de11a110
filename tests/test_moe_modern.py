"""Today's MoE blocks through the full layer: float64 gradient checks for every new expert type, gate option
and loss with respect to the input and every parameter (routing asserted unchanged under perturbation,
MATH.md §8), token masks, the sequence-wise and multi-layer balance losses, the composed constructor, and
bad input."""
import numpy as np
import pytest

from numpy_moe import balance as B
from numpy_moe.backend import default_rng
from numpy_moe.experts import ExpertBank, SharedExpert
from numpy_moe.gates import ScoreGate, TopKGate
from numpy_moe.gradcheck import check_module, numerical_gradient, rel_error
from numpy_moe.moe import MoE

TOL = 1e-6  # a composed model: gate + dispatch + experts + shared expert + balance losses (MATH.md §8)
D, O, E = 5, 3, 6


def block(name):
    """The configurations under test, each built from its parts."""
    swiglu = ExpertBank(E, D, O, 4, seed=1, activation="swiglu")
    if name == "mixtral":
        return MoE(gate=ScoreGate(D, E, top_k=2, score="softmax", normalize=True, jitter=0.1, seed=0),
                   experts=swiglu, balance=[B.SequenceBalance(0.5, per_sequence=False), B.ZLoss(0.1)])
    if name == "deepseek_v3":
        return MoE(gate=ScoreGate(D, E, top_k=3, score="sigmoid", normalize=True, scale=2.5, n_groups=3,
                                  topk_groups=2, group_score="top2", bias_update=0.01, seed=0),
                   experts=swiglu, shared=SharedExpert(D, O, 4, seed=2),
                   balance=[B.SequenceBalance(0.5, counts="top_scores")])
    if name == "deepseek_v2":
        return MoE(gate=ScoreGate(D, E, top_k=2, score="softmax", normalize=False, scale=16.0, n_groups=3,
                                  topk_groups=2, group_score="max", seed=0),
                   experts=ExpertBank(E, D, O, 4, seed=1, activation="geglu", bias=True),
                   balance=[B.SequenceBalance(0.5, per_sequence=False), B.Importance(0.5, source="gates")])
    if name == "qwen2":
        return MoE(gate=ScoreGate(D, E, top_k=2, score="softmax", normalize=False, seed=0), experts=swiglu,
                   shared=SharedExpert(D, O, 8, gated=True, seed=2), balance=[B.SwitchLoss(0.5)])
    if name == "sigmoid_top1":
        return MoE(gate=ScoreGate(D, E, top_k=1, score="sigmoid", normalize=False, seed=0), experts=swiglu)
    if name == "topk_gate_swiglu_capacity":
        return MoE(gate=TopKGate(D, E, top_k=2, seed=0), experts=swiglu, capacity_factor=0.75,
                   balance=[B.SequenceBalance(0.5)])
    raise KeyError(name)


BLOCKS = ["mixtral", "deepseek_v3", "deepseek_v2", "qwen2", "sigmoid_top1", "topk_gate_swiglu_capacity"]


def perturbed(moe, rng):
    for _, p in moe.named_parameters():  # off their initial values, as after training
        p += 0.3 * rng.standard_normal(p.shape)
    if "bias" in moe.gate.buffers:
        moe.gate.buffers["bias"][:] = 0.2 * rng.standard_normal(E)
    return moe


def frozen(moe, **kwargs):
    """``moe.forward`` with one replayed jitter draw, asserting that the routing never changes."""
    seen = []

    def forward(x):
        moe.gate.rng = default_rng(9)
        y = moe.forward(x, **kwargs)
        r = moe.routing
        state = [r.sample, r.expert, r.kept]
        if seen:
            for a, b in zip(seen, state):
                np.testing.assert_array_equal(a, b, err_msg="routing changed under perturbation")
        else:
            seen.extend(s.copy() for s in state)
        return y
    return forward


@pytest.mark.parametrize("name", BLOCKS)
def test_gradients_wrt_input_and_every_parameter(name, rng):
    moe = perturbed(block(name), rng)
    x = rng.standard_normal((12, D))
    kwargs = dict(seq_lengths=[5, 7]) if name == "deepseek_v3" else {}
    errors = check_module(moe, x, tol=TOL, forward=frozen(moe, **kwargs))
    assert set(errors) == {"input"} | {n for n, _ in moe.named_parameters()}
    assert max(errors.values()) < TOL
    if moe.losses:
        assert moe.aux_loss > 0


@pytest.mark.parametrize("name", ["deepseek_v3", "qwen2"])
def test_gradients_with_a_mask(name, rng):
    moe = perturbed(block(name), rng)
    moe.losses.append(B.Importance(0.5, source="softmax"))
    x = rng.standard_normal((12, D))
    mask = np.ones(12, dtype=bool)
    mask[[2, 9, 10]] = False
    kwargs = dict(mask=mask, seq_lengths=[5, 7]) if name == "deepseek_v3" else dict(mask=mask)
    assert max(check_module(moe, x, tol=TOL, forward=frozen(moe, **kwargs)).values()) < TOL


def test_masked_statistics_ignore_the_padding_exactly(rng):
    # top-k routing is per sample, so the balance losses and diagnostics of a batch with padding equal those
    # of the batch without the padded rows; the padded rows get no balance gradient
    moe = perturbed(block("deepseek_v3"), rng)
    moe.losses += [B.Importance(0.5, source="softmax"), B.SwitchLoss(0.5), B.ZLoss(0.1)]
    moe.eval()
    x = rng.standard_normal((12, D))
    mask = np.ones(12, dtype=bool)
    mask[[0, 6, 11]] = False
    moe.forward(x, mask=mask, seq_lengths=[6, 6])
    masked_aux, masked_diag = moe.aux_loss, moe.diagnostics
    moe.forward(x[mask], seq_lengths=[5, 4])  # rows 1-5 of the first sequence, 7-10 of the second
    assert masked_aux == pytest.approx(moe.aux_loss, rel=1e-14)
    for key in ("samples_per_expert", "importance"):
        np.testing.assert_allclose(masked_diag[key], moe.diagnostics[key], rtol=1e-14)
    # a padded row's input gradient comes from its own output only: zero output gradient -> zero dx
    moe.forward(x, mask=mask, seq_lengths=[6, 6])
    dy = rng.standard_normal((12, O))
    dy[~mask] = 0
    dx = moe.backward(dy)
    assert not dx[~mask].any()
    # the aux-free load counts the counted samples only
    moe.train()
    moe.forward(x, mask=mask, seq_lengths=[6, 6])
    assert moe.gate.load.sum() == 9 * 3


def test_sequence_balance_by_hand():
    # E = 4, K = 1, two sequences of 2 samples, softmax scores:
    # seq 0 chooses experts 0, 0 -> f = E / (K T) * counts = 2 * (2, 0, 0, 0) = (4, 0, 0, 0)
    # seq 1 chooses experts 1, 2 -> f = (0, 2, 2, 0); P = mean of the scores in each sequence
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.2, 0.2, 0.5, 0.1]])
    from numpy_moe.gates import Routing
    r = Routing(sample=np.arange(4), expert=np.array([0, 0, 1, 2]), weight=np.ones(4), kept=np.ones(4, bool),
                logits=np.log(p), clean=np.log(p), sigma=None, eps=None, probs=p, top_k=1, convention="scored",
                scores=p, seq_lengths=[2, 2])
    seq0 = 4 * (0.7 + 0.4) / 2
    seq1 = 2 * (0.6 + 0.2) / 2 + 2 * (0.2 + 0.5) / 2
    assert B.SequenceBalance(0.1)(r) == pytest.approx(0.1 * (seq0 + seq1) / 2, rel=1e-15)
    # per_sequence=False: one sequence of 4: counts (2, 1, 1, 0) -> f = (2, 1, 1, 0), P = column means
    batch = 2 * p[:, 0].mean() + p[:, 1].mean() + p[:, 2].mean()
    assert B.SequenceBalance(0.1, per_sequence=False)(r) == pytest.approx(0.1 * batch, rel=1e-15)
    # sigmoid scores are normalised per sample first: scaling a row's scores changes nothing
    assert B.SequenceBalance(0.1)(r._replace(scores=p * np.array([[2.0], [3.0], [0.5], [1.0]]))) == \
        pytest.approx(0.1 * (seq0 + seq1) / 2, rel=1e-15)


@pytest.mark.parametrize("counts", ["chosen", "top_scores"])
def test_sequence_balance_gradient_over_sequences_of_different_lengths(counts, rng):
    # the loss alone, with respect to its scores: three sequences of 2, 3 and 4 samples (each its own 1 / T and
    # the mean over S = 3), sigmoid-like positive scores normalised per sample, K = 2 of E = 4, the chosen
    # experts not always the top-2 scores (so the two counting rules differ). Float64 central differences,
    # h = 1e-6, single-function mark 1e-7 (MATH.md §8); the counts are piecewise constant and no score is near
    # a tie, so the differences never move them.
    from numpy_moe.gates import Routing
    N, E, K = 9, 4, 2
    p = rng.uniform(0.05, 1.0, (N, E))
    chosen = np.array([rng.permutation(E)[:K] for _ in range(N)])
    r = Routing(sample=np.repeat(np.arange(N), K), expert=chosen.reshape(-1), weight=np.ones(N * K),
                kept=np.ones(N * K, bool), logits=np.log(p), clean=np.log(p), sigma=None, eps=None, probs=p,
                top_k=K, convention="scored", scores=p, seq_lengths=[2, 3, 4])
    loss = B.SequenceBalance(0.3, counts=counts)
    value = loss(r)
    analytic = loss.backward()["scores"]
    numeric = numerical_gradient(lambda s: loss(r._replace(scores=s)), p.copy())
    assert np.abs(analytic).max() > 1e-3  # a gradient worth checking
    assert rel_error(analytic, numeric) < 1e-7
    # the 1 / S: the mean over sequences, each sequence's loss from its own rows alone
    parts = [B.SequenceBalance(0.3, counts=counts)(r._replace(
        sample=np.repeat(np.arange(hi - lo), K), expert=chosen[lo:hi].reshape(-1), weight=np.ones((hi - lo) * K),
        kept=np.ones((hi - lo) * K, bool), logits=np.log(p[lo:hi]), clean=np.log(p[lo:hi]), probs=p[lo:hi],
        scores=p[lo:hi], seq_lengths=None)) for lo, hi in ((0, 2), (2, 5), (5, 9))]
    assert value == pytest.approx(np.mean(parts), rel=1e-14)


def test_sequence_balance_of_scores_that_all_underflow_is_finite():
    # float32 sigmoid scores of logits below about -104 are all exactly 0; the score sum gets Megatron's
    # 1e-20, so such a sample has s' = 0 (it adds nothing to P) where 0 / 0 gave a NaN loss and gradient
    gate = ScoreGate(4, 4, top_k=2, score="sigmoid", normalize=False, seed=0, dtype="float32")
    gate.params["W"][:] = np.array([-1.0, -0.5, -0.25, -0.75], dtype=np.float32) / 4  # logits t (-1, -.5, -.25, -.75)
    x = np.array([[1000.0], [1.0], [2.0]], dtype=np.float32) * np.ones((1, 4), dtype=np.float32)
    r = gate.forward(x)
    assert not r.scores[0].any() and r.scores[1:].all()  # sample 0's scores all underflowed
    loss = B.SequenceBalance(0.1)
    value = loss(r)
    assert np.isfinite(value)
    ds = loss.backward()["scores"]
    assert np.isfinite(ds).all()  # 1 / 1e-20 times ds' at sample 0, which the sigmoid's s (1 - s) = 0 then zeroes
    dx = gate.backward({"scores": ds})
    assert np.isfinite(dx).all() and not dx[0].any()
    # the other samples' loss is the loss without the zero sample's scores, as if s'[0] = 0
    sn = r.scores / r.scores.sum(axis=1, keepdims=True, dtype=np.float64).clip(1e-300)
    counts = np.bincount(r.expert, minlength=4)
    assert value == pytest.approx(0.1 * float((counts * 4 / (2 * 3) * sn.mean(axis=0)).sum()), rel=1e-6)


def test_sequence_balance_over_many_short_sequences_takes_memory_of_the_batch_only(rng):
    # P per sequence is a sum over each sequence's rows; an (S, N) membership matrix took S N floats (2 GiB
    # for 16384 sequences of one token, 34 GiB at 65536): here 4096 x 4096 float64 = 128 MiB
    import tracemalloc
    N, E, K = 4096, 4, 2
    p = default_rng(0).dirichlet(np.ones(E), size=N)
    idx = np.argsort(-p, axis=1, kind="stable")[:, :K]
    from numpy_moe.gates import Routing
    r = Routing(sample=np.repeat(np.arange(N), K), expert=idx.reshape(-1), weight=np.ones(N * K),
                kept=np.ones(N * K, bool), logits=np.log(p), clean=np.log(p), sigma=None, eps=None, probs=p,
                top_k=K, convention="scored", scores=p, seq_lengths=[1] * N)
    loss = B.SequenceBalance(0.1)
    tracemalloc.start()
    try:
        value = loss(r)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * N * E * 8  # a few (N, E) arrays
    # one token per sequence: f_e = E / K at its K experts, P = its scores, so L = w E / K (sum of its top K)
    per_token = (E / K) * np.take_along_axis(p, idx, axis=1).sum(axis=1)
    assert value == pytest.approx(0.1 * per_token.mean(), rel=1e-12)


def test_sequence_balance_counts_the_chosen_experts_or_the_top_k_scores_by_hand():
    # the routing of the test above, except that sample 0 went to expert 1 (a selection bias, say), while its
    # largest score is still expert 0's. "chosen" (DeepSeek-V2 eq. 24) counts expert 1 for it; "top_scores"
    # (DeepSeek-V3 eq. 18, Megatron) counts expert 0, the top-1 of its scores, as if nothing had moved it
    p = np.array([[0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1], [0.1, 0.6, 0.2, 0.1], [0.2, 0.2, 0.5, 0.1]])
    from numpy_moe.gates import Routing
    r = Routing(sample=np.arange(4), expert=np.array([1, 0, 1, 2]), weight=np.ones(4), kept=np.ones(4, bool),
                logits=np.log(p), clean=np.log(p), sigma=None, eps=None, probs=p, top_k=1, convention="scored",
                scores=p, seq_lengths=[2, 2])
    seq1 = 2 * (0.6 + 0.2) / 2 + 2 * (0.2 + 0.5) / 2
    chosen0 = 2 * (0.7 + 0.4) / 2 + 2 * (0.1 + 0.3) / 2  # seq 0 counts (1, 1, 0, 0): f = (2, 2, 0, 0)
    top0 = 4 * (0.7 + 0.4) / 2  # seq 0 counts (2, 0, 0, 0): f = (4, 0, 0, 0)
    assert B.SequenceBalance(0.1)(r) == pytest.approx(0.1 * (chosen0 + seq1) / 2, rel=1e-15)
    assert B.SequenceBalance(0.1, counts="top_scores")(r) == pytest.approx(0.1 * (top0 + seq1) / 2, rel=1e-15)
    with pytest.raises(ValueError, match="counts='all'"):
        B.SequenceBalance(0.1, counts="all")


def test_sequence_balance_is_one_under_perfect_balance_and_is_k_times_smaller_than_hf_mixtral(rng):
    # uniform scores and every expert chosen equally often: f = 1, P = 1 / E, L = w
    E_, K = 4, 2
    p = np.full((8, E_), 0.25)
    expert = np.tile([0, 1, 2, 3], 4)
    from numpy_moe.gates import Routing
    r = Routing(sample=np.repeat(np.arange(8), K), expert=expert, weight=np.ones(16), kept=np.ones(16, bool),
                logits=np.log(p), clean=np.log(p), sigma=None, eps=None, probs=p, top_k=K, convention="scored",
                scores=p)
    assert B.SequenceBalance(0.3, per_sequence=False)(r) == pytest.approx(0.3, rel=1e-15)
    # HF load_balancing_loss_func: E * sum_e (count_e / N) * P_e
    logits = rng.standard_normal((10, 4))
    gate = ScoreGate(10, 4, top_k=2, score="softmax", normalize=True)
    gate.params["W"][:] = logits
    r = gate.forward(np.eye(10))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    hf = 4 * (np.bincount(r.expert, minlength=4) / 10 * probs.mean(0)).sum()
    assert K * B.SequenceBalance(1.0, per_sequence=False)(r) == pytest.approx(hf, rel=1e-14)


@pytest.mark.parametrize("mode", ["mean", "concat"])
def test_multi_layer_aggregation_gradients(mode, rng):
    # two layers in a row, L = sum R y + MultiLayer(loss)(both routings): check d/dx and d/dparams
    first = perturbed(MoE(gate=ScoreGate(D, E, top_k=2, seed=0), experts=ExpertBank(E, D, D, 4, seed=1,
                                                                                      activation="swiglu")), rng)
    second = perturbed(MoE(gate=ScoreGate(D, E, top_k=2, score="softmax", seed=3),
                           experts=ExpertBank(E, D, O, 4, seed=4, activation="swiglu")), rng)
    agg = B.MultiLayer(B.SequenceBalance(0.5), mode=mode)
    x = rng.standard_normal((10, D))
    R = rng.standard_normal((10, O))
    seen = []

    def loss(_):
        y = second.forward(first.forward(x))
        state = [first.routing.expert.copy(), second.routing.expert.copy()]
        if seen:
            for a, b in zip(seen, state):
                np.testing.assert_array_equal(a, b)
        else:
            seen.extend(state)
        return float((R * y).sum()) + agg([first.routing, second.routing])

    loss(None)
    g1, g2 = agg.backward()
    dx = first.backward(second.backward(R, routing_grad=g2), routing_grad=g1)
    assert rel_error(dx, numerical_gradient(loss, x)) < TOL
    for layer in (first, second):
        for (name, p), (_, g) in zip(layer.named_parameters(), layer.named_grads()):
            assert rel_error(g, numerical_gradient(loss, p)) < TOL, name


def test_multi_layer_conventions_differ_and_mean_is_per_layer_average(rng):
    a, b = perturbed(block("qwen2"), rng), perturbed(block("mixtral"), rng)
    x = rng.standard_normal((16, D))
    a.forward(x)
    b.forward(x)
    loss = B.SequenceBalance(1.0, per_sequence=False)
    per_layer = [B.SequenceBalance(1.0, per_sequence=False)(r) for r in (a.routing, b.routing)]
    assert B.MultiLayer(loss, "mean")([a.routing, b.routing]) == pytest.approx(np.mean(per_layer), rel=1e-15)
    concat = B.MultiLayer(loss, "concat")([a.routing, b.routing])
    assert concat != pytest.approx(np.mean(per_layer), rel=1e-6)
    # concat = f of the pooled counts times P of the pooled scores, computed by hand
    counts = np.bincount(np.concatenate([a.routing.expert, b.routing.expert]), minlength=E)
    P = np.concatenate([a.routing.scores, b.routing.scores]).mean(axis=0)
    assert concat == pytest.approx((E / (2 * 32) * counts * P).sum(), rel=1e-14)


def test_bias_balances_through_fit_and_stays_fixed_in_eval(rng):
    from numpy_moe.optim import Adam
    from numpy_moe.train import fit
    moe = block("deepseek_v3")
    X = rng.standard_normal((64, D))
    y = rng.integers(0, O, 64)
    fit(moe, X, y, optimizer=Adam(1e-3), epochs=2, batch_size=16, seed=0)
    bias = moe.gate.buffers["bias"].copy()
    assert np.abs(bias).max() > 0, "end_step after each optimiser step must move the bias"
    moe.eval()
    moe.forward(X)
    moe.end_step()
    np.testing.assert_array_equal(moe.gate.buffers["bias"], bias)
    assert dict(moe.named_buffers()).keys() == {"gate.bias"}


@pytest.mark.parametrize("kwargs,error,pattern", [
    (dict(mask=np.ones(12)), TypeError, "mask has dtype float64; expected bool"),
    (dict(mask=np.ones(11, dtype=bool)), ValueError, r"mask has shape \(11,\); expected \(12,\)"),
    (dict(mask=np.zeros(12, dtype=bool)), ValueError, "mask is False everywhere"),
    (dict(seq_lengths=[5, 6]), ValueError, r"seq_lengths=\[5, 6\] sum to 11; expected the 12 samples"),
    (dict(seq_lengths=[12.5]), ValueError, "must be a non-empty list of positive integers"),
    (dict(seq_lengths=[0, 12]), ValueError, "must be a non-empty list of positive integers"),
])
def test_bad_forward_input(kwargs, error, pattern, rng):
    with pytest.raises(error, match=pattern):
        block("deepseek_v3").forward(rng.standard_normal((12, D)), **kwargs)


def test_bad_compositions():
    bank = ExpertBank(E, D, O, 4, activation="swiglu")
    with pytest.raises(ValueError, match="top_k=1 with renormalised weights"):
        MoE(gate=ScoreGate(D, E, top_k=1, normalize=True), experts=bank)
    with pytest.raises(ValueError, match="top_k=1 with renormalised weights"):
        MoE(D, O, E, top_k=1, gate="topk_then_softmax", balance={"seed000": 0.01})
    MoE(gate=ScoreGate(D, E, top_k=1, normalize=True), experts=bank, balance=[B.SequenceBalance(0.01)])  # trains
    with pytest.raises(ValueError, match=r"\{'top_k': 2\} configure the gate; with a gate object set them on it"):
        MoE(gate=ScoreGate(D, E), experts=bank, top_k=2)
    with pytest.raises(ValueError, match="experts has n_experts=6; expected 8"):
        MoE(gate=ScoreGate(D, 8), experts=bank)
    with pytest.raises(ValueError, match="pass dtype='float32' to MoE as well"):
        MoE(gate=ScoreGate(D, E, dtype="float32"), experts=ExpertBank(E, D, O, 4, dtype="float32"))
    with pytest.raises(ValueError, match="hidden=4 is set on the ExpertBank"):
        MoE(D, O, E, hidden=4, top_k=2, experts=bank)
    with pytest.raises(TypeError, match="gate=3 must be a convention name"):
        MoE(D, O, E, gate=3)
    with pytest.raises(ValueError, match=r"shared maps 5 -> 2 features; expected 5 -> 3"):
        MoE(gate=ScoreGate(D, E), experts=bank, shared=SharedExpert(D, 2, 4))
    with pytest.raises(ValueError, match="mode='sum' must be one of"):
        B.MultiLayer(B.SequenceBalance(), mode="sum")


def test_keyword_forms_take_experts_and_shared_objects(rng):
    moe = MoE(D, O, E, top_k=2, seed=0, experts=ExpertBank(E, D, O, 4, seed=1, activation="geglu"),
              shared=SharedExpert(D, O, 4, gated=True, seed=2), balance={"switch": 0.1})
    x = rng.standard_normal((9, D))
    assert moe.forward(x).shape == (9, O) and moe.backward(np.ones((9, O))).shape == x.shape
    assert {"gate.W", "experts.W_gate", "shared.w", "shared.mlp.W_down"} <= {n for n, _ in moe.named_parameters()}


def test_the_composed_blocks_of_the_module_docstring_build_and_run(rng):
    from numpy_moe import moe as moe_module
    Dm, Om, H = 6, 3, 4
    blocks = [line for line in moe_module.__doc__.split("Today's blocks are composed")[1].split("``forward(x")[0]
              .split("\n\n")[1:] if line.strip()]
    source = "\n".join(blocks[0].splitlines())
    namespace = dict(MoE=MoE, ScoreGate=ScoreGate, ExpertBank=ExpertBank, SharedExpert=SharedExpert,
                     SequenceBalance=B.SequenceBalance, D=Dm, O=Om, H=H)
    layers = []
    for statement in source.split("    MoE(")[1:]:
        layers.append(eval("MoE(" + statement.split("#")[0].strip().rstrip(","), namespace))
    assert len(layers) == 3
    for layer in layers:
        x = rng.standard_normal((20, Dm))
        y = layer.forward(x)
        assert y.shape == (20, Om) and layer.backward(np.ones_like(y)).shape == x.shape
