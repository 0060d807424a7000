"""How the table model's training mask was chosen: five rules, same run.

In each training step the table model hides some entries from its encoder
(the likelihood still scores them), so that it learns to predict an entry from
the others (``VAEDetector._hide_entries``). This script refits vaeanom's default
under each rule below and scores:

- the 16 numeric sets of ``tables_real_world.py`` with 10% of the entries
  removed at random (the same seeded holes as that script), seeds 0-2;
- housevotes and soybean on their raw columns (no holes added), seeds 0-2.

It reports the mean ROC-AUC on the numeric sets of the selection half (the
rule is chosen there) and on all 16, and each categorical set. Only vaeanom
runs: the peers do not depend on the rule (``tables_real_world.py`` has them).

    python benchmarks/table_mask_rules.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from _common import DEFAULT_DATA_DIR, versions, write_results
from tables_real_world import CATEGORICAL, NUMERIC, holed_split, read_raw_columns
from tabular_sets import SELECTION, adbench_split, table_sets
from vaeanom import VAEDetector

HOLES = 0.1
#: the default rule, one random entry per row (kept before the rules below replace it)
ONE_PER_ROW = VAEDetector._hide_entries


def _share(fraction: float, rows: float = 1.0):
    """Each entry with probability ``fraction``, in a random ``rows`` share of the rows."""
    def hide(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        entries = torch.rand(batch.shape, generator=generator) < fraction
        if rows < 1.0:
            entries &= torch.rand((batch.shape[0], 1), generator=generator) < rows
        return batch.masked_fill(entries.to(batch.device), float("nan"))
    return hide


RULES = {"one entry per row (default)": ONE_PER_ROW,
         "20% of the entries": _share(0.2),
         "20% of the entries in half the rows": _share(0.2, 0.5),
         "10% of the entries": _share(0.1),
         "none": _share(0.0)}


def _auc(X_train, X_test, y_test, seed: int) -> float:
    detector = VAEDetector(random_state=seed).fit(X_train)
    return roc_auc_score(y_test, -detector.score_samples(X_test))


def rule_rows(rule: str, data_dir: Path, seeds) -> list[dict]:
    rows = []
    for table in table_sets(data_dir, NUMERIC):
        for seed in seeds:
            rows.append({"rule": rule, "dataset": table.name, "seed": seed,
                         "roc_auc": _auc(*holed_split(table, seed, HOLES), seed)})
    for name in CATEGORICAL:
        raw, y = read_raw_columns(data_dir / "tabular_uci" / f"{name}.csv")
        for seed in seeds:
            rows.append({"rule": rule, "dataset": name, "seed": seed,
                         "roc_auc": _auc(*adbench_split(raw, y, seed)[0], seed)})
    return rows


def summarise(frame: pd.DataFrame) -> tuple[dict, str]:
    per_set = frame.pivot_table(index="rule", columns="dataset", values="roc_auc",
                                aggfunc="mean").reindex(list(RULES))
    numeric = per_set[list(NUMERIC)]
    selected = [name for name in NUMERIC if name in SELECTION]
    table = pd.DataFrame({f"{len(selected)} numeric selection sets, 10% holes":
                          numeric[selected].mean(axis=1),
                          f"all {len(NUMERIC)} numeric sets, 10% holes": numeric.mean(axis=1),
                          **{name: per_set[name] for name in CATEGORICAL}})
    seeds = sorted(int(seed) for seed in frame.seed.unique())
    markdown = "\n".join([
        f"# The table model's training mask: mean ROC-AUC per rule (seeds {seeds})", "",
        table.to_markdown(floatfmt=".4f"), "",
        "## Per set", "", per_set.T.to_markdown(floatfmt=".4f"), ""])
    return table.to_dict(orient="index"), markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    started, rows = time.time(), []
    try:
        for rule, hide in RULES.items():
            VAEDetector._hide_entries = staticmethod(hide)
            rows += rule_rows(rule, args.data_dir, args.seeds)
            print(f"{rule}: {time.time() - started:.0f} s", flush=True)
    finally:
        VAEDetector._hide_entries = staticmethod(ONE_PER_ROW)
    summary, markdown = summarise(pd.DataFrame(rows))
    markdown += f"\nRun time {time.time() - started:.0f} s, torch threads 1.\n"
    print("\n" + markdown)
    write_results("table_mask_rules", {"summary": summary, "rows": rows,
                                       "args": {k: str(v) for k, v in vars(args).items()},
                                       "versions": versions("vaeanom", "torch")}, markdown)


if __name__ == "__main__":
    main()
