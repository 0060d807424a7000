"""Try a candidate rows default on the selection half of the tabular benchmark only.

Defaults are chosen with this script and reported with ``anomaly_tabular.py``.
A candidate is VAEDetector parameters (``--set``) plus module constants of
``vaeanom.estimators.vae`` (``--constant ROW_STEPS=1000``); every row score kind
is scored from the same fit. Results go to ``results/tabular_selection.jsonl``,
one line per candidate.

    python benchmarks/tabular_selection.py --data-dir ../shared/data --constant ROW_STEPS=1000
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import pandas as pd

from _common import DEFAULT_DATA_DIR, RESULTS
from anomaly_tabular import SEEDS, run_set
from tabular_sets import ALL_SETS, SELECTION, table_sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--constant", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--sets", nargs="+", default=list(SELECTION), choices=ALL_SETS,
                        help="default: the selection half. A held-out set here is a check of "
                             "a candidate already chosen, never a way to choose one")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="fit with random_state = seed + this (other members of an "
                             "ensemble, for the same splits)")
    parser.add_argument("--dump", type=Path, default=None, metavar="DIR",
                        help="also save each fit's test scores of every kind, the labels and "
                             "score_reference_ to DIR/<set>_<seed>_<split>.npz (for trying "
                             "combinations offline)")
    args = parser.parse_args()
    import vaeanom.estimators.vae as vae_module
    from vaeanom.cli import parse_params

    params = parse_params(args.params)
    constants = {k: ast.literal_eval(v) for k, v in (c.split("=", 1) for c in args.constant)}
    for name, value in constants.items():
        if not hasattr(vae_module, name):
            raise SystemExit(f"vaeanom.estimators.vae has no constant {name}")
        setattr(vae_module, name, value)
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = [row for table in table_sets(args.data_dir, args.sets) for seed in SEEDS
            for row in run_set(table, seed, "vaeanom", _seeded(params, seed, args.seed_offset),
                               _dumper(args.dump, table.name, seed) if args.dump else None)]
    auc = pd.DataFrame(rows).pivot_table(index="method", columns="dataset", values="roc_auc")
    auc["mean"] = auc.mean(axis=1)
    print(auc.to_string(float_format="%.4f"))
    record = {"params": params, "constants": constants, "sets": args.sets,
              "minutes": (time.perf_counter() - t0) / 60,
              "roc_auc": auc.to_dict(orient="index")}
    with (RESULTS / "tabular_selection.jsonl").open("a") as out:
        out.write(json.dumps(record) + "\n")


def _seeded(params: dict, seed: int, offset: int) -> dict:
    return {**params, "random_state": seed + offset} if offset else params


def _dumper(folder: Path, table_name: str, seed: int):
    """An ``on_fit`` hook that saves each fit's test scores, labels and reference to folder."""
    import numpy as np

    count = iter(range(1000))

    def on_fit(det, split, results):
        arrays = {name.split()[1]: scores for name, (scores, _, _) in results.items()}
        np.savez(folder / f"{table_name}_s{seed}_{next(count)}.npz", y=split[2],
                 reference=det.score_reference_, **arrays)
    return on_fit


if __name__ == "__main__":
    main()
