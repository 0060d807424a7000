"""How many *new* normal rows ``contamination=0.1`` flags, next to the training rows it is set on.

``contamination`` is the share of the training rows flagged, as in scikit-learn
(whose estimator checks test exactly that). New rows from the same distribution
score less normal than the training rows did: the network was fitted to those,
and with the latent kNN score kinds each training row finds its own code among
its neighbours. This measures by how much, for each rows score kind and for
IsolationForest, on three tables (seeds 0-2, each its own fit):

- ``gaussian``: 300 training rows of a 6-D standard normal, 5000 new ones;
- ``breast_cancer``: the core protocol's 200 benign training rows, its 157
  held-out benign rows as the new ones;
- ``digits``: the demo protocol (digit 0, seed-th split), the held-out zeros.

Two ways to a share of new rows, for the vaeanom rows:

- ``threshold_folds=5``: ``offset_`` from out-of-fold scores of the training
  rows (five more fits; the scores do not change);
- the README's recipe: ``offset_`` set to the 10th percentile of the scores of
  half the new rows (a validation set), measured on the other half.

Where the table has anomalies (breast cancer: the malignant test rows; digits:
the other digits), the share of them flagged is given too, for the training
rows' threshold and for ``threshold_folds=5``: the price of the looser one.

    python benchmarks/threshold_new_rows.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import IsolationForest

from _common import versions, write_results
from vaeanom import VAEDetector
from vaeanom.datasets import breast_cancer_one_class, digits_one_class

CONTAMINATION = 0.1
FOLDS = 5
SEEDS = (0, 1, 2)
KINDS = ("auto", "elbo", "elbo_kl", "latent_knn")


def tables(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """(training rows, new normal rows, new anomalies or None) per table."""
    rng = np.random.default_rng(seed)
    cancer = breast_cancer_one_class(200, seed)
    digits = digits_one_class(0, seed)
    return {"gaussian": (rng.normal(size=(300, 6)), rng.normal(size=(5000, 6)), None),
            "breast_cancer": (cancer.X_train, cancer.X_test[cancer.y_test == 0],
                              cancer.X_test[cancer.y_test == 1]),
            "digits": (digits.X_train, digits.X_test[digits.y_test == 0],
                       digits.X_test[digits.y_test == 1])}


def share_flagged(detector, X) -> float:
    return float("nan") if X is None else float(np.mean(detector.predict(X) == -1))


def flagged(detector, X_train, X_new, X_anomalies) -> dict[str, float]:
    """Shares flagged by the fitted threshold: training rows, new rows, new anomalies."""
    return {"training rows": share_flagged(detector, X_train),
            "new rows": share_flagged(detector, X_new),
            "new anomalies": share_flagged(detector, X_anomalies)}


def cross_fitted(params: dict, X_train, X_new, X_anomalies) -> dict[str, float]:
    """The shares under ``threshold_folds=FOLDS`` (the same scores, another offset_)."""
    detector = VAEDetector(**params, threshold_folds=FOLDS).fit(X_train)
    return {f"training rows, threshold_folds={FOLDS}": share_flagged(detector, X_train),
            f"new rows, threshold_folds={FOLDS}": share_flagged(detector, X_new),
            f"new anomalies, threshold_folds={FOLDS}": share_flagged(detector, X_anomalies)}


def held_out_recipe(detector, X_new, seed: int) -> dict[str, float]:
    """The README's recipe: offset_ from half the new rows, the share on the other half."""
    order = np.random.default_rng(seed).permutation(len(X_new))
    valid, test = X_new[order[: len(X_new) // 2]], X_new[order[len(X_new) // 2:]]
    detector.offset_ = float(np.percentile(detector.score_samples(valid), 100 * CONTAMINATION))
    return {"new rows, threshold from held-out rows": share_flagged(detector, test)}


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for seed in SEEDS:
        for table, (X_train, X_new, X_anomalies) in tables(seed).items():
            for kind in KINDS:
                params = dict(score_kind=kind, contamination=CONTAMINATION, random_state=seed)
                det = VAEDetector(**params).fit(X_train)
                name = "vaeanom default (elbo_kl_knn)" if kind == "auto" else f"vaeanom {kind}"
                rows.append({"table": table, "seed": seed, "method": name,
                             **flagged(det, X_train, X_new, X_anomalies),
                             **cross_fitted(params, X_train, X_new, X_anomalies),
                             **held_out_recipe(det, X_new, seed)})
            forest = IsolationForest(contamination=CONTAMINATION, random_state=seed)
            rows.append({"table": table, "seed": seed, "method": "IsolationForest",
                         **flagged(forest.fit(X_train), X_train, X_new, X_anomalies)})
    frame = pd.DataFrame(rows)
    means = frame.drop(columns="seed").groupby(["table", "method"], sort=False).mean()
    print(means.to_string(float_format=lambda v: f"{v:.3f}"))
    write_results("threshold_new_rows", {"contamination": CONTAMINATION, "folds": FOLDS,
                                         "seeds": SEEDS, "rows": rows,
                                         "versions": versions("torch", "vaeanom")},
                  f"# Share flagged at contamination={CONTAMINATION} (mean of seeds "
                  f"{', '.join(map(str, SEEDS))})\n\n" + means.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
