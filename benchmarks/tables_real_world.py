"""Real-world tables: categorical columns taken natively, and missing values, same run.

**Categorical.** housevotes and soybean (``<data-dir>/tabular_uci``): vaeanom is
fitted on the raw CSV columns (every column read as text, an empty field a
missing value), the peers on the one-hot encoding of ``anomaly_tabular.py`` (an
empty field a category of its own), standardised. For reference vaeanom also
runs on the columns as ``pd.read_csv`` types them (soybean's codes come out as
numbers) and on the one-hot rows. ADBench protocol, seeds 0, 1, 2.

**Missing values.** The numeric sets of ``anomaly_tabular.py`` (all but the two
categorical CSVs and the ten-split digits protocol). After the ADBench split, a
seeded share of the entries of the training and the test part (0%, 10%, 30%,
missing completely at random) is removed. vaeanom scores the tables as they are;
the peers (IsolationForest, kNN) get ``SimpleImputer(strategy="median")`` fitted on
the training part, then the scaler. Seeds 0, 1, 2 for both parts (``--seeds``).

Every method runs at its defaults; nothing here was tuned. ``--set NAME=VALUE``
runs vaeanom with other parameters (its files get their own names), e.g. to see
a candidate on the categorical sets alone:

    python benchmarks/tables_real_world.py --data-dir ../shared/data
    python benchmarks/tables_real_world.py --part categorical --set latent_dim=4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.impute import SimpleImputer
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from _common import DEFAULT_DATA_DIR, peer_detectors, versions, write_results
from tabular_sets import ALL_SETS, read_categorical_csv, table_sets
from vaeanom import VAEDetector

CATEGORICAL = ("housevotes", "soybean")
NUMERIC = tuple(n for n in ALL_SETS if n not in (*CATEGORICAL, "digits"))
HOLES = (0.0, 0.1, 0.3)
MISSING_PEERS = ("IsolationForest", "kNN")


def _metrics(y_test, scores) -> dict[str, float]:
    return {"roc_auc": roc_auc_score(y_test, -scores),
            "average_precision": average_precision_score(y_test, -scores)}


def _vaeanom(X_train, X_test, seed: int, params: dict) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    det = VAEDetector(**{"random_state": seed, **params}).fit(X_train)
    return det.score_samples(X_test), time.perf_counter() - t0


def _peer(make, X_train, X_test, impute: bool) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    if impute:
        imputer = SimpleImputer(strategy="median", keep_empty_features=True).fit(X_train)
        X_train, X_test = imputer.transform(X_train), imputer.transform(X_test)
    scaler = StandardScaler().fit(X_train)
    model = make()
    model.fit(scaler.transform(X_train))
    scores = np.asarray(model.decision_function(scaler.transform(X_test)), dtype=np.float64)
    return scores, time.perf_counter() - t0


def read_raw_columns(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """A categorical CSV's columns read as text (an empty field is NaN: a missing value)
    and its labels."""
    raw = pd.read_csv(path, dtype=str)
    return raw, raw.pop("anomaly").astype(int).to_numpy()


def categorical_rows(data_dir: Path, seeds, params: dict) -> list[dict]:
    """housevotes and soybean: vaeanom on the raw columns, everyone on one-hot rows."""
    rows = []
    for name in CATEGORICAL:
        path = data_dir / "tabular_uci" / f"{name}.csv"
        raw, y = read_raw_columns(path)
        as_read = pd.read_csv(path).drop(columns="anomaly")   # what `vaeanom fit file.csv` gets
        onehot, y_onehot = read_categorical_csv(path)
        assert (y == y_onehot).all()
        for seed in seeds:
            split = dict(test_size=0.3, stratify=y, random_state=seed)
            raw_train, raw_test, _, y_test = train_test_split(raw, y, **split)
            read_train, read_test = train_test_split(as_read, **split)[:2]
            hot_train, hot_test = train_test_split(onehot, **split)[:2]
            runs = {"vaeanom (raw columns as text)": _vaeanom(raw_train, raw_test, seed, params),
                    "vaeanom (pd.read_csv as is)": _vaeanom(read_train, read_test, seed, params),
                    "vaeanom (one-hot)": _vaeanom(hot_train, hot_test, seed, params)}
            for peer, make in peer_detectors(seed).items():
                runs[peer] = _peer(make, hot_train, hot_test, impute=False)
            rows += _report(runs, y_test, dataset=name, seed=seed, holes=None)
    return rows


def with_holes(X: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """X with ``share`` of its entries set to NaN, uniformly at random (MCAR); no row is
    left without an observed entry."""
    X = X.astype(np.float64, copy=True)
    holes = rng.random(X.shape) < share
    holes[holes.all(axis=1), 0] = False
    X[holes] = np.nan
    return X


def holed_split(table, seed: int, share: float):
    """(train, test, y_test) of ``table``'s ADBench split with ``share`` of the entries
    removed from both parts, seeded by (seed, share)."""
    X_train, X_test, y_test = table.splits(seed)[0]
    rng = np.random.default_rng([seed, int(share * 100)])
    return with_holes(X_train, share, rng), with_holes(X_test, share, rng), y_test


def missing_rows(data_dir: Path, seeds, params: dict, names=NUMERIC) -> list[dict]:
    """The numeric sets with 0%, 10% and 30% of their entries removed."""
    rows = []
    for table in table_sets(data_dir, names):
        for seed in seeds:
            for share in HOLES:
                train, test, y_test = holed_split(table, seed, share)
                runs = {"vaeanom": _vaeanom(train, test, seed, params)}
                peers = peer_detectors(seed)
                for peer in MISSING_PEERS:
                    runs[f"{peer} + median imputer"] = _peer(peers[peer], train, test,
                                                             impute=True)
                rows += _report(runs, y_test, dataset=table.name, seed=seed, holes=share)
    return rows


def _report(runs: dict, y_test, **keys) -> list[dict]:
    rows = []
    for method, (scores, seconds) in runs.items():
        row = {**keys, "method": method, **_metrics(y_test, scores), "fit_score_s": seconds}
        rows.append(row)
        print(f"{keys['dataset']:13s} seed {keys['seed']} holes {keys['holes']} {method:32s} "
              f"ROC-AUC {row['roc_auc']:.4f} AP {row['average_precision']:.4f} "
              f"{seconds:6.1f}s", flush=True)
    return rows


def _markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(floatfmt=".4f")


def summarise(categorical: pd.DataFrame, missing: pd.DataFrame) -> tuple[dict, str]:
    parts, summary = ["# Real-world tables: categorical columns and missing values", ""], {}
    if len(categorical):
        table = categorical.pivot_table(index="method", columns="dataset",
                                        values=["roc_auc", "average_precision"], aggfunc="mean")
        table = table.sort_values(("roc_auc", CATEGORICAL[0]), ascending=False)
        summary["categorical_roc_auc"] = {d: table["roc_auc"][d].to_dict() for d in CATEGORICAL}
        parts += ["## Categorical sets (mean over seeds; vaeanom on the raw CSV columns, peers "
                  "on one-hot rows)", "", _markdown(table), ""]
    if len(missing):
        auc = missing.pivot_table(index=["dataset"], columns=["method", "holes"],
                                  values="roc_auc", aggfunc="mean")
        means = auc.mean().unstack("holes")
        summary["missing_mean_roc_auc"] = {m: {str(h): v for h, v in row.items()}
                                           for m, row in means.iterrows()}
        drop = means.sub(means[0.0], axis=0)
        parts += [f"## Missing values: mean ROC-AUC over {auc.shape[0]} numeric sets", "",
                  _markdown(means), "", "Drop against complete data:", "", _markdown(drop), "",
                  "## Missing values: ROC-AUC per set", "", _markdown(auc.T), ""]
    return summary, "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--part", choices=("categorical", "missing", "both"), default="both")
    parser.add_argument("--sets", nargs="+", default=list(NUMERIC),
                        help="numeric sets of the missing-value part")
    parser.add_argument("--set", dest="params", action="append", default=[],
                        metavar="NAME=VALUE", help="a VAEDetector parameter (repeatable)")
    args = parser.parse_args()
    from vaeanom.cli import parse_params

    params = parse_params(args.params)
    seeds = args.seeds or (0, 1, 2)
    torch.set_num_threads(1)
    started = time.time()
    categorical = pd.DataFrame(categorical_rows(args.data_dir, seeds, params)
                               if args.part != "missing" else [])
    missing = pd.DataFrame(missing_rows(args.data_dir, seeds, params, args.sets)
                           if args.part != "categorical" else [])
    summary, markdown = summarise(categorical, missing)
    markdown += (f"\nvaeanom parameters: {params or 'defaults'}. "
                 f"Run time {time.time() - started:.0f} s, torch threads 1.\n")
    print("\n" + markdown)
    payload = {"summary": summary, "vaeanom_params": params,
               "rows": [*categorical.to_dict("records"), *missing.to_dict("records")],
               "args": {k: str(v) for k, v in vars(args).items()},
               "versions": versions("vaeanom", "torch", "scikit-learn", "pyod")}
    name = f"tables_real_world_{args.part}"
    name += "".join(f"_{key}-{value}" for key, value in params.items())  # not the defaults'
    write_results(name, payload, markdown)


if __name__ == "__main__":
    main()
