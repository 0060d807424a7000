"""A candidate that was measured and not kept: a least unit, in nats, for the default
vote's -ELBO and KL terms. The default's ROC-AUC for each floor, on the 19 tables of
``anomaly_tabular.py`` and on housevotes and soybean read as raw text columns
(``tables_real_world.py``'s protocol).

The default vote ("elbo_kl_knn") sums -ELBO, the KL and the latent kNN distance,
each minus its median over the training rows and divided by its interquartile
range. Where the code holds almost nothing the KL's range is a few hundredths
of a nat (annthyroid, pima, thyroid, and narrow tables of independent columns),
and a floor on that unit keeps small KL shifts from outvoting the other terms.
The kNN distance gets no floor: it is not in nats, and on annthyroid its signal
lives at a range of 0.015.

Each (set, seed) is fitted once, at the defaults; every floor is then applied to
the fitted medians and ranges, which is what a fit under that floor would
compute (the floor changes only the units). Same protocols, seeds and selection
/ held-out halves as the two benchmarks (housevotes and soybean are in the
selection half).

    python benchmarks/vote_unit_floors.py --data-dir ../shared/data   # about 5 minutes
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from sklearn.model_selection import train_test_split

from _common import DEFAULT_DATA_DIR, versions, write_results
from anomaly_tabular import SEEDS
from tables_real_world import CATEGORICAL, read_raw_columns
from tabular_sets import ALL_SETS, table_sets
from vaeanom import VAEDetector

FLOORS = (0.0, 0.1, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0)


def fitted_terms(split, seed: int) -> dict:
    """The test rows' three vote terms and the training reference of a default fit."""
    X_train, X_test, y_test = split
    det = VAEDetector(random_state=seed).fit(X_train)
    return {"y": y_test, "reference": det.score_reference_.astype(np.float64),
            "elbo": det.set_params(score_kind="elbo").score_samples(X_test),
            "kl": -det.set_params(score_kind="kl").score_samples(X_test),
            "distance": -det.set_params(score_kind="latent_knn").score_samples(X_test)}


def vote(terms: dict, floor: float) -> np.ndarray:
    """The "elbo_kl_knn" score with the nats terms' units raised to ``floor``."""
    (m_elbo, u_elbo), (m_kl, u_kl), (m_knn, u_knn) = terms["reference"]
    return -((-terms["elbo"] - m_elbo) / max(u_elbo, floor)
             + (terms["kl"] - m_kl) / max(u_kl, floor)
             + (terms["distance"] - m_knn) / u_knn)


def floor_rows(name: str, half: str, seed: int, fits: list[dict]) -> list[dict]:
    """One row per floor: the set's ROC-AUC, the mean over its splits (digits: 10)."""
    rows = [{"dataset": name, "half": half, "seed": seed, "floor": floor,
             "roc_auc": float(np.mean([roc_auc_score(f["y"], -vote(f, floor)) for f in fits]))}
            for floor in FLOORS]
    print(f"{name:24s} seed {seed}  KL range {fits[0]['reference'][1, 1]:.3f} nats  ROC-AUC "
          f"at floor 0 / 1: {rows[0]['roc_auc']:.4f} / "
          f"{rows[FLOORS.index(1.0)]['roc_auc']:.4f}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for table in table_sets(args.data_dir, ALL_SETS):
        for seed in SEEDS:
            rows += floor_rows(table.name, table.half, seed,
                               [fitted_terms(split, seed) for split in table.splits(seed)])
    for name in CATEGORICAL:
        raw, y = read_raw_columns(args.data_dir / "tabular_uci" / f"{name}.csv")
        for seed in SEEDS:
            X_train, X_test, _, y_test = train_test_split(raw, y, test_size=0.3, stratify=y,
                                                          random_state=seed)
            rows += floor_rows(f"{name} (raw text)", "selection", seed,
                               [fitted_terms((X_train, X_test, y_test), seed)])
    frame = pd.DataFrame(rows)
    per_set = frame.groupby(["floor", "half", "dataset"]).roc_auc.mean()
    nineteen = per_set[~per_set.index.get_level_values("dataset").str.endswith("(raw text)")]
    table = nineteen.groupby(["floor", "half"]).mean().unstack("half")[["selection", "held-out"]]
    table["all 19"] = nineteen.groupby("floor").mean()
    for name in CATEGORICAL:
        table[f"{name} (raw text)"] = per_set.xs(f"{name} (raw text)", level="dataset").droplevel(
            "half")
    sets = per_set.droplevel("half").unstack("floor")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    write_results("vote_unit_floors",
                  {"floors": FLOORS, "seeds": SEEDS, "rows": rows,
                   "versions": versions("torch", "vaeanom")},
                  "# The default's ROC-AUC if its nats terms had a least unit "
                  f"(seeds {', '.join(map(str, SEEDS))}; not kept)\n\n"
                  + table.to_markdown(floatfmt=".4f") + "\n\n## Per set\n\n"
                  + sets.to_markdown(floatfmt=".4f"))


if __name__ == "__main__":
    main()
