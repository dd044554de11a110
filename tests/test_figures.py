"""What the figures and their descriptions say is computed, not written by hand (issue 19, items 3 and 5)."""
import types
from pathlib import Path

import numpy as np

import numpy_moe.estimators as estimators
from experiments.local_experts import Run, panel_title
from numpy_moe.datasets import make_circles
from numpy_moe.moe import MoE

ROOT = Path(__file__).resolve().parent.parent


def test_a_region_panel_names_the_seed_and_the_experts_used():
    run = types.SimpleNamespace(accuracy=0.95, seed=3, used=5, k=8)
    assert panel_title("k=8", run) == "k=8: accuracy 0.950 (seed 3), 5 of 8 experts used"
    assert panel_title("k=8", run, lines=[1, 4]).endswith("\n2 of them draw a line in their own region")


def test_a_run_counts_the_experts_whose_gate_wins_a_test_point():
    """One epoch of 8 competitive experts: the count is the number of distinct argmax experts of the gate
    on the test set, recomputed here from the trained model."""
    data = make_circles(200, seed=0)
    run = Run(data, "competitive", 8, "FTRL", epochs=1, seed=0)
    winners = np.unique(run.gate(data[1]).argmax(axis=1))
    assert run.used == winners.size and 1 <= run.used <= 8
    assert panel_title("k=8", run).endswith(f"{winners.size} of 8 experts used")


def test_top_1_share_and_share_of_the_assignments_are_described_apart():
    """The estimators' expert_usage_ is a top-1 share of the samples; a sparse layer's samples_per_expert
    counts all K assignments of every sample: no text may call either "share of samples per expert"."""
    assert "top-1 share" in estimators.__doc__
    assert "N K" in MoE.diagnostics.__doc__ and "top-1 share" in MoE.diagnostics.__doc__
    assert "share of samples per expert" not in (ROOT / "README.md").read_text()


# The titles below state a result; they are computed from the runs, and say otherwise when a run disagrees
# (before, each was a fixed sentence that a rerun with other seeds or settings could contradict).

def test_the_tree_title_says_which_gate_comes_closer_from_the_gap():
    from experiments.em import tree_title

    assert "the two-level HME comes closer" in tree_title(1.384, 0.043) and "by 0.043" in tree_title(1.384, 0.043)
    worse = tree_title(1.384, -0.02)
    assert "HME comes closer" not in worse and "flat gate comes as close or closer" in worse and "-0.020" in worse


def test_sparse_mlps_title_calls_every_expert_busy_only_when_no_expert_is_idle_in_any_seed():
    from experiments.sparse_mlp import busy_claim

    busy = {"usage": np.array([[[5, 6, 7, 8], [3, 3, 3, 3]]])}  # (epochs, layers, E)
    idle = {"usage": np.array([[[5, 6, 7, 8], [3, 0, 3, 3]]])}
    assert busy_claim([busy, busy]) == "every expert of every MoE layer is busy"
    assert busy_claim([busy, idle]) == "some MoE layer leaves an expert without rows in 1 of 2 seeds"


def _sweep(accuracy, maxvio):
    """A balance sweep of both losses with the given mean accuracy and MaxVio per weight (one seed)."""
    from experiments.balance import NOISY_IL, SWITCH, WEIGHTS

    sweep = {loss: {w: f"{loss}, {w}" for w in WEIGHTS} for loss in (NOISY_IL, SWITCH)}
    stats = {sweep[loss][w]: dict(accuracy=np.array([a]), maxvio=np.array([m]))
             for loss in sweep for w, a, m in zip(WEIGHTS, accuracy[loss], maxvio[loss])}
    return sweep, stats


def test_the_balance_sweeps_title_is_computed_from_the_sweep():
    from experiments.balance import NOISY_IL, SWITCH, sweep_title

    # the committed figure's means: balanced 0.935-0.944, collapsed 0.916-0.925, so 1.0 to 2.8 points
    acc = {NOISY_IL: [0.916, 0.918, 0.935, 0.936], SWITCH: [0.923, 0.925, 0.944, 0.935]}
    mv = {NOISY_IL: [0.77, 0.82, 0.17, 0.08], SWITCH: [0.87, 0.86, 0.28, 0.44]}
    acc = {k: v[:1] + v[1:2] + [0.5] + v[2:] for k, v in acc.items()}  # w = 0.01 plays no part
    mv = {k: v[:1] + v[1:2] + [0.6] + v[2:] for k, v in mv.items()}
    title = sweep_title(*_sweep(acc, mv), seeds=range(5))
    assert "5 seeds" in title and "the noise alone (w = 0) does not balance the experts, a loss weight of 0.1 does;" \
        in title and "are 1-3 points more accurate than the collapsed ones" in title
    # a run where the collapsed models are the more accurate and the noise alone balances
    acc = {k: [0.95, 0.95, 0.5, 0.93, 0.94] for k in (NOISY_IL, SWITCH)}
    mv = {NOISY_IL: [0.3, 0.3, 0.3, 0.2, 0.1], SWITCH: [0.9, 0.9, 0.6, 0.7, 0.2]}
    title = sweep_title(*_sweep(acc, mv), seeds=range(5))
    assert "noise alone (w = 0) balances the experts, a loss weight of 0.1 does not;" in title
    assert "more accurate" not in title and "differ by -2.0 to -1.0 points" in title


def test_the_balance_shares_title_lists_the_idle_experts_when_the_runs_disagree_with_the_story():
    from experiments.balance import RUNS, shares_title

    def run(final, w=0.0):
        model = types.SimpleNamespace(named_parameters=lambda: [("w", np.full(2, w))])
        return (model, np.array([[0.25] * 4, final]), 0.9, None)

    story = [0.5, 0.5, 0.0, 0.0], [0.5, 0.5, 0.0, 0.0], [0.4, 0.3, 0.3, 0.0], [0.3, 0.2, 0.2, 0.3], [0.25] * 4
    results = {name: [run(np.array(f))] for name, f in zip(RUNS, story)}
    assert shares_title(results, [0]).startswith("Without a differentiable balance loss one expert gets no sample")
    results["(e) Switch loss"] = [run(np.array([0.5, 0.5, 0.0, 0.0]))]  # Switch leaves two experts idle
    results["(b) post-000 loss"] = [run(np.array(story[1]), w=1.0)]  # and (b) trained differently from (a)
    title = shares_title(results, [0])
    assert "keep all four busy" not in title and "(e) 2" in title and "(a) 2" in title
    assert "post 000's loss changes the training" in title


def test_the_routers_title_checks_each_sentence_against_the_table():
    from experiments.routers import ROUTERS, title

    def table(changes=()):
        row = dict(accuracy=0.95, balanced_accuracy=0.97, max_mean=1.0, dropped=0.0, ms_per_step=2.0)
        rows = {name: dict(row) for name in ROUTERS}
        rows["aux-free bias"]["accuracy"] = 0.975
        rows["top-k softmax"].update(dropped=0.29, max_mean=1.75)
        rows["BASE"]["ms_per_step"] = 17.0
        for (name, key), value in dict(changes).items():
            rows[name][key] = value
        return {name: {k: (v, 0.0) for k, v in r.items()} for name, r in rows.items()}

    story = title(table(), range(3))
    assert story == ("Eight routers, the same 8 experts, digits as 16 tokens, 3 seeds (mean ± std).\n"
                     "Balancing by a loss or by the aux-free bias is the most accurate; plain top-k drops the most;\n"
                     "expert choice, Soft MoE, BASE and the balanced hash are balanced in training by construction;\n"
                     "BASE and Sinkhorn lose accuracy by routing greedily in evaluation; BASE is the slowest")
    other = title(table({("Soft MoE", "accuracy"): 0.99, ("Sinkhorn", "dropped"): 0.4,
                           ("hash (balanced)", "max_mean"): 1.3, ("Sinkhorn", "balanced_accuracy"): 0.9,
                           ("hash (balanced)", "ms_per_step"): 30.0}), range(1))
    assert "Soft MoE is the most accurate; Sinkhorn drops the most" in other
    assert "hash (balanced) 1.30" in other and "by construction" not in other
    assert "-0.020 (BASE), +0.050 (Sinkhorn)" in other and other.endswith("hash (balanced) is the slowest")


def test_em_vs_gradients_title_is_computed_from_the_iterations_each_method_needed():
    from experiments.em import gradient_title

    rows = [("V", 0, 0.9, 0.8, 12, 0.01, None, None), ("circles", 0, -0.1, -0.2, 31, 0.05, None, None)]
    assert gradient_title(rows, 2000, 5) == ("EM reaches its maximum in tens of iterations; full-batch Adam is "
                                             "still short of it after 2000 steps (same model, same start; 5 seeds)")
    rows[1] = ("circles", 0, -0.1, -0.1, 140, 0.5, 900, 1.0)  # EM slow, Adam there in one run
    title = gradient_title(rows, 2000, 5)
    assert "within 140 iterations" in title and "Adam gets within 1e-3 of it in 1 of 2 runs" in title


def test_the_bands_title_says_who_separates_and_whose_loss_falls_faster_from_the_runs():
    from experiments.local_experts import bands_title

    def run(accuracy, test):
        return types.SimpleNamespace(accuracy=accuracy, history={"test": test})

    assert bands_title({"SGD": run(1.0, [1, 0.1, 0.01]), "FTRL": run(1.0, [1, 0.01, 0.001])}) == (
        "Bands, 2 competitive linear experts: both optimisers separate the classes; FTRL's log-loss falls faster")
    title = bands_title({"SGD": run(0.99, [1, 0.1, 0.01]), "FTRL": run(1.0, [1, 0.2, 0.001])})
    assert "both" not in title and "0.990 with SGD" in title and "lower in 1 of 2 epochs" in title


def test_wine_calls_the_models_on_a_par_only_when_their_means_are_within_one_wine_per_fold(tmp_path, monkeypatch):
    import experiments.wine as wine

    titles = []
    monkeypatch.setattr(wine, "savefig", lambda fig, args, name: titles.append(fig.axes[0].get_title()))
    close = {"a": (np.full((1, 5), 0.97), 0.1), "b": (np.full((1, 5), 0.98), 0.1)}
    wine.plot(close, types.SimpleNamespace(out=tmp_path))
    wine.plot({**close, "c": (np.full((1, 5), 0.90), 0.1)}, types.SimpleNamespace(out=tmp_path))
    assert titles[0].endswith("so the models are on a par")
    assert titles[1].endswith("so the models are not on a par (0.08 apart)")
    import matplotlib.pyplot as plt
    plt.close("all")


def test_the_aux_free_title_is_computed_from_the_runs():
    from experiments.aux_free import title

    def run(late, test_maxvio, accuracy, start=5.5):
        return [(np.array([start] + [late] * 5), test_maxvio, accuracy)]

    # the committed figure's means (training MaxVio of the last 5 epochs, test MaxVio, test accuracy)
    table = {"(a) no balancing": (4.98, 5.00, 0.966), "(b) aux loss 0.01": (2.67, 2.63, 0.950),
             "(b) aux loss 0.1": (0.79, 1.01, 0.959), "(b) aux loss 1": (0.48, 0.53, 0.946),
             "(c) bias u=0.001": (3.64, 3.57, 0.932), "(c) bias u=0.01": (0.69, 0.64, 0.958),
             "(c) bias u=0.03": (0.69, 0.60, 0.958)}
    results = {name: run(*row) for name, row in table.items()}
    assert title(results, 5) == (
        "16 experts, top-2, sigmoid router, digits, 5 seeds: the loss (alpha >= 0.1) and the bias (u >= 0.01)\n"
        "cut MaxVio from 5 to under 1; at equal balance the bias keeps more accuracy than the loss,\n"
        "but the unbalanced model is as accurate or more")
    results["(b) aux loss 0.1"] = run(1.2, 0.9, 0.970)  # balanced on the test set, more accurate, not under 1
    text = title(results, 5)
    assert "under 1" not in text and "to 1.20, 0.48, 0.69, 0.69" in text
    assert "the bias keeps no more accuracy than the loss" in text and "unbalanced model is less accurate" in text
