"""Conformance fixtures: what each framework's MoE block must compute, for anyone to test their own against.

``python -m numpy_moe.conformance export DIR`` writes one ``<preset>.npz`` per preset (the presets with a
weight name map: all but vmoe) and ``manifest.json``; ``python -m numpy_moe.conformance check DIR RESULTS``
compares the arrays in ``RESULTS/<preset>.npz`` with them and prints a table (exit status 1 on a failure,
2 with a message when DIR, RESULTS or a results file cannot be read).

A fixture holds, in float64, at non-uniform routing (the router weights scaled so that the softmax is far
from uniform, and a few tokens padding):

- ``input`` (B, S, D), ``mask`` (B, S) bool (False: padding, excluded from every balance statistic),
  ``projection`` R (B, S, D);
- ``weights/<name>``: the block's weights in the framework's own names and layout (transformers 5 fused
  ``gate_up_proj`` for the transformers presets);
- ``output`` (B, S, D); ``router_logits`` (B S, E); ``routing/experts`` (B S, K) best first,
  ``routing/weights`` (B S, K), ``routing/dropped`` (B S, K) bool (capacity);
- ``aux/<loss>``: each balance loss's weighted value (names, classes and weights in the manifest);
- for the presets whose loss is a FrameworkBalance, a second layer: ``layer2/router_logits`` (B S, E)
  and ``aux/two_layers``, the loss over both layers in the framework's convention (transformers:
  the layers' logits concatenated; the others: the average of the per-layer losses), padding excluded;
- ``grad/input`` and ``grad/<name>`` for every weight: the gradients of sum(output * R), the task part
  only (the balance losses are excluded, so a framework that adds them elsewhere still compares).

``check`` compares what a results file holds and skips the rest: routing experts as sets per token (a
framework may not sort its top-k), routing weights and drops matched by expert; floats by
max |a - b| / max |fixture| against the manifest's tolerance (1e-5: transformers computes its routers in
float32 even in a float64 model; numpy_moe itself agrees with transformers to about 1e-7, tools/verify_hf.py).
"""
import json
import zipfile
from pathlib import Path

import numpy as np  # the edge: fixtures are files of NumPy arrays

from .. import presets as P
from ..backend import get_array_module, to_numpy
from ..balance import FrameworkBalance, MultiLayer, select_samples
from ..gates import topk_indices
from ..io.archive import replace_together
from ..validation import check_positive_int, check_real

FORMAT = 1
TOLERANCE = {"output": 1e-5, "aux": 1e-5, "grad": 1e-5, "router_logits": 1e-5, "routing/weights": 1e-5}
B, S, D = 2, 8, 8
CONFIGS = {
    "mixtral": {"hidden_size": D, "intermediate_size": 6, "num_local_experts": 4, "num_experts_per_tok": 2},
    "qwen2_moe": {"hidden_size": D, "moe_intermediate_size": 6, "shared_expert_intermediate_size": 10,
                  "num_experts": 6, "num_experts_per_tok": 2, "norm_topk_prob": False},
    "qwen3_moe": {"hidden_size": D, "moe_intermediate_size": 6, "num_experts": 6, "num_experts_per_tok": 3,
                  "norm_topk_prob": True},
    "olmoe": {"hidden_size": D, "intermediate_size": 6, "num_experts": 8, "num_experts_per_tok": 2,
              "norm_topk_prob": False, "router_z_loss_coef": 0.001},
    "deepseek_v2": {"hidden_size": D, "moe_intermediate_size": 6, "n_routed_experts": 8, "num_experts_per_tok": 2,
                    "n_group": 4, "topk_group": 2, "topk_method": "group_limited_greedy", "n_shared_experts": 2,
                    "norm_topk_prob": False, "routed_scaling_factor": 1.5, "aux_loss_alpha": 0.001, "seq_aux": True},
    "deepseek_v3": {"hidden_size": D, "moe_intermediate_size": 6, "n_routed_experts": 8, "num_experts_per_tok": 2,
                    "n_group": 4, "topk_group": 2, "n_shared_experts": 1, "routed_scaling_factor": 2.5,
                    "aux_loss_alpha": 0.0001},
    "switch": {"d_model": D, "d_ff": 6, "num_experts": 4, "capacity_factor": 0.75, "router_aux_loss_coef": 0.001,
               "router_z_loss_coef": 0.001},
    "gshard": {"model_dim": D, "hidden": 6, "num_experts": 4, "capacity_factor": 1.0},
    "deepspeed_top1": {"model_dim": D, "hidden": 6, "num_experts": 4},
    "deepspeed_top2": {"model_dim": D, "hidden": 6, "num_experts": 4},
    "deepspeed_topk": {"model_dim": D, "hidden": 6, "num_experts": 6, "k": 3},
    "megablocks": {"hidden_size": D, "ffn_hidden_size": 6, "moe_num_experts": 4, "moe_top_k": 2, "mlp_type": "glu"},
    "gpt_oss": {"hidden_size": D, "intermediate_size": 6, "num_local_experts": 6, "num_experts_per_tok": 2,
                "router_aux_loss_coef": 0.001},
}
FUSED = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")
NOTES = {
    "switch": "capacity over all B S tokens in order (HF: per sequence; the input is one sequence here)",
    "gshard": "capacity: every first choice before any second choice, tokens in order; kept weights "
              "renormalised after dropping (fairseq's normalize_gate_prob_before_dropping=False)",
    "deepseek_v3": "gate.e_score_correction_bias is set (selection only); aux is the paper's sequence-wise loss",
}


def _shape(preset):
    return (1, B * S) if preset == "switch" else (B, S)


def make_fixture(preset, seed=0):
    """(arrays, manifest entry) of one preset's fixture."""
    if not isinstance(preset, str) or preset not in CONFIGS:  # a KeyError naming only the value before
        raise ValueError(f"preset={preset!r} must be one of {sorted(CONFIGS)}")
    cfg = CONFIGS[preset]
    rng = np.random.default_rng(seed)
    moe = P.build(preset, cfg, seed=seed)
    moe.gate.params["W"] *= 3.0  # a sharp, non-uniform softmax
    if preset == "deepseek_v3":
        moe.gate.buffers["bias"][...] = rng.normal(0, 0.05, moe.n_experts)
    moe.eval()
    b, s = _shape(preset)
    x = rng.standard_normal((b, s, D))
    mask = np.ones((b, s), bool)
    mask[-1, -3:] = False  # three padding tokens at the end of the last sequence
    R = rng.standard_normal((b, s, D))
    xf = x.reshape(-1, D)
    y = moe.forward(xf, mask=mask.reshape(-1), seq_lengths=[s] * b)
    r = moe.routing
    N, K = b * s, r.top_k
    arrays = {"input": x, "mask": mask, "projection": R, "output": y.reshape(b, s, D),
              "router_logits": to_numpy(r.logits).copy(), "routing/experts": to_numpy(r.expert).reshape(N, K),
              "routing/weights": to_numpy(r.weight).reshape(N, K), "routing/dropped": ~to_numpy(r.kept).reshape(N, K)}
    losses = []
    for i, loss in enumerate(moe.losses):
        name = f"{loss.name}" if sum(type(m) is type(loss) for m in moe.losses) == 1 else f"{loss.name}{i}"
        arrays["aux/" + name] = to_numpy(loss(moe.counted))
        losses.append({"name": name, "class": type(loss).__name__, "weight": loss.weight,
                       **({"convention": loss.convention} if hasattr(loss, "convention") else {})})
    fb = [loss for loss in moe.losses if isinstance(loss, FrameworkBalance)]
    if fb:
        # a second layer's router logits, where the first layer's routing is (the GPU under CuPy)
        logits2 = get_array_module(r.logits).asarray(3 * rng.standard_normal(r.logits.shape))
        idx2 = topk_indices(logits2, K)
        r2 = r._replace(expert=idx2.reshape(-1), logits=logits2, clean=logits2, probs=None, scores=None)
        mode = "concat" if fb[0].convention == "hf" else "mean"
        both = MultiLayer(FrameworkBalance(fb[0].weight, fb[0].convention), mode)(
            [moe.counted, select_samples(r2, get_array_module(logits2).asarray(mask.reshape(-1)))[0]])
        arrays.update({"layer2/router_logits": logits2, "aux/two_layers": both})
        losses.append({"name": "two_layers", "class": "MultiLayer", "mode": mode, "weight": fb[0].weight,
                       "convention": fb[0].convention})
    layout = "fused" if preset in FUSED else "per_expert"
    for k, v in P.to_state_dict(preset, moe, layout=layout).items():
        arrays["weights/" + k] = v
    weights = [loss.weight for loss in moe.losses]
    for loss in moe.losses:
        loss.weight = 0.0  # task gradients only
    moe.forward(xf, mask=mask.reshape(-1), seq_lengths=[s] * b)
    arrays["grad/input"] = moe.backward(R.reshape(-1, D)).reshape(b, s, D)
    for loss, w in zip(moe.losses, weights):
        loss.weight = w
    grads = dict(moe.named_grads())
    for k, p in moe.named_parameters():
        p[...] = grads[k]
    for k, v in P.to_state_dict(preset, moe, layout=layout).items():
        if "e_score_correction_bias" not in k:  # a buffer: no gradient
            arrays["grad/" + k] = v
    arrays = {k: to_numpy(v) for k, v in arrays.items()}  # a fixture file holds NumPy arrays, whatever the backend
    entry = {"file": f"{preset}.npz", "config": cfg, "input_shape": [b, s, D], "top_k": int(K),
             "losses": losses, "weight_layout": layout, "note": NOTES.get(preset, "")}
    return arrays, entry


def export(directory, presets=None, seed=0):
    """Write ``<preset>.npz`` for each preset and ``manifest.json`` into ``directory``; returns its path.

    Every preset and the seed (an integer >= 0) are checked, and every fixture computed, before anything
    is written; every file is then written beside its target before any target is replaced (the manifest
    last). A bad argument leaves ``directory`` as it was (not even created), and a failed write (a full
    disk) leaves every earlier file there, so an earlier export keeps its files and manifest in agreement.
    """
    seed = check_positive_int(seed, "seed", minimum=0)
    for preset in presets or CONFIGS:
        if preset not in CONFIGS:
            raise ValueError(f"preset={preset!r} has no fixture; expected one of {tuple(CONFIGS)}")
    fixtures = {preset: make_fixture(preset, seed) for preset in presets or CONFIGS}
    manifest = {"format": FORMAT, "dtype": "float64", "seed": seed, "tolerance": TOLERANCE,
                "gradient_of": "sum(output * projection), balance losses excluded",
                "presets": {preset: entry for preset, (_, entry) in fixtures.items()}}
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=1).encode("utf-8")
    replace_together([(out / entry["file"], lambda f, a=a: np.savez(f, **a)) for a, entry in fixtures.values()]
                     + [(out / "manifest.json", lambda f: f.write(text))])
    return out


def load(directory):
    """(manifest, {preset: {key: array}}) of an exported directory.

    Raises ValueError naming the file when the manifest or a fixture is missing or cannot be read.
    """
    d = Path(directory)
    try:
        manifest = json.loads((d / "manifest.json").read_text())
        entries = {preset: entry["file"] for preset, entry in manifest["presets"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{d / 'manifest.json'} is not the manifest of an export ({type(err).__name__}: {err}); "
                         f"write one with python -m numpy_moe.conformance export {d}") from err
    return manifest, {preset: _read_npz(d / name) for preset, name in entries.items()}


def _read_npz(path):
    """{key: array} of an .npz file of plain arrays; ValueError naming it when it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return dict(npz)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} cannot be read as an .npz file of arrays ({type(err).__name__}: {err})") from err


def _by_expert(experts, values):
    order = np.argsort(experts, axis=1, kind="stable")
    return np.take_along_axis(values, order, axis=1)


def compare(fixture, results, tolerance=TOLERANCE):
    """Rows (key, error, tolerance, ok) for every fixture key that ``results`` also holds.

    ``tolerance`` maps keys of TOLERANCE (a fixture key or its part before "/") to finite relative errors >= 0.
    """
    if not isinstance(results, dict):  # a string was searched for keys as a substring
        raise TypeError(f"results must be a dict name -> array; got {type(results).__name__}")
    if not isinstance(tolerance, dict) or set(tolerance) - set(TOLERANCE):  # a misspelt key was ignored
        raise ValueError(f"tolerance={tolerance!r:.200} must be a dict with keys among {sorted(TOLERANCE)}")
    for key, value in tolerance.items():  # a negative or NaN tolerance failed every comparison, naming nothing
        check_real(value, f"tolerance[{key!r}]", 0)
    rows = []
    for key, want in fixture.items():
        if key not in results or key.startswith(("weights/", "layer2/")) or key in ("input", "mask", "projection"):
            continue
        got = np.asarray(results[key])
        if got.shape != want.shape or got.dtype.kind not in "biuf":  # strings, complex: no comparison
            rows.append((key, float("inf"), 0.0, False))
            continue
        if key == "routing/experts":
            bad = int((np.sort(got, axis=1) != np.sort(want, axis=1)).any(axis=1).sum())
            rows.append((key, float(bad), 0.0, bad == 0))  # tokens whose expert set differs
            continue
        if key in ("routing/weights", "routing/dropped"):
            experts = np.asarray(results.get("routing/experts", fixture["routing/experts"]))
            if experts.shape != got.shape or experts.dtype.kind not in "iu":  # no expert order to match by
                rows.append((key, float("inf"), 0.0, False))
                continue
            got, want = _by_expert(experts, got), _by_expert(fixture["routing/experts"], want)
        if want.dtype == bool:
            bad = int((got != want).sum())
            rows.append((key, float(bad), 0.0, bad == 0))
            continue
        tol = tolerance.get(key, tolerance.get(key.split("/")[0], 1e-5))
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-300))
        rows.append((key, err, tol, bool(err <= tol)))
    return rows


def check(directory, results_dir, out=print):
    """Compare ``results_dir/<preset>.npz`` with the fixtures in ``directory``; True when all pass.

    Raises ValueError naming the file or directory when the fixtures cannot be read, ``results_dir`` is
    not a directory, or a results file is not an .npz of arrays.
    """
    manifest, fixtures = load(directory)
    if not Path(results_dir).is_dir():
        raise ValueError(f"results directory {results_dir} does not exist (or is not a directory)")
    ok_all, seen = True, 0
    out(f"{'preset':<16} {'array':<46} {'error':>9} {'tolerance':>9}  result")
    for preset, fixture in fixtures.items():
        path = Path(results_dir) / f"{preset}.npz"
        if not path.exists():
            continue
        results = _read_npz(path)
        rows = compare(fixture, results, manifest["tolerance"])
        seen += 1
        for key, err, tol, ok in rows:
            ok_all &= ok
            out(f"{preset:<16} {key:<46} {err:9.2e} {tol:9.1e}  {'ok' if ok else 'FAIL'}")
        if not rows:
            out(f"{preset:<16} (no array of the fixture in {path.name})")
    if not seen:
        out(f"no <preset>.npz results in {results_dir} (expected names like {next(iter(fixtures))}.npz)")
        return False
    return ok_all
