"""The numbers docs/MATH.md quotes that depend on a random draw, computed over seeds with their setup.

Run from the repository root: ``python docs/math_numbers.py`` (about 5 s). Each study draws its problems
from ``numpy.random.default_rng(seed)`` for seeds 0-9 and prints, per seed and over the seeds, the
statistic MATH.md quotes; tests/test_docs.py recomputes them (fewer draws) and checks that MATH.md quotes
what this file prints.

1. ``load_threshold_error``: MATH.md §3.4. The Shazeer load loss's gradient with respect to the clean
   logits and the noise scale, with the threshold terms dropped (the threshold treated as a constant),
   against central differences of the loss. Setup of tests/test_balance.py: N = 8 samples, E = 4 experts,
   K = 2, clean logits 2 N(0, 1), noise scales U(0.5, 1.5), noise draw N(0, 1), weight 0.7, top-k
   softmax_then_topk; one problem per seed.
2. ``post003_gate_rule_error``: MATH.md §9, erratum 003-4. Post 003's cooperative gate rule (with the sum
   over outputs restored, ``LocalExperts.seed_cooperative_update``) against the true gradient
   (``update_directions``, itself equal to central differences to 1e-9, tests/test_classic.py):
   one sample per draw, D = 2 features, E = 3 experts, C = 3 classes, weights and input N(0, 1), target
   class uniform; 200 draws per seed.
3. ``walkthrough_gate_rule_error``: the same comparison in the set-up of
   experiments/walkthrough_local_experts.py (D = 2, C = 3, E = 4, a batch of 5 samples with targets
   (0, 1, 2, 1, 0), V, M and x drawn N(0, 1) in that order); 20 draws per seed.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's numpy_moe

from numpy_moe import balance as B  # noqa: E402
from numpy_moe.classic import LocalExperts  # noqa: E402
from numpy_moe.gating import route_topk, routing_backward  # noqa: E402
from numpy_moe.gradcheck import numerical_gradient, rel_error  # noqa: E402

SEEDS = range(10)


def load_threshold_error(seed):
    """(rel. error of dclean, of dsigma): the Shazeer load gradient without its threshold terms against
    central differences."""
    rng = np.random.default_rng(seed)
    N, E, K = 8, 4, 2
    clean = 2 * rng.standard_normal((N, E))
    sigma, eps = rng.uniform(0.5, 1.5, (N, E)), rng.standard_normal((N, E))
    loss = B.ShazeerLoad(0.7)

    def route():
        return route_topk(clean + eps * sigma, K, "softmax_then_topk", clean, sigma, eps)

    r0 = route()
    loss(r0)
    grad = loss.backward()
    del grad["logits"]  # the threshold terms: the threshold is a noisy logit of another expert
    dclean, dsigma = routing_backward(r0, grad)

    def f(_):
        r = route()
        if not np.array_equal(r.expert, r0.expert):
            raise RuntimeError("a finite-difference step changed the routing")
        return loss(r)

    return rel_error(dclean, numerical_gradient(f, clean)), rel_error(dsigma, numerical_gradient(f, sigma))


def _gate_rule_errors(rng, draws, D, C, E, n_samples, targets=None):
    errors = []
    for _ in range(draws):
        model = LocalExperts(D, C, E, mode="cooperative", seed=0)
        model.params["V"][...] = rng.standard_normal(model.params["V"].shape)
        model.params["M"][...] = rng.standard_normal(model.params["M"].shape)
        x = rng.standard_normal((n_samples, D))
        r = rng.integers(0, C, n_samples) if targets is None else targets
        post = model.seed_cooperative_update(x, r)["M"]
        errors.append(rel_error(post, model.update_directions(x, r)["M"]))
    return np.array(errors)


def post003_gate_rule_error(seed, draws=200):
    """Relative errors of post 003's cooperative gate rule, one per draw (see the module docstring)."""
    return _gate_rule_errors(np.random.default_rng(seed), draws, D=2, C=3, E=3, n_samples=1)


def walkthrough_gate_rule_error(seed, draws=20):
    """The same in the walk-through's set-up: 4 experts, 3 classes, 5 samples, targets (0, 1, 2, 1, 0)."""
    return _gate_rule_errors(np.random.default_rng(seed), draws, D=2, C=3, E=4, n_samples=5,
                             targets=np.array([0, 1, 2, 1, 0]))


def quoted(seeds=SEEDS):
    """The fragments of text MATH.md quotes, computed afresh: {where: text}."""
    seeds = list(seeds)
    load = np.array([load_threshold_error(s) for s in seeds])  # (seeds, 2)
    post = [post003_gate_rule_error(s) for s in seeds]
    post_medians, pooled = [np.median(e) for e in post], np.concatenate(post)
    walk = [walkthrough_gate_rule_error(s) for s in seeds]
    walk_medians, walk_pooled = [np.median(e) for e in walk], np.concatenate(walk)

    def span(v):
        return f"{np.min(v):.2f} to {np.max(v):.2f} (mean {np.mean(v):.2f})"

    return {
        "§3.4": f"{span(load[:, 0])} in `dc` and {span(load[:, 1])} in `ds`",
        "§8": f"{np.min(post_medians):.2f} to {np.max(post_medians):.2f} in median over ten seeds; "
              f"the Shazeer "
              f"load gradient without its threshold terms by {load.min():.1f} to {load.max():.1f}",
        "§9 003-4 post": f"per seed is {span(post_medians)}, and 80% of the {len(pooled)} draws lie between "
                         f"{np.percentile(pooled, 10):.2f} and {np.percentile(pooled, 90):.2f}",
        "§9 003-4 walk-through": f"the per-seed medians are {span(walk_medians)} and single draws range from "
                                 f"{walk_pooled.min():.2f} to {walk_pooled.max():.2f}",
    }


def spread(values):
    """'mean X, min-max A-B' of per-seed values."""
    values = np.asarray(values)
    return f"mean {values.mean():.2f}, min-max {values.min():.2f}-{values.max():.2f}"


def main():
    seeds = list(SEEDS)
    print(f"seeds {seeds[0]}-{seeds[-1]}\n")
    load = np.array([load_threshold_error(s) for s in seeds])  # (seeds, 2)
    print("1. Shazeer load gradient without its threshold terms, relative error against finite differences")
    print("   (MATH.md §3.4; N = 8, E = 4, K = 2, one problem per seed)")
    print("   per seed, dclean:", " ".join(f"{v:.2f}" for v in load[:, 0]))
    print("   per seed, dsigma:", " ".join(f"{v:.2f}" for v in load[:, 1]))
    print(f"   dclean: {spread(load[:, 0])};  dsigma: {spread(load[:, 1])}\n")

    gate_rule_table("2. post 003's cooperative gate rule against the gradient (MATH.md §9, 003-4; one sample, D = 2,",
                    "E = C = 3, N(0, 1) weights and input, ", [post003_gate_rule_error(s) for s in seeds], False)
    print()
    gate_rule_table("3. the same in experiments/walkthrough_local_experts.py's set-up (E = 4, C = 3, 5 samples,",
                    "", [walkthrough_gate_rule_error(s) for s in seeds], True)


def gate_rule_table(title, setup, errors, with_range):
    """Print the per-seed medians of a gate rule's relative errors and the spread over all draws."""
    medians = [np.median(e) for e in errors]
    pooled = np.concatenate(errors)
    print(title)
    print(f"   {setup}{len(errors[0])} draws per seed)")
    print("   median per seed:", " ".join(f"{m:.2f}" for m in medians))
    extent = f"min-max {pooled.min():.2f}-{pooled.max():.2f}, " if with_range else ""
    print(f"   median per seed: {spread(medians)};  all {len(pooled)} draws: {extent}10th-90th percentile "
          f"{np.percentile(pooled, 10):.2f}-{np.percentile(pooled, 90):.2f}")

if __name__ == "__main__":
    main()
