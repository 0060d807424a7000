"""How a hole moves a row's score on narrow tables: the share of rows flagged at
``contamination=0.1`` when one column is emptied, for each score kind.

The table model charges a row its log-likelihood per observed entry times the
number of columns, so that rows with and without holes share one scale. That
holds when the columns cost about the same nats; on a table of a few columns it
does not, and the default vote's KL and latent kNN terms measure how far a
hole moves the row's code, which on such tables is far in their units.
Tables (400 rows, fitted complete; data and ``random_state`` both seeded by
seed 0, 1, 2):

- ``number + 5-way``: a log-normal amount and a 5-way country (the serving
  example's shape);
- ``number + yes/no``: the amount and a yes/no text column;
- ``number + 2 categories``: the amount, the country and the yes/no column;
- ``3-way + 5-way``: two text columns;
- ``4 numbers + 5-way``: four standard normals and the country;
- ``wine + 3-way``: ``load_wine``'s 13 columns and its class as text.

Each row of the table: the shares flagged on the complete rows and on the
same rows with their first, or their last, column emptied (10% everywhere
would be one scale), mean and largest over the seeds, and the median KL of the
training rows' codes (how much a code holds).

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
SEEDS = (0, 1, 2)


def tables(seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3, 1, 400)
    country = rng.choice(list("ABCDE"), 400)
    answer = rng.choice(["yes", "no"], 400)
    size = rng.choice(list("abc"), 400)
    numbers = pd.DataFrame(rng.normal(size=(400, 4)), columns=[f"x{i}" for i in range(4)])
    wine = load_wine(as_frame=True).frame
    wine["target"] = wine["target"].map({0: "a", 1: "b", 2: "c"})
    return {"number + 5-way": pd.DataFrame({"amount": amount, "country": country}),
            "number + yes/no": pd.DataFrame({"amount": amount, "answer": answer}),
            "number + 2 categories": pd.DataFrame({"amount": amount, "country": country,
                                                   "answer": answer}),
            "3-way + 5-way": pd.DataFrame({"size": size, "country": country}),
            "4 numbers + 5-way": numbers.assign(country=country),
            "wine + 3-way": wine}


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
    for seed in SEEDS:
        for name, table in tables(seed).items():
            for kind in KINDS:
                det = VAEDetector(score_kind=kind, random_state=seed).fit(table)
                row = {"table": name, "score kind": kind, "seed": seed, **shares(det, table)}
                kl = det.set_params(score_kind="kl").score_samples(table)   # minus the KL
                rows.append({**row, "median training KL (nats)": float(-np.median(kl))})
    frame = pd.DataFrame(rows).drop(columns="seed")
    groups = frame.groupby(["table", "score kind"], sort=False)
    largest = groups[["first column missing", "last column missing"]].max()
    summary = groups.mean().join(largest.add_suffix(" (largest)"))
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    write_results("holes_narrow_tables", {"seeds": SEEDS, "rows": rows,
                                          "versions": versions("torch", "vaeanom")},
                  "# Share flagged at contamination=0.1, complete rows and rows with one "
                  f"column emptied (mean of seeds {', '.join(map(str, SEEDS))}, and the "
                  "largest)\n\n" + summary.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
