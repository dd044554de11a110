"""Invalid input at the public API: a clear TypeError / ValueError naming the argument, never an obscure error
from deep inside or a silently wrong value; and the legitimate neighbours of each bad value (NumPy integers
where a Python int is expected) keep working.

Each test is a bug a throwaway fuzzer found (every public constructor and function, every argument, against
a catalogue of wrong types, bools, floats, NumPy scalars, zeros, negatives, huge values, NaN, inf and bad
arrays); the commit that added it says what the old code did.
"""
import re

import numpy as np
import pytest

from numpy_moe import conformance, data_images, data_text, datasets, io, presets
from numpy_moe.balance import FrameworkBalance, SequenceBalance
from numpy_moe.classic import LocalExperts
from numpy_moe.estimators import HMERegressor
from numpy_moe.experts import ExpertBank, SharedExpert
from numpy_moe.gates import (BaseGate, ExpertChoiceGate, HashGate, ScoreGate, SinkhornGate, SoftmaxGate, TopKGate,
                             sinkhorn)
from numpy_moe.gradcheck import check_module
from numpy_moe.hme import HierarchicalMoE
from numpy_moe.image_layers import Conv2d, Flatten, LayerNorm, Unflatten
from numpy_moe.layers import MLP, Linear
from numpy_moe.models import ImageMoEClassifier, MMoE, SparseMLP, TransformerLM
from numpy_moe.models.transformer import CausalSelfAttention, DenseFeedForward, PositionEmbedding
from numpy_moe.moe import MoE
from numpy_moe.optim import FTRL, SGD, Adam
from numpy_moe.parallel import ExpertParallelMoE
from numpy_moe.routing import Capacity, expert_capacity
from numpy_moe.train import fit, predict

# ----- NumPy integers are integers -------------------------------------------------------------------------
# A size that comes out of an array (x.shape[1], np.unique(y).size, an np.arange of widths) is a NumPy integer.
NUMPY_INT_SIZES = {
    "Linear out_features": (Linear, dict(in_features=3, out_features=2), "out_features", (6, 3)),
    "SoftmaxGate n_experts": (SoftmaxGate, dict(in_features=3, n_experts=4), "n_experts", (6, 3)),
    "MMoE n_outputs": (MMoE, dict(n_features=3, n_experts=3, expert_hidden=4, tower_hidden=3, n_outputs=2),
                       "n_outputs", (6, 3)),
    "ImageMoEClassifier n_classes": (ImageMoEClassifier, dict(in_channels=1, image_size=8, channels=(2, 3),
                                                              hidden=8, n_classes=3), "n_classes", (2, 1, 8, 8)),
    "SparseMLP token_hidden": (SparseMLP, dict(image_size=4, patch_size=2, channels=4, depth=2, token_hidden=4,
                                               channel_hidden=4, n_experts=2, top_k=1), "token_hidden", (2, 1, 4, 4)),
}


@pytest.mark.parametrize("case", NUMPY_INT_SIZES)
@pytest.mark.parametrize("np_int", [np.int64, np.int32])
def test_a_numpy_integer_size_builds_the_same_module_as_the_python_int(case, np_int):
    # the old check_budget took only a Python int as a 1-D parameter's shape: "'numpy.int64' object is not
    # iterable" from the bias of every layer whose width was a NumPy integer
    cls, kwargs, arg, x_shape = NUMPY_INT_SIZES[case]
    x = np.random.default_rng(0).standard_normal(x_shape)
    expected = cls(**kwargs, seed=0).forward(x)
    got = cls(**{**kwargs, arg: np_int(kwargs[arg])}, seed=0).forward(x)
    np.testing.assert_array_equal(got, expected)  # the same seed draws the same weights: exactly equal


@pytest.mark.parametrize("hidden", [np.int64(4), [np.int32(4), 5], range(4, 6)])
def test_mlp_takes_numpy_integer_widths(hidden):
    # the old MLP took a width as one layer only when it was a Python int: np.int64(4) raised "'numpy.int64'
    # object is not iterable"
    widths = [int(h) for h in np.atleast_1d(list(hidden) if isinstance(hidden, (list, range)) else hidden)]
    x = np.random.default_rng(0).standard_normal((5, 3))
    np.testing.assert_array_equal(MLP(3, hidden, 2, seed=0).forward(x), MLP(3, tuple(widths), 2, seed=0).forward(x))


@pytest.mark.parametrize("hidden, error", [(2.5, TypeError), ("4", TypeError), (None, TypeError), (True, TypeError),
                                           ([4, 2.0], TypeError), ([4, 0], ValueError)])
def test_mlp_names_hidden_when_a_width_is_not_a_positive_integer(hidden, error):
    # the old MLP raised "'float' object is not iterable" for 2.5 and None, and blamed "out_features" (the
    # argument of the Linear layer it was building) for "4", True, 2.0 and 0
    with pytest.raises(error, match=r"hidden=.* must be an integer >= 1"):
        MLP(3, hidden, 2)


# ----- backward's gradient has the shape of forward's output ----------------------------------------------
BAD_GRADIENTS = {  # module, input shape, the gradient handed to backward (y: forward's output), error
    "Linear, dy (1, N, O): parameter gradients of the wrong shape": (
        lambda: Linear(3, 2, seed=0), (6, 3), lambda y: y[None], ValueError),
    "LayerNorm, dy (N, 1): broadcast into wrong gradients": (
        lambda: LayerNorm(3), (6, 3), lambda y: y[:, :1], ValueError),
    "HierarchicalMoE, dy (N, 1) for O = 2": (
        lambda: HierarchicalMoE(3, 2, seed=0), (6, 3), lambda y: y[:, :1], ValueError),
    "MMoE, dy (N,): IndexError": (lambda: MMoE(3, n_experts=2, seed=0), (6, 3), lambda y: y[:, 0], ValueError),
    "Conv2d, dy None: AttributeError": (lambda: Conv2d(2, 3, 3, seed=0), (2, 2, 5, 5), lambda y: None, TypeError),
    "ExpertBank, dy complex": (lambda: ExpertBank(2, 3, 2, seed=0), (6, 3), lambda y: y.astype(complex), TypeError),
}


@pytest.mark.parametrize("case", BAD_GRADIENTS)
def test_backward_refuses_a_gradient_that_is_not_shaped_like_the_output(case):
    # before: the first three were accepted (Linear's dW came out (1, D, O), LayerNorm's and the hierarchical
    # mixture's dy broadcast over the features), MMoE raised an IndexError, Conv2d an AttributeError, and the
    # complex gradient was accepted into complex parameter gradients
    factory, x_shape, bad, error = BAD_GRADIENTS[case]
    module = factory()
    y = module.forward(np.random.default_rng(0).standard_normal(x_shape))
    with pytest.raises(error, match=r"(dy|dout) has (shape|dtype) .*forward's output"):
        module.backward(bad(y))


def test_backward_takes_a_nested_list_gradient_of_the_right_shape():
    x = np.random.default_rng(0).standard_normal((6, 3))
    module = Linear(3, 2, seed=0)
    dy = np.random.default_rng(1).standard_normal(module.forward(x).shape)
    expected = module.backward(dy)
    module.forward(x)
    np.testing.assert_array_equal(module.backward(dy.tolist()), expected)


@pytest.mark.parametrize("min_capacity", [np.int64(3), np.int32(3)])
def test_capacity_takes_a_numpy_integer_min_capacity(min_capacity):
    # the old check wanted a Python int: "min_capacity=np.int64(3) must be an integer >= 0"
    capacity = Capacity(0.1, min_capacity=min_capacity)
    assert capacity.slots(16, 2, 8) == 3 and type(capacity.to_dict()["min_capacity"]) is int  # JSON-able


@pytest.mark.parametrize("min_capacity, error", [(-1, ValueError), (2.0, TypeError), (True, TypeError)])
def test_capacity_refuses_a_min_capacity_that_is_not_a_count(min_capacity, error):
    with pytest.raises(error, match=r"min_capacity=.* must be an integer >= 0"):
        Capacity(1.0, min_capacity=min_capacity)


@pytest.mark.parametrize("tree", [np.int64(3), [np.int64(2), 2], (np.int32(2), [2, np.int64(2)])])
def test_a_hierarchical_tree_takes_numpy_integers(tree):
    # the old parse_tree took a node as a gate's expert count only when it was a Python int: "tree=np.int64(3):
    # every node must be an int >= 1 or a non-empty list of nodes, got np.int64(3)"
    def plain(node):
        return int(node) if isinstance(node, (int, np.integer)) else [plain(child) for child in node]

    x = np.random.default_rng(0).standard_normal((6, 3))
    np.testing.assert_array_equal(HierarchicalMoE(3, 1, tree, seed=0).forward(x),
                                  HierarchicalMoE(3, 1, plain(tree), seed=0).forward(x))
    HMERegressor(tree=tree, max_iter=2).fit(x, x[:, 0])


# ----- a huge but finite capacity factor is no capacity limit ------------------------------------------------
@pytest.mark.parametrize("router", ["topk", "expert_choice", "parallel"])
def test_a_capacity_factor_near_the_float_maximum_drops_nothing(router):
    # N K cf / E overflowed to inf and the old capacity_ceil raised "OverflowError: cannot convert float infinity
    # to integer" from every forward; check_real had accepted the factor (it is finite)
    x = np.random.default_rng(0).standard_normal((6, 3))
    if router == "expert_choice":  # cf = E already lets every expert take every sample
        layers = [MoE(3, 2, 4, router="expert_choice", capacity_factor=cf, seed=0) for cf in (1e308, 4.0)]
    elif router == "parallel":
        layers = [ExpertParallelMoE(3, 2, 4, top_k=2, seed=0, mode="padded", capacity_factor=1e308),
                  ExpertParallelMoE(3, 2, 4, top_k=2, seed=0, mode="dropless")]
    else:
        layers = [MoE(3, 2, 4, top_k=2, capacity_factor=cf, seed=0) for cf in (1e308, None)]
    np.testing.assert_array_equal(layers[0].forward(x), layers[1].forward(x))


# ----- flags are True or False -----------------------------------------------------------------------------
FLAGS = {  # (class, the other arguments, the flag)
    "MoE batch_priority": (MoE, dict(in_features=3, out_features=2, n_experts=4, top_k=2, capacity_factor=1.0),
                           "batch_priority"),
    "MoE residual": (MoE, dict(in_features=3, out_features=3, n_experts=4), "residual"),
    "ScoreGate normalize": (ScoreGate, dict(in_features=3, n_experts=4), "normalize"),
    "ScoreGate bias_centered": (ScoreGate, dict(in_features=3, n_experts=4, bias_update=1e-3), "bias_centered"),
    "SharedExpert gated": (SharedExpert, dict(in_features=3, out_features=2, hidden=4), "gated"),
    "TransformerLM tied": (TransformerLM, dict(vocab_size=10, d_model=4, n_layers=1, max_len=8, hidden=8), "tied"),
    "SequenceBalance per_sequence": (SequenceBalance, dict(weight=1e-3), "per_sequence"),
    "FrameworkBalance double_softmax": (FrameworkBalance, dict(), "double_softmax"),
}


@pytest.mark.parametrize("value", ["false", None, 0.5])
@pytest.mark.parametrize("case", FLAGS)
def test_a_flag_that_is_not_a_bool_is_refused_by_name(case, value):
    # each was read as bool(value) before: "false" turned the option on, None and 0.5 were taken without a word
    cls, kwargs, flag = FLAGS[case]
    with pytest.raises(TypeError, match=rf"{flag}={value!r} must be True or False"):
        cls(**kwargs, **{flag: value})


@pytest.mark.parametrize("case", FLAGS)
def test_a_numpy_bool_flag_is_a_bool(case):
    cls, kwargs, flag = FLAGS[case]
    assert getattr(cls(**kwargs, **{flag: np.bool_(True)}), flag) is True


# ----- the gradient checker's own arguments ----------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(h=0), ValueError, "h=0 must be a finite number > 0"),           # was ZeroDivisionError
    (dict(h=True), TypeError, "h=True must be"),                          # was h = 1: a failed check
    (dict(h=float("nan")), ValueError, "h=nan must be"),                  # was a failed check, all NaN
    (dict(tol=-1e-7), ValueError, "tol=-1e-07 must be a finite number >= 0"),  # a failed check blaming the module
    (dict(tol=float("nan")), ValueError, "tol=nan must be"),
    (dict(x=[[0.5, -1.0, 2.0]]), TypeError, "x is a list; check_module perturbs x in place"),  # AttributeError
])
def test_check_module_names_a_bad_step_tolerance_or_input(kwargs, error, match):
    x = np.random.default_rng(0).standard_normal((4, 3))
    with pytest.raises(error, match=match):
        check_module(Linear(3, 2, seed=0), **{"x": x, **kwargs})


# ----- a gate called directly checks its input as the MoE layer does ---------------------------------------
GATES = {
    "SoftmaxGate": lambda: SoftmaxGate(3, 4, seed=0),
    "TopKGate": lambda: TopKGate(3, 4, top_k=2, seed=0),
    "ExpertChoiceGate": lambda: ExpertChoiceGate(3, 4, seed=0),
    "ScoreGate": lambda: ScoreGate(3, 4, seed=0),
    "BaseGate": lambda: BaseGate(3, 2, seed=0),
    "SinkhornGate": lambda: SinkhornGate(3, 4, seed=0),
    "HashGate": lambda: HashGate(3, 4, n_keys=10, seed=0),
}


def route(gate, x):
    out = gate.forward(x, keys=np.arange(len(x))) if isinstance(gate, HashGate) else gate.forward(x)
    return out if isinstance(out, np.ndarray) else out.weight


@pytest.mark.parametrize("name", GATES)
def test_a_gate_takes_a_nested_list_as_its_array(name):
    # an AttributeError ("'list' object has no attribute 'shape'") from every gate but SoftmaxGate before
    x = np.random.default_rng(0).standard_normal((6, 3))
    np.testing.assert_array_equal(route(GATES[name](), x.tolist()), route(GATES[name](), x))


@pytest.mark.parametrize("bad, match", [(lambda x: np.where(x > 1, np.nan, x), "x contains NaN or inf"),
                                        (lambda x: x[:, :2], r"x has 2 features .*expected 3")])
@pytest.mark.parametrize("name", GATES)
def test_a_gate_refuses_nan_and_the_wrong_width_by_name(name, bad, match):
    # before: SoftmaxGate and HashGate routed NaN rows without a word, HashGate took any width, the others
    # failed inside NumPy (a matmul's core-dimension error) or the top-k selection
    x = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(ValueError, match=match):
        route(GATES[name](), bad(x))


# ----- token ids -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ids, error, match", [
    ([3, -1], ValueError, r"ids has values in \[-1, 3\]; expected ids in \[0, "),  # was "0<": VOCAB[-1]
    ([3, 10 ** 6], ValueError, r"ids has values in \[3, 1000000\]"),               # was an IndexError
    ([3.7, 4.2], TypeError, "ids has dtype float64; expected integer token ids"),  # was "01": truncated
    ([True, False], TypeError, "ids has dtype bool"),                               # was "^"
])
def test_decode_refuses_ids_outside_the_vocabulary(ids, error, match):
    with pytest.raises(error, match=match):
        data_text.decode(ids)


def test_decode_still_reads_numpy_ids_of_any_integer_type():
    ids = data_text.encode("^12+7=19$")
    assert data_text.decode(ids.astype(np.uint8)) == data_text.decode(list(ids)) == "^12+7=19$"


# ----- the standalone Sinkhorn balancing -------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(tol=float("inf")), ValueError, "tol=inf must be a finite number > 0"),  # was exp(logits), "converged"
    (dict(tol=-1e-4), ValueError, "tol=-0.0001 must be"),          # was max_iter iterations and a warning
    (dict(max_iter=2.7), TypeError, "max_iter=2.7 must be an integer >= 1"),   # ran 3 iterations
    (dict(max_iter=0), ValueError, "max_iter=0 must be an integer >= 1"),      # no iteration, a warning
    (dict(logits=[[0.0, np.nan], [1.0, 2.0]]), ValueError, "logits contains NaN or inf"),  # a NaN plan
    (dict(logits=np.zeros(4)), ValueError, "logits has ndim=1"),   # ValueError: not enough values to unpack
])
def test_sinkhorn_checks_its_arguments_as_the_gate_does(kwargs, error, match):
    with pytest.raises(error, match=match):
        sinkhorn(**{"logits": np.random.default_rng(0).standard_normal((6, 3)), **kwargs})


def test_io_load_takes_a_numpy_integer_max_bytes(tmp_path):
    # refused before: "max_bytes=np.int64(1048576) must be a positive int"
    path = io.save(Linear(3, 2, seed=0), tmp_path / "linear.npz")
    for load in (lambda m: io.load(path, max_bytes=m), lambda m: io.load_into(Linear(3, 2, seed=1), path, max_bytes=m)):
        np.testing.assert_array_equal(load(np.int64(2 ** 20)).params["W"], Linear(3, 2, seed=0).params["W"])
    with pytest.raises(TypeError, match=r"max_bytes=2.5 must be a positive int"):
        io.load(path, max_bytes=2.5)


# ----- token states (B, T, D) of the transformer's parts ---------------------------------------------------
STATE_LAYERS = {
    "CausalSelfAttention": lambda: CausalSelfAttention(4, 2, seed=0),
    "DenseFeedForward": lambda: DenseFeedForward(4, 6, seed=0),
    "PositionEmbedding": lambda: PositionEmbedding(8, 4, seed=0),
}


@pytest.mark.parametrize("name", STATE_LAYERS)
def test_a_transformer_part_takes_nested_lists_as_its_array(name):
    # "'list' object has no attribute 'ndim'" before
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    np.testing.assert_array_equal(STATE_LAYERS[name]().forward(x.tolist()), STATE_LAYERS[name]().forward(x))


@pytest.mark.parametrize("bad, error, match", [
    (lambda x: np.where(x > 1, np.inf, x), ValueError, "x contains NaN or inf"),
    (lambda x: (x > 0).astype(int), TypeError, "x has dtype int64"),
])
def test_position_embedding_refuses_non_finite_and_integer_states(bad, error, match):
    # PositionEmbedding added its table to them without a word (the other parts refuse them in their Linear)
    x = np.random.default_rng(0).standard_normal((2, 5, 4))
    with pytest.raises(error, match=match):
        PositionEmbedding(8, 4, seed=0).forward(bad(x))


def test_training_a_module_without_a_backward_pass_names_it():
    # a bare NotImplementedError() from nm.fit(LocalExperts(...)) before
    x = np.random.default_rng(0).standard_normal((8, 3))
    with pytest.raises(NotImplementedError, match="LocalExperts defines no backward pass .*fit_local_experts"):
        fit(LocalExperts(3, 2, 2, seed=0), x, np.arange(8) % 2, epochs=1)


@pytest.mark.parametrize("routing_grad", ["weight", [1.0], {"weights": np.ones(12)}])
def test_moe_backward_refuses_a_routing_gradient_it_would_not_read(routing_grad):
    # a string or list raised "'str' object has no attribute 'items'"; a misspelt key was ignored, so the
    # gradient it carried was dropped without a word
    layer = MoE(3, 2, 4, top_k=2, seed=0)
    y = layer.forward(np.random.default_rng(0).standard_normal((6, 3)))
    with pytest.raises(TypeError, match=r"routing_grad=.* must be None or a dict with keys among \['clean'"):
        layer.backward(np.ones_like(y), routing_grad=routing_grad)


# ----- an error names the argument the caller gave, not that of a layer built from it ---------------------
@pytest.mark.parametrize("cls, kwargs, arg, value, error", [
    (ImageMoEClassifier, dict(in_channels=1, image_size=8, channels=(2, 3)), "hidden", 2.5, TypeError),
    (ImageMoEClassifier, dict(in_channels=1, image_size=8, channels=(2, 3), hidden=8), "n_classes", 0, ValueError),
    (ImageMoEClassifier, dict(in_channels=1, image_size=8, hidden=8), "channels", 4, ValueError),
    (SparseMLP, dict(image_size=4, patch_size=2, channels=4, depth=2), "token_hidden", True, TypeError),
    (SparseMLP, dict(image_size=4, patch_size=2, channels=4, depth=2), "channel_hidden", -1, ValueError),
])
def test_a_model_names_its_own_argument(cls, kwargs, arg, value, error):
    # before: "out_features=2.5 must be an integer >= 1" (the Linear or MoE being built), and for channels=4
    # "object of type 'int' has no len()"
    with pytest.raises(error, match=rf"^{arg}={value!r} must be"):
        cls(**kwargs, **{arg: value})


@pytest.mark.parametrize("balance", ["switch", 0.01, True])
def test_moe_names_balance_when_it_is_neither_a_dict_nor_a_list(balance):
    # before: "balance contains 's'" for the string, "'float' object is not iterable" for the number
    with pytest.raises(TypeError, match=rf"balance={balance!r} must be None, a dict name -> weight"):
        MoE(3, 2, 4, top_k=2, balance=balance)


# ----- an option named by a string ------------------------------------------------------------------------
X6 = np.random.default_rng(0).standard_normal((6, 3))
STRING_OPTIONS = {
    "MLP activation": ("activation", lambda v: MLP(3, 4, 2, activation=v)),
    "FrameworkBalance convention": ("convention", lambda v: FrameworkBalance(convention=v)),
    "presets.build preset": ("preset", lambda v: presets.build(v, {})),
    "fit loss": ("loss", lambda v: fit(MoE(3, 2, 2, seed=0), X6, np.arange(6) % 2, loss=v, epochs=1)),
}


@pytest.mark.parametrize("value", [["relu"], {"name": "relu"}])
@pytest.mark.parametrize("case", STRING_OPTIONS)
def test_a_string_option_given_a_list_or_dict_names_the_option(case, value):
    # "unhashable type: 'list'" (a dict lookup) before, naming nothing
    arg, make = STRING_OPTIONS[case]
    with pytest.raises(ValueError, match=rf"{arg}=.* must be one of"):
        make(value)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(n_experts=0), ValueError, "n_experts=0 must be an integer >= 1"),             # ZeroDivisionError
    (dict(top_k=2.7), TypeError, "top_k=2.7 must be an integer >= 1"),                   # a capacity of 14
    (dict(n_samples=-10), ValueError, "n_samples=-10 must be an integer >= 0"),          # a capacity of -5
    (dict(capacity_factor=-1.0), ValueError, "capacity_factor=-1.0 must be a finite number > 0"),
    (dict(capacity_factor=float("inf")), ValueError, "capacity_factor=inf must be"),     # OverflowError
])
def test_expert_capacity_checks_its_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        expert_capacity(**{"n_samples": 10, "top_k": 2, "n_experts": 4, "capacity_factor": 1.0, **kwargs})


def test_flatten_and_unflatten_take_nested_lists():
    # "'list' object has no attribute 'shape'" / "... 'ndim'" before
    x = np.random.default_rng(0).standard_normal((2, 1, 3))
    np.testing.assert_array_equal(Flatten().forward(x.tolist()), x.reshape(2, 3))
    np.testing.assert_array_equal(Unflatten((1, 3)).forward(x.reshape(2, 3).tolist()), x)


@pytest.mark.parametrize("shape", [3, None, "13"])
def test_unflatten_names_a_shape_that_is_not_a_tuple(shape):
    # "'int' object is not iterable" for 3 and None; "13" was read as ('1', '3') and refused as shape='1'
    with pytest.raises(TypeError, match=rf"shape={shape!r} must be a tuple of integers >= 1"):
        Unflatten(shape)


@pytest.mark.parametrize("bad, error, match", [
    (lambda x: np.where(x > 1, np.nan, x), ValueError, "x contains NaN or inf"),   # NaN outputs, no word
    (lambda x: x.astype(complex), TypeError, "x has dtype complex128"),            # complex outputs
    (lambda x: x[:, :2], ValueError, "x has 2 features"),                          # a matmul error inside
    (lambda x: x[None], ValueError, r"x has shape \(1, 6, 3\); expected \(N, 3\) or"),  # 1 expert's batch of 2
])
def test_expert_bank_checks_its_input(bad, error, match):
    x = np.random.default_rng(0).standard_normal((6, 3))
    with pytest.raises(error, match=match):
        ExpertBank(2, 3, 2, hidden=4, seed=0).forward(bad(x))


def test_expert_bank_takes_a_nested_list():
    # its backward raised "'list' object has no attribute 'ndim'" before
    x = np.random.default_rng(0).standard_normal((6, 3))
    banks = [ExpertBank(2, 3, 2, hidden=4, seed=0) for _ in range(2)]
    outs = [banks[0].forward(x), banks[1].forward(x.tolist())]
    np.testing.assert_array_equal(outs[1], outs[0])
    np.testing.assert_array_equal(banks[1].backward(np.ones_like(outs[1])), banks[0].backward(np.ones_like(outs[0])))


@pytest.mark.parametrize("x", [None, 3.0])
def test_flatten_names_a_scalar(x):
    # an IndexError ("tuple index out of range") before
    with pytest.raises(ValueError, match="x has ndim=0"):
        Flatten().forward(x)


@pytest.mark.parametrize("call", ["fit", "predict"])
@pytest.mark.parametrize("model", [None, "MoE", [Linear(3, 2, seed=0)]])
def test_fit_and_predict_name_a_model_that_is_not_a_module(call, model):
    # an AttributeError ("'NoneType' object has no attribute 'training'" / "... 'dtype'") before
    with pytest.raises(TypeError, match=r"model=.* must be a numpy_moe Module"):
        if call == "fit":
            fit(model, X6, np.arange(6) % 2, epochs=1)
        else:
            predict(model, X6)


def test_saving_into_a_missing_directory_names_the_file_asked_for(tmp_path):
    # the FileNotFoundError named a temporary file the caller never asked for ('.model.npz.k3j2h1.tmp')
    target = tmp_path / "missing" / "model.npz"
    with pytest.raises(FileNotFoundError, match=rf"cannot write {re.escape(str(target))}: its directory .*missing does not exist"):
        io.save(Linear(3, 2, seed=0), target)


def test_top_k_gate_names_convention_its_own_argument():
    # "gate='topk' must be one of ..." before: the name MoE gives the same choice, not TopKGate's (MoE(gate=...)
    # still says gate=, from its own check)
    with pytest.raises(ValueError, match=r"^convention='topk' must be one of"):
        TopKGate(3, 4, convention="topk")
    with pytest.raises(ValueError, match=r"^gate='topk' must be one of"):
        MoE(3, 2, 4, top_k=2, gate="topk")


@pytest.mark.parametrize("mode", ["eval", None, 0.0])
def test_module_train_refuses_a_mode_that_is_not_a_bool(mode):
    # train("eval") set training = "eval", which is truthy: noise and balance statistics stayed on
    with pytest.raises(TypeError, match=rf"mode={mode!r} must be True or False"):
        MoE(3, 2, 4, top_k=2, seed=0).train(mode)


# ----- framework weights -----------------------------------------------------------------------------------
MIXTRAL = {"hidden_size": 4, "intermediate_size": 6, "num_local_experts": 4, "num_experts_per_tok": 2}


@pytest.mark.parametrize("preset, moe, error, match", [
    ("switch", lambda: presets.build("mixtral", MIXTRAL, seed=0), ValueError,
     r"moe is not a 'switch' block .*lacks \['experts.W1', 'experts.W2'\]"),           # KeyError 'experts.W1'
    ("qwen2_moe", lambda: presets.build("mixtral", MIXTRAL, seed=0), ValueError,
     r"moe is not a 'qwen2_moe' block .*lacks \['shared.mlp.W_down'"),                 # KeyError
    ("mixtral", lambda: MoE(4, 4, 4, hidden=6, top_k=2, seed=0), ValueError,
     r"moe is not a 'mixtral' block"),                                                 # KeyError 'experts.W_gate'
    ("mixtral", lambda: None, TypeError, r"moe=None must be a numpy_moe MoE built by presets.build"),  # AttributeError
])
def test_exporting_a_block_of_another_preset_names_what_does_not_fit(preset, moe, error, match):
    with pytest.raises(error, match=match):
        presets.to_state_dict(preset, moe())


def test_exporting_a_block_of_its_own_preset_still_works():
    moe = presets.build("mixtral", MIXTRAL, seed=0)
    back = presets.from_state_dict("mixtral", presets.to_state_dict("mixtral", moe), MIXTRAL)
    for (name, p), (_, q) in zip(moe.named_parameters(), back.named_parameters()):
        np.testing.assert_array_equal(q, p, err_msg=name)


@pytest.mark.parametrize("preset", ["nope", None])
def test_make_fixture_names_an_unknown_preset(preset):
    # a bare KeyError: 'nope' before
    with pytest.raises(ValueError, match=rf"preset={preset!r} must be one of \["):
        conformance.make_fixture(preset)


@pytest.mark.parametrize("optimizer", [SGD, Adam, FTRL])
def test_an_optimizer_step_names_a_model_that_is_not_a_module(optimizer):
    # "'NoneType' object has no attribute 'named_grads'" before, and the step count had already advanced
    opt = optimizer()
    with pytest.raises(TypeError, match=r"model=None must be a numpy_moe Module"):
        opt.step(None)
    assert opt.t == 0


# ----- data sets -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dtype="int64"), TypeError, "dtype='int64' must be a float dtype"),          # float64 images, silently
    (dict(dtype="complex128"), TypeError, "dtype='complex128' must be a float dtype"),  # complex images
    (dict(seed=True), TypeError, "seed=True must be None, an int >= 0"),              # taken as seed 1
    (dict(seed=[1, 2]), TypeError, r"seed=\[1, 2\] must be None"),                     # taken by NumPy
    (dict(test_size="a"), TypeError, "test_size='a' must be a finite number in"),     # '<' not supported
])
def test_load_digits_images_checks_its_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        data_images.load_digits_images(**kwargs)


@pytest.mark.parametrize("X_train, X, error, match", [
    (X6[:, 0], X6, ValueError, r"X_train has shape \(6,\); expected \(N, D\)"),  # one mean for every column
    (X6, X6[:, :2], ValueError, r"X has shape \(6, 2\); expected \(N, 3\)"),       # broadcast: (6, 2) vs (3,)
    (X6, X6[:, :1], ValueError, r"X has shape \(6, 1\); expected \(N, 3\)"),       # broadcast to (6, 3) silently
    (X6 + 1j, X6, TypeError, "X_train has dtype complex128; expected real numbers"),  # imaginary part dropped
])
def test_standardizer_refuses_rows_of_another_shape(X_train, X, error, match):
    with pytest.raises(error, match=match):
        datasets.standardizer(X_train)(X)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(tolerance=1e-5), ValueError, r"tolerance=1e-05 must be a dict with keys among \['aux'"),  # AttributeError
    (dict(tolerance={"outptu": 1e-3}), ValueError, r"tolerance=\{'outptu': 0.001\} must be a dict"),  # ignored
    (dict(tolerance={"output": -1.0}), ValueError, r"tolerance\['output'\]=-1.0 must be a finite number >= 0"),
    (dict(tolerance={"output": "a"}), TypeError, r"tolerance\['output'\]='a' must be"),  # '<=' not supported
    (dict(results="output"), TypeError, "results must be a dict name -> array; got str"),  # str indices
])
def test_conformance_compare_checks_its_arguments(kwargs, error, match):
    fixture = conformance.make_fixture("mixtral")[0]
    with pytest.raises(error, match=match):
        conformance.compare(fixture, **{"results": fixture, **kwargs})


# ----- x is checked once per layer: MoE checks it, its parts only convert it ---------------------------------------
@pytest.mark.parametrize("build", [
    lambda: MoE(6, 3, 4, hidden=5, seed=0, top_k=2),
    lambda: MoE(6, 3, 4, hidden=5, seed=0),  # dense: the gate and ExpertBank.forward
    lambda: MoE(6, 3, 4, hidden=5, seed=0, top_k=2, dispatch="dense"),
    lambda: MoE(gate=ScoreGate(6, 4, top_k=2, score="sigmoid"), experts=ExpertBank(4, 6, 3, 5, seed=0),
                shared=SharedExpert(6, 3, 5, seed=0)),
])
def test_moe_checks_its_input_once_and_its_parts_do_not_check_it_again(build, monkeypatch):
    """A second finiteness pass over x in the gate (or ExpertBank, SharedExpert) costs 0.3-0.7 ms a step at the
    benchmark's second configuration: MoE passes checked=True to the parts whose forward takes it."""
    from numpy_moe import validation
    calls = []
    real = validation.check_input

    def counting(x, *args, **kwargs):
        calls.append(tuple(np.shape(x)))
        return real(x, *args, **kwargs)

    import numpy_moe.experts.bank, numpy_moe.experts.shared, numpy_moe.gates.scored, numpy_moe.gates.softmax
    import numpy_moe.moe
    for module in (numpy_moe.moe, numpy_moe.gates.softmax, numpy_moe.gates.scored, numpy_moe.experts.bank,
                   numpy_moe.experts.shared):
        monkeypatch.setattr(module, "check_input", counting)
    layer = build()
    x = np.random.default_rng(0).standard_normal((7, 6))
    layer.forward(x)
    assert calls == [(7, 6)]  # the layer's own check only
    calls.clear()
    layer.gate.forward(x)  # called on its own, a part checks x itself
    assert calls == [(7, 6)]


def test_moe_runs_a_gate_subclass_whose_forward_does_not_take_checked():
    """A user's subclass that overrides forward(self, x) keeps working inside MoE (no checked= passed to it)."""
    class MyGate(TopKGate):
        def forward(self, x):
            return super().forward(x)

    layer = MoE(gate=MyGate(6, 4, top_k=2, seed=0), experts=ExpertBank(4, 6, 3, 5, seed=0))
    x = np.random.default_rng(1).standard_normal((5, 6))
    ref = MoE(gate=TopKGate(6, 4, top_k=2, seed=0), experts=ExpertBank(4, 6, 3, 5, seed=0))
    np.testing.assert_array_equal(layer.forward(x), ref.forward(x))


def test_sinkhorn_takes_minus_inf_for_an_excluded_pair():
    """-inf logits mark a sample-expert pair that gets no mass; NaN and +inf are refused (above)."""
    h = np.random.default_rng(2).standard_normal((6, 3))
    h[2, 1] = -np.inf
    plan = sinkhorn(h).plan
    assert plan[2, 1] == 0 and np.isfinite(plan).all()
    np.testing.assert_allclose(plan.sum(axis=0), 1 / 3, rtol=1e-3)
