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

The last column is the README's recipe for a share of new rows: ``offset_`` set
to the 10th percentile of the scores of half the new rows (a validation set),
measured on the other half.

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
SEEDS = (0, 1, 2)
KINDS = ("auto", "elbo", "elbo_kl", "latent_knn")


def tables(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(training rows, new normal rows) per table."""
    rng = np.random.default_rng(seed)
    cancer = breast_cancer_one_class(200, seed)
    digits = digits_one_class(0, seed)
    return {"gaussian": (rng.normal(size=(300, 6)), rng.normal(size=(5000, 6))),
            "breast_cancer": (cancer.X_train, cancer.X_test[cancer.y_test == 0]),
            "digits": (digits.X_train, digits.X_test[digits.y_test == 0])}


def flagged(detector, X_train, X_new, seed: int) -> dict[str, float]:
    """Shares flagged: training rows, new rows, and new rows under a held-out threshold."""
    row = {"training rows": float(np.mean(detector.predict(X_train) == -1)),
           "new rows": float(np.mean(detector.predict(X_new) == -1))}
    if isinstance(detector, VAEDetector):
        order = np.random.default_rng(seed).permutation(len(X_new))
        valid, test = X_new[order[: len(X_new) // 2]], X_new[order[len(X_new) // 2:]]
        detector.offset_ = float(np.percentile(detector.score_samples(valid),
                                               100 * CONTAMINATION))
        row["new rows, threshold from held-out rows"] = float(np.mean(detector.predict(test)
                                                                      == -1))
    return row


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for seed in SEEDS:
        for table, (X_train, X_new) in tables(seed).items():
            for kind in KINDS:
                det = VAEDetector(score_kind=kind, contamination=CONTAMINATION,
                                  random_state=seed).fit(X_train)
                name = "vaeanom default (elbo_kl_knn)" if kind == "auto" else f"vaeanom {kind}"
                rows.append({"table": table, "seed": seed, "method": name,
                             **flagged(det, X_train, X_new, seed)})
            forest = IsolationForest(contamination=CONTAMINATION, random_state=seed)
            rows.append({"table": table, "seed": seed, "method": "IsolationForest",
                         **flagged(forest.fit(X_train), X_train, X_new, seed)})
    frame = pd.DataFrame(rows)
    means = frame.drop(columns="seed").groupby(["table", "method"], sort=False).mean()
    print(means.to_string(float_format=lambda v: f"{v:.3f}"))
    write_results("threshold_new_rows", {"contamination": CONTAMINATION, "seeds": SEEDS,
                                         "rows": rows, "versions": versions("torch", "vaeanom")},
                  f"# Share flagged at contamination={CONTAMINATION} (mean of seeds "
                  f"{', '.join(map(str, SEEDS))})\n\n" + means.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
