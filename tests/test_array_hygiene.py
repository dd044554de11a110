"""Array hygiene of every Module class: dtypes kept end to end, any memory layout accepted, the caller's arrays
never written, returned arrays never overwritten by a later call.

Each case builds one module of a registered class in float32 or float64 and draws its input; the cases cover
every Module class that numpy_moe.io registers (tested below). The Module contract in numpy_moe/layers/__init__.py
says what the tests hold the layers to.
"""
import numpy as np
import pytest

from numpy_moe import balance as B
from numpy_moe import functional as F
from numpy_moe import io, optim
from numpy_moe.classic import LocalExperts
from numpy_moe.conv_moe import ConvMoE1d, ConvMoE2d
from numpy_moe.experts import ExpertBank, SharedExpert
from numpy_moe.gates import BaseGate, ExpertChoiceGate, HashGate, ScoreGate, SinkhornGate, SoftmaxGate, TopKGate
from numpy_moe.gates.base import Routing
from numpy_moe.hme import HierarchicalMoE
from numpy_moe.image_layers import GELU, Conv2d, Flatten, LayerNorm, MaxPool2d, Unflatten
from numpy_moe.layers import MLP, Linear, Module, ReLU, Sequential, Tanh
from numpy_moe.models import ImageMoEClassifier, SparseMLP
from numpy_moe.models import transformer as tr
from numpy_moe.models.mmoe import MMoE, SharedBottom
from numpy_moe.models.sparse_mlp import ChannelMixing, MixerBlock, ReRepresentedTokenMixing, TokenMixing
from numpy_moe.moe import MoE
from numpy_moe.soft_moe import SoftMoE


def floats(*shape):
    return lambda rng: rng.standard_normal(shape)


def ids(*shape):
    draw = lambda rng: rng.integers(0, 7, shape)  # noqa: E731
    draw.token_ids = True
    return draw


def every_loss():
    return [B.Seed000Loss(0.1), B.Importance(0.1), B.ShazeerLoad(0.1), B.VMoELoad(0.1), B.SwitchLoss(0.1),
            B.ZLoss(0.1), B.SequenceBalance(0.1), B.FrameworkBalance(0.1, "gshard"), B.ProbsZLoss(0.1)]


# name -> (build(dtype), input(rng)[, forward keyword arguments(rng)])
CASES = {
    "Linear": (lambda d: Linear(5, 3, seed=0, dtype=d), floats(6, 5)),
    "MLP": (lambda d: MLP(5, (4, 6), 3, activation="tanh", seed=0, dtype=d), floats(6, 5)),
    "Sequential": (lambda d: Sequential(Linear(5, 8, seed=0, dtype=d), ReLU(d), MLP(8, 4, 3, seed=1, dtype=d)),
                   floats(6, 5)),
    "ReLU": (ReLU, floats(6, 5)), "Tanh": (Tanh, floats(6, 5)), "GELU": (GELU, floats(6, 5)),
    "Flatten": (Flatten, floats(3, 2, 2, 2)), "Unflatten": (lambda d: Unflatten((2, 3)), floats(4, 6)),
    "LayerNorm": (lambda d: LayerNorm(4, dtype=d), floats(6, 4)),
    "Conv2d": (lambda d: Conv2d(2, 3, 3, padding=1, seed=0, dtype=d), floats(2, 2, 5, 5)),
    "MaxPool2d": (lambda d: MaxPool2d(2), floats(2, 3, 4, 4)),
    "MaxPool2d overlapping": (lambda d: MaxPool2d(2, stride=1), floats(2, 3, 4, 4)),
    "MoE dense": (lambda d: MoE(5, 3, 4, hidden=7, seed=0, dtype=d), floats(6, 5)),
    "MoE every balance loss": (lambda d: MoE(5, 3, 4, hidden=6, seed=0, top_k=2, noise="shazeer", dtype=d,
                                             balance=every_loss()), floats(8, 5),
                               lambda rng: dict(seq_lengths=[3, 5])),
    "MoE top-1 capacity": (lambda d: MoE(5, 3, 4, seed=0, top_k=1, noise="vmoe", capacity_factor=1.25,
                                         batch_priority=True, balance={"switch": 0.01}, dtype=d), floats(8, 5)),
    "MoE expert choice": (lambda d: MoE(5, 3, 4, hidden=7, seed=0, router="expert_choice", capacity_factor=2,
                                        dtype=d), floats(8, 5)),
    "MoE dense dispatch": (lambda d: MoE(5, 3, 4, hidden=7, seed=0, top_k=2, dispatch="dense", dtype=d),
                           floats(8, 5)),
    "MoE padded, mask": (lambda d: MoE(5, 3, 4, hidden=7, seed=0, top_k=2, dispatch="padded", dtype=d,
                                       balance={"importance": 0.1}), floats(8, 5),
                         lambda rng: dict(mask=np.array([1, 1, 1, 0, 1, 1, 0, 1], bool))),
    "MoE score gate, shared, residual": (
        lambda d: MoE(gate=ScoreGate(5, 4, top_k=2, score="sigmoid", bias_update=0.01, jitter=0.01, seed=1, dtype=d),
                      out_features=5, hidden=6, residual=True, seed=0, dtype=d, balance=[B.SequenceBalance(0.01)],
                      shared=SharedExpert(5, 5, 6, gated=True, seed=2, dtype=d)),
        floats(8, 5), lambda rng: dict(seq_lengths=[3, 5])),
    "MoE swiglu, hash": (lambda d: MoE(gate=HashGate(5, 3, 7, kind="balanced", seed=0, dtype=d), dtype=d, seed=0,
                                       experts=ExpertBank(3, 5, 3, 4, seed=0, activation="swiglu", dtype=d)),
                         floats(8, 5), lambda rng: dict(keys=rng.integers(0, 7, 8))),
    "MoE BASE": (lambda d: MoE(gate=BaseGate(5, 4, seed=0, dtype=d), out_features=5, hidden=4, seed=0, dtype=d,
                               residual=True), floats(8, 5)),
    "MoE Sinkhorn": (lambda d: MoE(gate=SinkhornGate(5, 4, top_k=2, seed=0, dtype=d), out_features=3, hidden=4,
                                   seed=0, dtype=d), floats(8, 5)),
    "LocalExperts": (lambda d: LocalExperts(5, 3, 4, mode="competitive", seed=0, dtype=d), floats(6, 5)),
    "SoftmaxGate": (lambda d: SoftmaxGate(4, 3, seed=0, dtype=d), floats(6, 4)),
    "TopKGate": (lambda d: TopKGate(4, 3, 2, noise="shazeer", seed=0, dtype=d), floats(6, 4)),
    "ExpertChoiceGate": (lambda d: ExpertChoiceGate(4, 3, 1.5, seed=0, dtype=d), floats(6, 4)),
    "ScoreGate": (lambda d: ScoreGate(8, 8, top_k=2, score="sigmoid", n_groups=4, topk_groups=2, jitter=0.01,
                                      seed=0, dtype=d), floats(6, 8)),
    "BaseGate": (lambda d: BaseGate(4, 3, seed=0, dtype=d), floats(6, 4)),
    "SinkhornGate": (lambda d: SinkhornGate(4, 3, top_k=2, tol=1e-5, max_iter=50, seed=0, dtype=d), floats(6, 4)),
    "HashGate": (lambda d: HashGate(4, 3, 7, kind="balanced", seed=0, dtype=d), floats(6, 4),
                 lambda rng: dict(keys=rng.integers(0, 7, 6))),
    "ExpertBank": (lambda d: ExpertBank(3, 4, 2, hidden=5, seed=0, dtype=d), floats(6, 4)),
    "ExpertBank gpt-oss": (lambda d: ExpertBank(4, 5, 3, 6, seed=0, activation="gptoss_swiglu", dtype=d),
                           floats(6, 5)),
    "SharedExpert": (lambda d: SharedExpert(4, 3, 5, gated=True, seed=0, dtype=d), floats(6, 4)),
    "ImageMoEClassifier": (lambda d: ImageMoEClassifier(in_channels=1, image_size=4, channels=(2, 3), hidden=4,
                                                        n_classes=3, seed=0, dtype=d), floats(3, 1, 4, 4)),
    "SparseMLP": (lambda d: SparseMLP(image_size=4, in_channels=1, n_classes=3, patch_size=2, channels=4, depth=2,
                                      token_hidden=3, channel_hidden=5, n_experts=3, top_k=2, seed=0, dtype=d),
                  floats(2, 1, 4, 4)),
    "TokenMixing": (lambda d: TokenMixing(Linear(4, 4, seed=0, dtype=d)), floats(2, 4, 3)),
    "ChannelMixing": (lambda d: ChannelMixing(Linear(4, 4, seed=0, dtype=d)), floats(2, 3, 4)),
    "ReRepresentedTokenMixing": (lambda d: ReRepresentedTokenMixing(MLP(2, 3, 2, seed=0, dtype=d), n_tokens=4,
                                                                    channels=4, tokens1=2, channels1=3, seed=0,
                                                                    dtype=d), floats(2, 4, 4)),
    "MixerBlock": (lambda d: MixerBlock(TokenMixing(Linear(4, 4, seed=0, dtype=d)),
                                        ChannelMixing(Linear(4, 4, seed=1, dtype=d)), channels=4, dtype=d),
                   floats(2, 4, 4)),
    "HierarchicalMoE": (lambda d: HierarchicalMoE(3, 1, tree=[2, 2], seed=0, dtype=d), floats(6, 3)),
    "HierarchicalMoE softmax": (lambda d: HierarchicalMoE(3, 3, tree=[2, 2], expert="softmax", seed=0, dtype=d),
                                floats(6, 3)),
    "MMoE": (lambda d: MMoE(4, n_experts=3, expert_hidden=5, seed=0, dtype=d), floats(6, 4)),
    "SharedBottom": (lambda d: SharedBottom(4, bottom=6, seed=0, dtype=d), floats(6, 4)),
    "ConvMoE2d": (lambda d: ConvMoE2d(2, 3, 3, n_experts=2, padding=1, seed=0, dtype=d), floats(2, 2, 4, 4)),
    "ConvMoE1d": (lambda d: ConvMoE1d(2, 3, 3, n_experts=2, top_k=1, seed=0, dtype=d), floats(2, 2, 6)),
    "SoftMoE": (lambda d: SoftMoE(4, 3, 2, slots=3, group_size=5, hidden=6, seed=0, dtype=d), floats(10, 4)),
    "Embedding": (lambda d: tr.Embedding(7, 4, seed=0, dtype=d), ids(2, 3)),
    "PositionEmbedding": (lambda d: tr.PositionEmbedding(5, 4, seed=0, dtype=d), floats(2, 3, 4)),
    "CausalSelfAttention": (lambda d: tr.CausalSelfAttention(4, 2, seed=0, dtype=d), floats(2, 3, 4)),
    "DenseFeedForward": (lambda d: tr.DenseFeedForward(4, 6, seed=0, dtype=d), floats(2, 3, 4)),
    "MoEFeedForward": (lambda d: tr.MoEFeedForward(MoE(4, 4, 3, hidden=5, top_k=2, seed=0, dtype=d)),
                       floats(2, 3, 4)),
    "TransformerBlock": (lambda d: tr.TransformerBlock(4, 2, tr.DenseFeedForward(4, 6, seed=1, dtype=d), seed=0,
                                                       dtype=d), floats(2, 3, 4)),
    "TransformerLM": (lambda d: tr.TransformerLM(7, d_model=4, n_heads=2, n_layers=2, max_len=5, hidden=6, seed=0,
                                                 tied=False, dtype=d,
                                                 moe=[MoE(gate=ScoreGate(4, 3, top_k=2, seed=1, dtype=d), hidden=5,
                                                          out_features=4, seed=0, dtype=d,
                                                          balance=[B.SequenceBalance(0.01)]), None]), ids(2, 3)),
    "TransformerLM tied": (lambda d: tr.TransformerLM(7, d_model=4, n_heads=2, n_layers=1, max_len=5, hidden=6,
                                                      seed=0, tied=True, dtype=d), ids(2, 3)),
}
# layers without parameters compute in the dtype they are given (the Module contract)
KEEP_INPUT_DTYPE = {"ReLU", "Tanh", "GELU", "Flatten", "Unflatten", "MaxPool2d", "MaxPool2d overlapping"}
FLOAT_INPUT = [name for name, case in CASES.items() if not getattr(case[1], "token_ids", False)]


def arrays(obj, prefix="y"):
    """(name, array) for every array in a forward or backward result: an array, a Routing, a dict, None."""
    if isinstance(obj, Routing):
        obj = {f: getattr(obj, f) for f in obj._fields}
    if isinstance(obj, np.ndarray):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from arrays(value, f"{prefix}.{key}")


def inputs(name, dtype, seed=0):
    """The case's input in ``dtype`` (token ids stay integers) and its forward keyword arguments."""
    case = CASES[name]
    rng = np.random.default_rng(seed)
    x = case[1](rng)
    return (x.astype(dtype) if x.dtype.kind == "f" else x), (case[2](rng) if len(case) > 2 else {})


def output_grad(y, dtype=None, seed=7):
    """A random gradient for the output ``y``: an array of its shape, or a routing gradient (dweight), in
    ``dtype`` (None: y's)."""
    rng = np.random.default_rng(seed)
    if isinstance(y, Routing):
        return {"weight": rng.standard_normal(y.weight.shape).astype(dtype or y.weight.dtype)}
    return rng.standard_normal(y.shape).astype(dtype or y.dtype)


def backward(model, x, y, dy):
    """model.backward(dy), or for LocalExperts (trained by its own rule) its compute_grads on labels."""
    if isinstance(model, LocalExperts):
        model.compute_grads(x, np.arange(x.shape[0]) % 3)
        return None
    return model.backward(dy)


def run(name, dtype, x=None, kwargs=None, dy=None):
    """Forward and backward of a fresh model of the case; returns (model, y, dx), copies of y and dx."""
    model = CASES[name][0](dtype)
    x0, kw = inputs(name, dtype)
    x = x0 if x is None else x
    y = model.forward(x, **(kw if kwargs is None else kwargs))
    ys = {k: a.copy() for k, a in arrays(y)}
    dx = backward(model, x, y, output_grad(y) if dy is None else dy)
    return model, ys, {k: a.copy() for k, a in arrays(dx, "dx")}


def test_the_cases_cover_every_registered_module_class():
    covered = {io.registry.class_name(type(m)) for name in CASES for m in CASES[name][0]("float64").modules()}
    builtin = {n for n, cls in io.registered().items() if n.startswith("numpy_moe.") and issubclass(cls, Module)}
    # the base class of the balance losses has no loss of its own to compute
    assert builtin - covered == {"numpy_moe.balance.losses:BalanceLoss"}


# ----- 1. dtypes --------------------------------------------------------------------------------------------


def _float_arrays_of(model, y, dx):
    """Every floating array a forward and backward left: y, dx, grads and what the modules keep for backward."""
    found = [(k, a) for k, a in arrays(y)] + [(k, a) for k, a in arrays(dx, "dx")]
    found += [("grads." + k, g) for k, g in model.named_grads()]
    for m in model.modules():
        for key, value in vars(m).items():
            found += [(f"{type(m).__name__}.{key}{k[1:]}", a) for k, a in arrays(value, "_")]
    return [(k, a) for k, a in found if a.dtype.kind == "f"]


# statistics a balance loss keeps in float64 on purpose: (E,) counts turned into fractions, cast when they
# enter a gradient (SwitchLoss.f, SequenceBalance.f, Importance.imp)
FLOAT64_STATISTICS = ("SwitchLoss.f", "SequenceBalance.f", "Importance.imp", "FrameworkBalance.f")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_model_keeps_its_dtype_through_forward_backward_and_training_steps(name, dtype):
    model, _, _ = run(name, dtype)
    x, kw = inputs(name, dtype)
    y = model.forward(x, **kw)
    dx = backward(model, x, y, output_grad(y, dtype))
    wrong = [k for k, a in _float_arrays_of(model, y, dx) if a.dtype != dtype and not k.startswith(FLOAT64_STATISTICS)]
    assert not wrong, f"{name} {dtype}: arrays of another dtype: {wrong}"
    for opt in (optim.SGD(0.01, momentum=0.9), optim.Adam(0.01), optim.FTRL(0.5, l1=0.01, l2=0.01)):
        model = CASES[name][0](dtype)
        for step in range(3):
            x, kw = inputs(name, dtype, seed=step)
            y = model.forward(x, **kw)
            backward(model, x, y, output_grad(y, dtype, seed=step))
            opt.step(model)
            model.end_step()
        state = [(k, a) for attr in ("velocity", "m", "v", "z", "n") for k, a in getattr(opt, attr, {}).items()]
        wrong = [k for k, a in list(model.named_parameters()) + list(model.named_buffers()) + state
                 if a.dtype.kind == "f" and a.dtype != dtype]
        assert not wrong, f"{name} {dtype} after 3 {type(opt).__name__} steps: {wrong}"


# float16 is no dtype of the library: a layer without parameters is only given float32 or float64 here
@pytest.mark.parametrize("name, model_dtype, other", [
    (name, m, o) for name in FLOAT_INPUT
    for m, o in [("float32", "float64"), ("float32", "float16"), ("float64", "float32")]
    if not (name in KEEP_INPUT_DTYPE and o == "float16")])
def test_input_of_another_float_dtype_is_converted_to_the_model_dtype(name, model_dtype, other):
    """A float32 model given float64 (or float16) input computes in float32: the outputs, dx and grads are those
    of the input cast first; never a float64 output from a float32 model, nor a float32 one from a float64
    model. Layers without parameters compute in the float32 or float64 they are given."""
    x = inputs(name, model_dtype)[0].astype(other)
    model, y, dx = run(name, model_dtype, x=x)
    keep = other if name in KEEP_INPUT_DTYPE else model_dtype
    wrong = [k for k, a in list(y.items()) + list(dx.items()) + list(model.named_grads())
             if a.dtype.kind == "f" and a.dtype != keep]
    assert not wrong, f"{name}: a {model_dtype} model given {other} x leaves {wrong} in another dtype than {keep}"
    if name not in KEEP_INPUT_DTYPE:
        _, y_cast, _ = run(name, model_dtype, x=x.astype(model_dtype))
        assert all(np.array_equal(y[k], y_cast[k]) for k in y), f"{name} {other}: not the cast input's result"


@pytest.mark.parametrize("name", sorted(set(FLOAT_INPUT) - KEEP_INPUT_DTYPE - {"HashGate"}))
def test_integer_input_to_a_layer_with_parameters_is_refused(name):
    x, kw = inputs(name, "float32")
    with pytest.raises(TypeError, match=r"x has dtype int64; expected a floating dtype"):
        CASES[name][0]("float32").forward(np.round(x * 3).astype(np.int64), **kw)


@pytest.mark.parametrize("name", sorted(set(CASES) - {"LocalExperts"}))
def test_an_output_gradient_of_another_dtype_is_converted_to_the_output_dtype(name):
    """dy = mse_backward(y32, target64) is float64: backward takes it as float32 (the dtype of y), so dx and the
    grads are float32 and equal to those of the float32 dy; before, they came out float64."""
    x, kw = inputs(name, "float32")
    model = CASES[name][0]("float32")
    dy32 = output_grad(model.forward(x, **kw))
    dx = {k: a.copy() for k, a in arrays(model.backward(dy32), "dx")}
    grads = {k: g.copy() for k, g in model.named_grads()}
    model = CASES[name][0]("float32")  # a fresh one: the same noise and jitter draws
    model.forward(x, **kw)
    dy64 = {k: g.astype(np.float64) for k, g in dy32.items()} if isinstance(dy32, dict) else dy32.astype(np.float64)
    again = {k: a.copy() for k, a in arrays(model.backward(dy64), "dx")}
    wrong = [k for k, a in list(again.items()) + list(model.named_grads()) if a.dtype != np.float32]
    assert not wrong, f"{name}: a float64 dy made {wrong} float64"
    assert all(np.array_equal(again[k], dx[k]) for k in dx)
    assert all(np.array_equal(g, grads[k]) for k, g in model.named_grads())


def test_sgd_momentum_keeps_float32_velocity_when_trained_on_float64_targets(rng):
    """The trap the conversion closes: a float32 regression model, float64 targets, a hand-written loop."""
    model, opt = MLP(4, 5, 2, seed=0, dtype="float32"), optim.SGD(0.01, momentum=0.9)
    X, target = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal((8, 2))
    for _ in range(2):
        model.backward(F.mse_backward(model.forward(X), target))
        opt.step(model)
    assert {str(v.dtype) for v in opt.velocity.values()} == {"float32"}


def test_a_sequential_takes_the_dtype_of_its_first_layer_with_parameters(rng):
    """Sequential(Unflatten(...), model), the README's way to fit an image model on rows, is as float32 as the
    model: its dtype was the label of Unflatten (float64), so fit converted X and the targets to float64."""
    model = ImageMoEClassifier(in_channels=1, image_size=4, channels=(2, 3), hidden=4, n_classes=3, seed=0,
                               dtype="float32")
    assert Sequential(Unflatten((1, 4, 4)), model).dtype == np.float32
    assert Sequential(ReLU(), Linear(3, 2, dtype="float32")).dtype == np.float32
    assert Sequential(ReLU("float32"), Tanh("float32")).dtype == np.float32  # no parameters: the first layer's


# ----- 2. memory layout -------------------------------------------------------------------------------------


def layouts(x):
    """(name, the values of x in another memory layout), every one equal to x."""
    flipped = x[..., ::-1].copy()
    read_only = x.copy()
    read_only.flags.writeable = False
    return [("Fortran order", np.asfortranarray(x)), ("transposed view", np.ascontiguousarray(x.T).T),
            ("negative strides", flipped[..., ::-1]), ("every other row", np.repeat(x, 2, axis=0)[::2]),
            ("strided last axis", np.stack([x, x], axis=-1)[..., 0]), ("read-only", read_only)]


@pytest.mark.parametrize("name", sorted(CASES))
def test_any_memory_layout_gives_the_contiguous_result(name):
    """Equal to rounding, not bitwise: BLAS may sum in another order for another layout (SharedExpert, SoftMoE,
    HierarchicalMoE differ in the last bits). np.broadcast_to's read-only, zero-stride view gives the result of
    the same values made contiguous."""
    x, kw = inputs(name, "float64")
    _, y, dx = run(name, "float64", x=x)
    tol = dict(rtol=1e-12, atol=1e-12)
    for label, other in layouts(x) + [("broadcast", None)]:
        if label == "broadcast":
            other = np.broadcast_to(x[:1], x.shape)
            _, y, dx = run(name, "float64", x=np.ascontiguousarray(other))
        model, y2, dx2 = run(name, "float64", x=other)
        for k in y:
            np.testing.assert_allclose(y2[k], y[k], **tol, err_msg=f"{name}, {label}: {k}")
        for k in dx:
            np.testing.assert_allclose(dx2[k], dx[k], **tol, err_msg=f"{name}, {label}: {k}")


# ----- 3. the caller's arrays -------------------------------------------------------------------------------


def read_only(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_backward_never_write_the_callers_arrays(name):
    """x, dy, mask, keys, seq_lengths all read-only: a layer that wrote one would raise here."""
    x, kw = inputs(name, "float32")
    kw = {k: read_only(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
    model = CASES[name][0]("float32")
    y = model.forward(read_only(x), **kw)
    dy = output_grad(y)
    backward(model, x, y, {k: read_only(g) for k, g in dy.items()} if isinstance(dy, dict) else read_only(dy))


@pytest.mark.parametrize("name", sorted(CASES))
def test_returned_arrays_survive_the_next_forward_and_backward(name):
    """A user who keeps y, dx or a grads entry keeps its values: no layer returns a buffer it reuses."""
    model = CASES[name][0]("float32")
    x, kw = inputs(name, "float32")
    y = model.forward(x, **kw)
    kept_y = {k: (a, a.copy()) for k, a in arrays(y)}
    dx = backward(model, x, y, output_grad(y))
    kept_dx = {k: (a, a.copy()) for k, a in arrays(dx, "dx")}
    kept_grads = {k: (g, g.copy()) for k, g in model.named_grads()}
    x2, _ = inputs(name, "float32", seed=1)
    y2 = model.forward(x2, **kw)
    backward(model, x2, y2, output_grad(y2, seed=8))
    for what, kept in [("y", kept_y), ("dx", kept_dx), ("grads", kept_grads)]:
        changed = [k for k, (a, copy) in kept.items() if not np.array_equal(a, copy)]
        assert not changed, f"{name}: the second call overwrote the first's {what}: {changed}"


def test_estimators_losses_and_optimisers_never_write_their_arguments(rng):
    from numpy_moe.estimators import HMEClassifier, LocalExpertsRegressor, MoEClassifier
    X, labels = read_only(rng.standard_normal((30, 4))), read_only(np.arange(30) % 3)
    for est, y in [(MoEClassifier(epochs=2, top_k=2, random_state=0), labels),
                   (LocalExpertsRegressor(epochs=2, optimizer="ftrl", random_state=0), read_only(X[:, 0] - X[:, 1])),
                   (HMEClassifier(tree=[2], max_iter=3, random_state=0), labels)]:
        est.fit(X, y).predict(X)
        est.score(X, y)
    logits, target = read_only(rng.standard_normal((6, 3))), read_only(rng.standard_normal((6, 3)))
    for f, args in [(F.cross_entropy, (logits, labels[:6])), (F.cross_entropy_backward, (logits, labels[:6])),
                    (F.mse, (logits, target)), (F.mse_backward, (logits, target)),
                    (F.token_cross_entropy, (logits.reshape(2, 3, 3), labels[:6].reshape(2, 3))),
                    (F.token_cross_entropy_backward, (logits.reshape(2, 3, 3), labels[:6].reshape(2, 3)))]:
        f(*args)
    for opt in (optim.SGD(0.1, momentum=0.9), optim.Adam(0.1), optim.FTRL(0.5, l1=0.01, l2=0.1)):
        model = MoE(4, 3, 3, hidden=5, top_k=2, seed=0)
        for _ in range(2):
            model.backward(np.ones_like(model.forward(X[:8])))
            for m in model.modules():
                m.grads = {k: read_only(g) for k, g in m.grads.items()}
            opt.step(model)  # the momentum velocity, Adam's moments, FTRL's z and n are its own arrays
        assert not any(np.shares_memory(a, g) for attr in ("velocity", "m", "v", "z", "n")
                       for a in getattr(opt, attr, {}).values() for _, g in model.named_grads())


def test_the_gradient_check_takes_read_only_and_strided_inputs_and_restores_what_it_perturbs(rng):
    from numpy_moe.gradcheck import check_module, numerical_gradient
    x = rng.standard_normal((4, 5))
    for other in (read_only(x), np.asfortranarray(x), np.repeat(x, 2, axis=0)[::2]):
        assert max(check_module(Linear(5, 3, seed=0), other).values()) < 1e-7
        np.testing.assert_array_equal(other, x)
    with pytest.raises(ValueError, match=r"x is read-only; it is perturbed in place: pass a writeable copy"):
        numerical_gradient(lambda z: float(z.sum()), read_only(x))
    calls, before = [], x.copy()

    def fails_on_the_third_call(z):
        calls.append(1)
        if len(calls) == 3:
            raise AssertionError("a finite-difference step changed the routing")
        return float(z.sum())
    with pytest.raises(AssertionError, match="changed the routing"):
        numerical_gradient(fails_on_the_third_call, x)
    np.testing.assert_array_equal(x, before)  # the coordinate being perturbed is put back


def test_public_readouts_of_a_float32_model_are_float32_for_float64_input(rng):
    x = rng.standard_normal((6, 4))
    assert MMoE(4, n_experts=3, expert_hidden=5, seed=0, dtype="float32").gate(x).dtype == np.float32
    local = LocalExperts(4, 3, 2, seed=0, dtype="float32")
    assert {local.gate(x).dtype, local.posterior(x, np.arange(6) % 3).dtype} == {np.dtype(np.float32)}
    hme = HierarchicalMoE(4, 1, tree=[2, 2], seed=0, dtype="float32")
    assert hme.posterior(x, x[:, 0]).dtype == np.float32


def test_importing_float64_framework_weights_into_a_float32_block_refuses_what_overflows():
    from numpy_moe.presets import builders, weights
    config = {"hidden_size": 4, "intermediate_size": 6, "num_local_experts": 3, "num_experts_per_tok": 2}
    moe = builders.mixtral(config, seed=0, dtype="float32")
    state = {k: v.astype(np.float64) for k, v in weights.export_weights("mixtral", moe).items()}
    weights.import_weights("mixtral", builders.mixtral(config, seed=1, dtype="float32"), state)  # converted
    state["gate.weight"][0, 0] = 1e39  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"state_dict\['gate.weight'\] has values up to 1e\+39 that overflow the "
                                         r"block's dtype float32"):
        weights.import_weights("mixtral", builders.mixtral(config, seed=1, dtype="float32"), state)
