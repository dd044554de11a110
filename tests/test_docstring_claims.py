"""Claims of the public docstrings (the API reference of the documentation site), each pinned by a test.

Found by the docstring audit: every test here checks one sentence of a docstring against what the code
does; the docstring it pins is named in the test's own docstring. Measured time: under 2 s.
"""
import numpy as np
import pytest

import numpy_moe as nm
from numpy_moe.routing import Capacity


def test_moe_diagnostics_importance_is_taken_before_capacity_even_with_renormalisation():
    """MoE.diagnostics: "importance : (E,) sum over the batch of each expert's combine weights (before
    capacity)". Renormalising after dropping divided the weights the importance summed, so a sample whose
    choices were all dropped added w / eps (about 1e15) to its experts' importance."""
    x = np.random.default_rng(0).standard_normal((10, 4))
    free = nm.MoE(4, 3, 4, top_k=2, seed=1)
    free.forward(x)
    for renormalize in (False, True):
        layer = nm.MoE(4, 3, 4, top_k=2, seed=1, capacity=Capacity(0.5, renormalize=renormalize))
        layer.forward(x)
        assert layer.diagnostics["dropped"] > 0
        np.testing.assert_allclose(layer.diagnostics["importance"], free.diagnostics["importance"], rtol=1e-12)
    mask = np.arange(10) % 3 != 0  # with a mask: the counted samples' gate weights, before capacity
    layer = nm.MoE(4, 3, 4, top_k=2, seed=1, capacity=Capacity(0.5, renormalize=True))
    layer.forward(x, mask=mask)
    r = free.routing
    want = np.bincount(r.expert[mask[r.sample]], weights=r.weight[mask[r.sample]], minlength=4)
    np.testing.assert_allclose(layer.diagnostics["importance"], want, rtol=1e-12)


def test_moe_diagnostics_after_a_forward_that_raised_says_a_forward_is_needed():
    """MoE.diagnostics: "Routing statistics of the last forward"; with no forward to report it raises the
    ValueError "needs a forward pass first". A first forward that raised (a bad mask) had already stored the
    output shape, so diagnostics went on to an AttributeError about the layer's missing expert outputs."""
    layer = nm.MoE(4, 3, 4, top_k=2, seed=0)
    x = np.random.default_rng(0).standard_normal((8, 4))
    with pytest.raises(ValueError, match="mask"):
        layer.forward(x, mask=np.zeros(8, bool))
    with pytest.raises(ValueError, match="needs a forward pass first"):
        layer.diagnostics
    layer.forward(x)
    assert layer.diagnostics["samples_per_expert"].sum() == 16


def test_batch_priority_orders_samples_by_their_largest_probability_not_their_first_choices():
    """routing.apply_capacity / Capacity("batch_priority") / MoE(batch_priority=True): "samples with a larger
    top probability max_e p[n, e] first" (MATH.md §4.2; fairseq's ``gates.max(dim=1)``). The code read the
    probability of each sample's first choice, which is max_e p only when the gate chooses the argmax of
    p; a ScoreGate with a selection bias (or a group limit) chooses otherwise."""
    from numpy_moe.gates import Routing, ScoreGate
    from numpy_moe.routing import apply_capacity
    probs = np.array([[0.9, 0.1], [0.4, 0.6]])  # sample 0 chose expert 1 (a bias moved it), p = 0.1 there
    r = Routing(sample=np.arange(2), expert=np.array([1, 1]), weight=np.array([0.1, 0.6]), kept=np.ones(2, bool),
                logits=np.log(probs), clean=np.log(probs), sigma=None, eps=None, probs=probs, top_k=1,
                convention="scored", scores=probs)
    # one slot for expert 1: sample 0's max_e p = 0.9 beats sample 1's 0.6
    np.testing.assert_array_equal(apply_capacity(r, 1, batch_priority=True).kept, [True, False])
    # through the layer: a ScoreGate with a selection bias, against the rule written out with loops
    x = np.random.default_rng(3).standard_normal((12, 4))
    gate = ScoreGate(4, 4, top_k=1, score="softmax", normalize=False, seed=0)
    gate.buffers["bias"][:] = [0.0, 0.0, 0.0, 0.4]
    layer = nm.MoE(gate=gate, experts=nm.ExpertBank(4, 4, 3, 5, seed=0), capacity_factor=0.5,
                   batch_priority=True, balance=[nm.balance.SwitchLoss(0.01)])
    layer.forward(x)
    r = layer.routing
    C = int(np.ceil(12 * 0.5 / 4))
    order = sorted(range(12), key=lambda n: (-r.probs[n].max(), n))
    used, want = np.zeros(4, int), np.zeros(12, bool)
    for n in order:
        e = r.expert[n]
        want[n] = used[e] < C
        used[e] += 1
    assert (r.probs[np.arange(12), r.expert] < r.probs.max(axis=1)).any()  # the case the fix is about
    np.testing.assert_array_equal(r.kept, want)


def test_from_state_dict_refuses_nan_weights_naming_the_entry():
    """presets.from_state_dict: "every value must be a finite number, or ValueError names the entry". A
    checkpoint entry holding NaN was copied in without a word (numpy_moe.io refuses such a model), so the
    block computed NaN from a file someone else wrote."""
    from numpy_moe import presets as P
    cfg = {"hidden_size": 8, "intermediate_size": 16, "num_local_experts": 4, "num_experts_per_tok": 2}
    sd = P.to_state_dict("mixtral", P.build("mixtral", cfg, seed=0))
    key = "experts.1.w2.weight"
    bad = sd[key].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=rf"state_dict\['{key}'\] has 1 NaN or inf"):
        P.from_state_dict("mixtral", {**sd, key: bad}, cfg)
    with pytest.raises(ValueError, match="dtype"):
        P.from_state_dict("mixtral", {**sd, key: sd[key].astype(str)}, cfg)
    P.from_state_dict("mixtral", sd, cfg)  # the finite one still loads


def test_a_float32_layer_with_sequence_balance_keeps_float32_gradients():
    """MoE: "dtype : float32 or float64" (and the Module contract: backward returns dx like x). With
    SequenceBalance (the DeepSeek presets' loss) a float32 layer returned a float64 dx and a float64 gate
    gradient: the loss's score gradient was float64 (its f comes from integer counts), unlike every other
    balance loss, whose gradients take the routing's dtype."""
    from numpy_moe import balance as B
    from numpy_moe.gates import ScoreGate, TopKGate
    x = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    for gate in (ScoreGate(6, 4, top_k=2, dtype="float32"), TopKGate(6, 4, 2, dtype="float32")):
        for counts in B.SequenceBalance.COUNTS:
            loss = B.SequenceBalance(0.1, counts=counts)
            layer = nm.MoE(gate=gate, experts=nm.ExpertBank(4, 6, 5, 3, dtype="float32"), balance=[loss],
                           dtype="float32")
            y = layer.forward(x, seq_lengths=[8, 8])
            dx = layer.backward(np.ones_like(y))
            assert dx.dtype == np.float32
            assert {k: g.dtype for k, g in layer.named_grads()} == {k: np.dtype(np.float32)
                                                                  for k, _ in layer.named_grads()}
            assert loss.backward()["scores"].dtype == np.float32
