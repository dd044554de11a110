"""Post 002 on wine: a dense MoE beside LogisticRegression, then 5-fold CV of five models via the estimators.

Part 1 reproduces post 002: standardised wine, 80/20 split with random_state 42, a dense MoE of 5 MLP
experts (hidden 10) trained with Adam. The post trains full-batch for 100 epochs at lr 1e-3; here
mini-batches of 16 at lr 1e-2 for 100 epochs (the same data passes, more steps), which converges in a
fraction of a second. The split is fixed; the MoE is trained with ten seeds (initial weights and batches),
beside LogisticRegression. Prints test precision, recall and F1 (macro), mean ± std and min-max over
the seeds.

Part 2 asks whether that single split was luck. Each model is a scikit-learn Pipeline (StandardScaler,
then the classifier, so the scaler is fitted on the training folds only) scored by 5-fold stratified
cross-validation on macro F1, repeated with five seeds (seed s shuffles the folds and seeds every
model: 25 fits per model): the dense MoE and a top-2 sparse MoE (both MoEClassifier, 5 MLP experts of
hidden 10), the competitive mixture of 4 local linear experts (LocalExpertsClassifier, post 003's
method), LogisticRegression and MLPClassifier. Prints mean ± std over the 25 folds, the range of the
five seeds' CV means and the fit time, and saves the score of every fold as plots/wine.png.
"""
import sys
from pathlib import Path

# Runs as `python -m experiments NAME`, as `python experiments/NAME.py` and cell by cell in a kernel started in
# the repository root or in experiments/ (which has no __file__): the root goes first on the import path.
_here = Path(globals().get("__file__", "kernel")).resolve().parent
sys.path.insert(0, str(_here.parent if (_here / "_common.py").is_file() else _here))

import time
import warnings

import numpy as np
from sklearn.datasets import load_wine
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import precision_recall_fscore_support
from sklearn.base import clone
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from experiments._common import Progress, parse_args, savefig
from numpy_moe.backend import to_numpy
from numpy_moe.estimators import LocalExpertsClassifier, MoEClassifier
from numpy_moe.moe import MoE
from numpy_moe.optim import Adam
from numpy_moe.train import fit, predict


def wine_split():
    """Standardised wine, 80/20 split with random_state 42: X_train, X_test, y_train, y_test."""
    X, y = load_wine(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


def train_dense_moe(X_train, y_train, epochs=100, seed=0, dtype="float64"):
    """The post-002 model trained with Adam; returns the fitted MoE."""
    model = MoE(X_train.shape[1], 3, n_experts=5, hidden=10, seed=seed, dtype=dtype)
    fit(model, X_train, y_train, optimizer=Adam(1e-2), epochs=epochs, batch_size=16, seed=seed)
    return model


def cv_models(quick, seed=0):
    """The five classifiers of the CV study (quick: a few epochs only, to exercise the code path)."""
    epochs = 5 if quick else 200
    moe = dict(n_experts=5, hidden=10, epochs=epochs, random_state=seed)
    return {
        "dense MoE": MoEClassifier(**moe),
        "top-2 sparse MoE": MoEClassifier(top_k=2, **moe),
        "competitive local experts": LocalExpertsClassifier(mode="competitive", epochs=epochs, random_state=seed),
        "LogisticRegression": LogisticRegression(max_iter=1000),
        "MLPClassifier": MLPClassifier(max_iter=20 if quick else 1000, random_state=seed),
    }


def cross_validated(quick, seeds=(0,), progress=None):
    """{model name: (macro F1 of every fold, (seeds, 5), mean fit seconds)}: 5-fold stratified CV (StandardScaler
    and the model in a Pipeline), the folds shuffled and the models seeded by each seed in turn."""
    X, y = load_wine(return_X_y=True)
    scores, seconds = {}, {}
    for seed in seeds:
        folds = list(StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y))
        for name, model in cv_models(quick, seed).items():
            row = []
            for k, (train, test) in enumerate(folds):
                pipe = make_pipeline(StandardScaler(), clone(model))
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)  # quick mode stops MLPClassifier early
                    pipe.fit(X[train], y[train])
                seconds.setdefault(name, []).append(time.perf_counter() - t0)
                row.append(f1_score(y[test], pipe.predict(X[test]), average="macro"))
                if progress is not None:
                    progress.step(f"seed {seed}, {name}, fold {k + 1}: macro F1 {row[-1]:.3f}")
            scores.setdefault(name, []).append(row)
    return {name: (np.array(scores[name]), float(np.mean(seconds[name]))) for name in scores}


def plot(results, args):
    import matplotlib.pyplot as plt

    names = list(results)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for i, name in enumerate(names):
        scores = results[name][0].ravel()
        ax.scatter(scores, np.full(len(scores), i) + np.linspace(-0.15, 0.15, len(scores)), color="0.6", s=12,
                   label="one fold" if i == 0 else None, zorder=2)
        ax.errorbar(scores.mean(), i, xerr=scores.std(), fmt="o", color="C3", capsize=4, zorder=3,
                    label=f"mean ± std over {len(scores)} folds" if i == 0 else None)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel("macro F1 on the held-out fold")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    means = [results[n][0].mean() for n in names]
    n_seeds = results[names[0]][0].shape[0]
    on_par = max(means) - min(means) < 0.03  # closer than one misclassified wine in a fold of 36
    ax.set_title(f"Wine, 5-fold CV x {n_seeds} seeds: every model averages {min(means):.2f}-{max(means):.2f} "
                 "macro F1;\none misclassified wine costs a fold of 36 about 0.03, so the models are "
                 + ("on a par" if on_par else f"not on a par ({max(means) - min(means):.2f} apart)"))
    ax.grid(axis="x", alpha=0.3)
    savefig(fig, args, "wine.png")


def main(argv=None):
    args = parse_args(argv, __doc__)
    split_seeds, cv_seeds = ([0, 1], [0]) if args.quick else (list(range(10)), [0, 1, 2, 3, 4])
    progress = Progress(len(split_seeds) + len(cv_seeds) * 5 * 5, what="wine")
    X_train, X_test, y_train, y_test = wine_split()
    rows = {}
    for seed in split_seeds:
        t0 = time.perf_counter()
        moe = train_dense_moe(X_train, y_train, epochs=10 if args.quick else 100, seed=seed)
        pred = to_numpy(predict(moe, X_test)).argmax(axis=1)
        rows.setdefault("dense MoE (5 MLP experts)", []).append(
            (*precision_recall_fscore_support(y_test, pred, average="macro", zero_division=0)[:3],
             time.perf_counter() - t0))
        progress.step(f"80/20 split, dense MoE seed {seed}: macro F1 {rows['dense MoE (5 MLP experts)'][-1][2]:.3f}")
    t0 = time.perf_counter()
    lr_pred = LogisticRegression(max_iter=1000).fit(X_train, y_train).predict(X_test)
    rows["LogisticRegression"] = [(*precision_recall_fscore_support(y_test, lr_pred, average="macro")[:3],
                                   time.perf_counter() - t0)]
    results = cross_validated(args.quick, cv_seeds, progress)
    progress.done()

    print(f"\nwine, 80/20 split (random_state 42), {len(y_test)} test samples; the MoE over seeds {split_seeds}")
    print(f"{'model':<28} {'precision':>15} {'recall':>15} {'F1 (mean ± std)':>15} {'F1 min-max':>12} {'fit s':>6}")
    for name, runs in rows.items():
        r = np.array(runs)
        print(f"{name:<28} " + " ".join(f"{r[:, j].mean():>6.3f} ± {r[:, j].std():.3f}" for j in range(3))
              + f" {r[:, 2].min():>5.3f}-{r[:, 2].max():.3f} {r[:, 3].mean():>6.2f}")
    f1 = np.array([run[2] for run in rows["dense MoE (5 MLP experts)"]])
    print(f"dense MoE: F1 1.000 in {int((f1 == 1).sum())} of {len(f1)} seeds")

    print(f"\nwine, 5-fold stratified CV x {len(cv_seeds)} seeds (seed s shuffles the folds and seeds the model), "
          "StandardScaler + model in a Pipeline")
    print(f"{'model':<28} {'macro F1 over all folds':>24} {'CV mean per seed, min-max':>26} {'fit s':>7}")
    for name, (scores, seconds) in results.items():
        per_seed = scores.mean(axis=1)
        print(f"{name:<28} {scores.mean():>15.4f} ± {scores.std():.4f} {per_seed.min():>17.4f}-{per_seed.max():.4f} "
              f"{seconds:>7.2f}")
    plot(results, args)
    return rows, results


if __name__ == "__main__":
    main()
