"""How a hole moves a row's score on narrow tables: the share of rows flagged at
``contamination=0.1`` when one column is emptied, for each score kind.

The table model charges a row its log-likelihood per observed entry times the
number of columns, so that rows with and without holes share one scale. That
holds when the columns cost about the same nats; on a table of a number and a
category it does not, and the default vote's KL and latent kNN terms, whose
training spread is tiny when the code holds almost nothing, multiply the
shift a hole gives the code. Tables (seed 0, 400 rows, fitted complete):

- ``number + category``: a log-normal amount and a 5-way country (the
  serving example's shape);
- ``4 numbers + category``: four standard normals and the country;
- ``wine + category``: ``load_wine``'s 13 columns and its class as text.

Each row of the table: the shares flagged on the complete rows and on the
same rows with one column emptied (10% everywhere would be one scale), and the
median KL of the training rows' codes (how much a code holds).

    python benchmarks/holes_narrow_tables.py
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.datasets import load_wine

from _common import versions, write_results
from vaeanom import VAEDetector

KINDS = ("auto", "elbo", "elbo_kl")


def tables() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    country = rng.choice(list("ABCDE"), 400)
    numbers = pd.DataFrame(rng.normal(size=(400, 4)), columns=[f"x{i}" for i in range(4)])
    wine = load_wine(as_frame=True).frame
    wine["target"] = wine["target"].map({0: "a", 1: "b", 2: "c"})
    return {"number + category": pd.DataFrame({"amount": rng.lognormal(3, 1, 400),
                                               "country": country}),
            "4 numbers + category": numbers.assign(country=country),
            "wine + category": wine}


def shares(detector, table: pd.DataFrame) -> dict[str, float]:
    """Share flagged: the complete rows, then the same rows with their first, or their
    last, column emptied."""
    first, last = table.columns[0], table.columns[-1]
    return {"complete": flagged(detector, table),
            "first column missing": flagged(detector, table.assign(**{first: np.nan})),
            "last column missing": flagged(detector, table.assign(**{last: None}))}


def flagged(detector, rows: pd.DataFrame) -> float:
    return float(np.mean(detector.predict(rows) == -1))


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for name, table in tables().items():
        for kind in KINDS:
            det = VAEDetector(score_kind=kind, random_state=0).fit(table)
            row = {"table": name, "score kind": kind, **shares(det, table)}
            kl = det.set_params(score_kind="kl").score_samples(table)   # minus the KL
            rows.append({**row, "median training KL (nats)": float(-np.median(kl))})
    frame = pd.DataFrame(rows).set_index(["table", "score kind"])
    print(frame.to_string(float_format=lambda v: f"{v:.3f}"))
    write_results("holes_narrow_tables", {"rows": rows, "versions": versions("torch", "vaeanom")},
                  "# Share flagged at contamination=0.1, complete rows and rows with one "
                  "column emptied (seed 0)\n\n" + frame.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
