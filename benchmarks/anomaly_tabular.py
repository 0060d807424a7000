"""Tabular anomaly detection: vaeanom vs the peers on six ADBench sets, same run.

Protocol (ADBench, unsupervised): for each set in ``<data-dir>/tabular/`` and
each seed in 0, 1, 2, a stratified 70/30 split; every detector is fitted on
the training part without labels (anomalies included, as in ADBench) and
ranked on the test part by ROC-AUC and average precision; the mean over seeds
is reported. vaeanom runs with its defaults (``VAEDetector(random_state=seed)``,
one column per score kind from the same fit); the peers run with theirs on
standardised rows (scaler fitted on the training part).

    python benchmarks/anomaly_tabular.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from _common import (DEFAULT_DATA_DIR, RESULTS, peer_detectors, timed_fit_score, versions,
                     write_results)
from vaeanom import VAEDetector
from vaeanom.scoring import IMAGE_SCORE_KINDS, SCORE_KINDS

SEEDS = (0, 1, 2)
#: every (set, seed) result is appended here as it finishes, so --resume can go on
#: after an interruption without redoing finished pairs
ROWS_LOG = RESULTS / "anomaly_tabular.rows.jsonl"


def vaeanom_rows(X_train, X_test, y_test, seed: int, params: dict) -> list[dict]:
    """One fit, every score kind: a result row per kind."""
    t0 = time.perf_counter()
    det = VAEDetector(random_state=seed, **params).fit(X_train)
    fit_s = time.perf_counter() - t0
    default = det._resolved_score_kind()
    rows = []
    for kind in [k for k in SCORE_KINDS if k not in IMAGE_SCORE_KINDS]:
        t1 = time.perf_counter()
        scores = det.set_params(score_kind=kind).score_samples(X_test)
        name = f"vaeanom {kind}" + (" (default)" if kind == default and not params else "")
        rows.append(_row(name, y_test, scores, fit_s, time.perf_counter() - t1))
    return rows


def _row(method: str, y_test, scores, fit_s: float, score_s: float) -> dict:
    return {"method": method, "roc_auc": roc_auc_score(y_test, -scores),
            "average_precision": average_precision_score(y_test, -scores),
            "fit_s": fit_s, "score_s": score_s}


def run_set(path: Path, seed: int, params: dict, peers: bool) -> list[dict]:
    with np.load(path, allow_pickle=False) as data:
        X, y = data["X"].astype(np.float64), data["y"].astype(int)
    X_train, X_test, _, y_test = train_test_split(X, y, test_size=0.3, stratify=y,
                                                  random_state=seed)
    rows = vaeanom_rows(X_train, X_test, y_test, seed, params)
    if peers:
        scaler = StandardScaler().fit(X_train)
        train_s, test_s = scaler.transform(X_train), scaler.transform(X_test)
        for name, make in peer_detectors(seed).items():
            _, scores, fit_s, score_s = timed_fit_score(make, train_s, test_s)
            rows.append(_row(name, y_test, scores, fit_s, score_s))
    for row in rows:
        row.update(dataset=path.stem, seed=seed)
        print(f"{path.stem:12s} seed {seed} {row['method']:24s} ROC-AUC {row['roc_auc']:.4f} "
              f"AP {row['average_precision']:.4f}  fit {row['fit_s']:.1f}s", flush=True)
    return rows


def _read_rows() -> list[dict]:
    if not ROWS_LOG.is_file():
        return []
    return [json.loads(line) for line in ROWS_LOG.read_text().splitlines() if line]


def _append_rows(rows: list[dict]) -> None:
    ROWS_LOG.parent.mkdir(parents=True, exist_ok=True)
    with ROWS_LOG.open("a") as log:
        log.writelines(json.dumps(row) + "\n" for row in rows)


def summary(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    table = results.pivot_table(index="dataset", columns="method", values=metric, aggfunc="mean")
    table.loc["mean"] = table.mean()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--no-peers", action="store_true", help="vaeanom only (quick look)")
    parser.add_argument("--set", dest="params", action="append", default=[],
                        metavar="NAME=VALUE", help="a VAEDetector parameter (repeatable)")
    parser.add_argument("--peers-from", type=Path, default=None, metavar="ROWS_JSONL",
                        help="take the peers' rows from an earlier run's rows log instead of "
                             "refitting them (the tables then say so)")
    parser.add_argument("--resume", action="store_true",
                        help=f"keep the (set, seed) pairs already in {ROWS_LOG.name}")
    args = parser.parse_args()
    from vaeanom.cli import parse_params

    params = parse_params(args.params)
    paths = sorted((args.data_dir / "tabular").glob("*.npz"))
    if not paths:
        raise SystemExit(f"no .npz files in {args.data_dir / 'tabular'}: pass --data-dir")
    done = _read_rows() if args.resume else []
    if not args.resume:
        ROWS_LOG.unlink(missing_ok=True)
    finished = {(r["dataset"], r["seed"]) for r in done}
    rows = list(done)
    for path in paths:
        for seed in SEEDS:
            if (path.stem, seed) not in finished:
                new = run_set(path, seed, params, not (args.no_peers or args.peers_from))
                _append_rows(new)
                rows.extend(new)
    if args.peers_from:
        rows += [r for r in map(json.loads, args.peers_from.read_text().splitlines())
                 if not r["method"].startswith("vaeanom")]
    results = pd.DataFrame(rows)
    auc, ap = summary(results, "roc_auc"), summary(results, "average_precision")
    times = results.groupby("method")[["fit_s", "score_s"]].mean()
    print("\nROC-AUC (mean over seeds)\n" + auc.T.to_string(float_format="%.4f"))
    print("\nAverage precision\n" + ap.T.to_string(float_format="%.4f"))
    payload = {"benchmark": "anomaly_tabular", "seeds": list(SEEDS), "vaeanom_params": params,
               "protocol": "ADBench: stratified 70/30 split per seed, unsupervised fit on the "
                           "training part, metrics on the test part",
               "peer_rows_from": str(args.peers_from) if args.peers_from else None,
               "results": results.to_dict(orient="records"),
               "mean_roc_auc": auc.loc["mean"].to_dict(),
               "mean_average_precision": ap.loc["mean"].to_dict(),
               "torch_threads": torch.get_num_threads(),
               "versions": versions("vaeanom", "torch", "scikit-learn", "pyod")}
    markdown = "\n".join([
        "# Tabular anomaly detection (ADBench protocol, seeds 0, 1, 2)", "",
        f"vaeanom parameters: {params or 'defaults'}; torch threads: {torch.get_num_threads()}",
        "",
        *([f"Peer rows read from `{args.peers_from.name}` (an earlier run with the same seeds, "
           "splits and package versions), not refitted in this run.", ""]
          if args.peers_from else []),
        "## ROC-AUC", "",
        auc.T.to_markdown(floatfmt=".4f"), "", "## Average precision", "",
        ap.T.to_markdown(floatfmt=".4f"), "", "## Mean seconds per fit / score", "",
        times.to_markdown(floatfmt=".2f")])
    write_results("anomaly_tabular", payload, markdown)


if __name__ == "__main__":
    main()
