"""Tabular anomaly detection: vaeanom vs eight peers on nineteen tables, same run.

The sets, their protocols and the selection / held-out split are in
``tabular_sets.py``: six ADBench sets, eleven UCI sets (two categorical, one-hot
encoded for everyone), and the embedded ``load_digits`` (demo) and
``load_breast_cancer`` (core) one-class protocols. ADBench protocol for the
file sets: for each seed in 0, 1, 2 a stratified 70/30 split, every detector
fitted on the training part without labels (anomalies included), ranked on
the test part by ROC-AUC and average precision; means over seeds.

vaeanom runs with its defaults (``VAEDetector(random_state=seed)``, one column
per score kind from the same fit; the default kind is marked). The peers run
with theirs on rows standardised by a scaler fitted on the training part:
IsolationForest, kNN (mean distance to the 5 nearest training rows), LOF,
OneClassSVM, PCA reconstruction, PyOD's ECOD, VAE and AutoEncoder. Average
ranks are among the default and the peers (1 = best).

    python benchmarks/anomaly_tabular.py --data-dir ../shared/data      # everything
    python benchmarks/anomaly_tabular.py --half selection --methods vaeanom --set beta=1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from _common import (DEFAULT_DATA_DIR, RESULTS, peer_detectors, timed_fit_score, versions,
                     write_results)
from tabular_sets import ALL_SETS, HELD_OUT, SELECTION, table_sets
from vaeanom import VAEDetector
from vaeanom.scoring import IMAGE_SCORE_KINDS, SCORE_KINDS

SEEDS = (0, 1, 2)
ROW_SCORE_KINDS = tuple(k for k in SCORE_KINDS if k not in IMAGE_SCORE_KINDS)


def vaeanom_results(split, seed: int, params: dict, on_fit=None) -> dict[str, tuple]:
    """One fit, every row score kind: method -> (scores, fit seconds, score seconds).

    ``on_fit(detector, split, results)``, if given, sees each fit (for exploration).
    """
    X_train, X_test, _ = split
    t0 = time.perf_counter()
    det = VAEDetector(**{"random_state": seed, **params}).fit(X_train)
    fit_s = time.perf_counter() - t0
    default = det._resolved_score_kind()
    out = {}
    for kind in ROW_SCORE_KINDS:
        t1 = time.perf_counter()
        scores = det.set_params(score_kind=kind).score_samples(X_test)
        name = f"vaeanom {kind}" + (" (default)" if kind == default and not params else "")
        out[name] = (scores, fit_s, time.perf_counter() - t1)
    if on_fit is not None:
        on_fit(det, split, out)
    return out


def peer_results(split, seed: int) -> dict[str, tuple]:
    """Every peer on standardised rows: method -> (scores, fit seconds, score seconds)."""
    X_train, X_test, _ = split
    scaler = StandardScaler().fit(X_train)
    train_s, test_s = scaler.transform(X_train), scaler.transform(X_test)
    out = {}
    for name, make in peer_detectors(seed).items():
        _, scores, fit_s, score_s = timed_fit_score(make, train_s, test_s)
        out[name] = (scores, fit_s, score_s)
    return out


def run_set(table, seed: int, which: str, params: dict, on_fit=None) -> list[dict]:
    """Rows for one (set, seed): metrics averaged over the set's splits (digits: 10)."""
    per_method: dict[str, list[dict]] = {}
    for split in table.splits(seed):
        results = (vaeanom_results(split, seed, params, on_fit) if which == "vaeanom"
                   else peer_results(split, seed))
        y_test = split[2]
        for method, (scores, fit_s, score_s) in results.items():
            per_method.setdefault(method, []).append({
                "roc_auc": roc_auc_score(y_test, -scores),
                "average_precision": average_precision_score(y_test, -scores),
                "fit_s": fit_s, "score_s": score_s})
    rows = []
    for method, runs in per_method.items():
        row = {"dataset": table.name, "half": table.half, "seed": seed, "method": method,
               **pd.DataFrame(runs).mean().to_dict()}
        rows.append(row)
        print(f"{table.name:13s} seed {seed} {method:28s} ROC-AUC {row['roc_auc']:.4f} "
              f"AP {row['average_precision']:.4f}  fit {row['fit_s']:.2f}s", flush=True)
    return rows


# ---------------------------------------------------------------- tables
def contenders(methods) -> list[str]:
    """The default and the peers: the methods that are ranked."""
    return [m for m in methods if not m.startswith("vaeanom") or m.endswith("(default)")]


def summary(results: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Methods x sets (selection sets first), then means and average ranks per half."""
    table = results.pivot_table(index="dataset", columns="method", values=metric,
                                aggfunc="mean")
    present = [s for s in (*SELECTION, *HELD_OUT) if s in table.index]
    table = table.loc[present]
    ranked = table[contenders(table.columns)].rank(axis=1, ascending=False)
    halves = {"all": present, "selection": [s for s in present if s in SELECTION],
              "held-out": [s for s in present if s in HELD_OUT]}
    out = table.T
    for half, names in halves.items():
        if names:
            out[f"mean ({half})"] = table.loc[names].mean()
    for half, names in halves.items():
        if names:
            out[f"rank ({half})"] = ranked.loc[names].mean()
    return out.sort_values("mean (all)", ascending=False)


def behind_forest(auc: pd.DataFrame, default: str, margin: float = 0.05) -> dict[str, float]:
    """Sets where ``default`` is more than ``margin`` ROC-AUC below IsolationForest."""
    sets = [c for c in auc.columns if not c.startswith(("mean", "rank"))]
    if default not in auc.index or "IsolationForest" not in auc.index:
        return {}
    gap = auc.loc[default, sets] - auc.loc["IsolationForest", sets]
    return {s: round(float(g), 4) for s, g in gap.items() if g < -margin}


def _read_rows(log: Path) -> list[dict]:
    """The rows an earlier run appended to ``log`` (one JSON object a line)."""
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def _append_rows(log: Path, rows: list[dict]) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)


def _groups(methods: str) -> list[str]:
    return ["vaeanom", "peers"] if methods == "all" else [methods]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--half", choices=("all", "selection", "held-out"), default="all")
    parser.add_argument("--sets", nargs="+", default=None, choices=ALL_SETS, metavar="SET",
                        help="only these sets (default: those of --half)")
    parser.add_argument("--methods", choices=("all", "vaeanom", "peers"), default="all")
    parser.add_argument("--set", dest="params", action="append", default=[],
                        metavar="NAME=VALUE", help="a VAEDetector parameter (repeatable)")
    parser.add_argument("--peers-from", type=Path, default=None, metavar="ROWS_JSONL",
                        help="take the peers' rows from an earlier run's rows log instead of "
                             "refitting them (the tables then say so)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the (set, seed, methods) results already in the rows log "
                             "(results/anomaly_tabular*.rows.jsonl)")
    args = parser.parse_args()
    from vaeanom.cli import parse_params

    params = parse_params(args.params)
    names = args.sets or {"all": ALL_SETS, "selection": SELECTION,
                          "held-out": HELD_OUT}[args.half]
    name = "anomaly_tabular" + ("" if args.half == "all" and not args.sets else f"_{args.half}")
    name += "".join(f"_{key}-{value}" for key, value in params.items())  # never the defaults' file
    log = RESULTS / f"{name}.rows.jsonl"
    done = _read_rows(log) if args.resume else []
    if not args.resume:
        log.unlink(missing_ok=True)
    finished = {(r["dataset"], r["seed"], "vaeanom" if r["method"].startswith("vaeanom")
                 else "peers") for r in done}
    rows = list(done)
    groups = [g for g in _groups(args.methods) if not (g == "peers" and args.peers_from)]
    for table in table_sets(args.data_dir, names):
        for seed in SEEDS:
            for group in groups:
                if (table.name, seed, group) not in finished:
                    new = run_set(table, seed, group, params)
                    _append_rows(log, new)
                    rows.extend(new)
    if args.peers_from:
        rows += [r for r in map(json.loads, args.peers_from.read_text().splitlines())
                 if not r["method"].startswith("vaeanom") and r["dataset"] in names]
    report(pd.DataFrame(rows), params, args, name)


def _markdown(table: pd.DataFrame) -> str:
    """A markdown table with blank cells where a value is missing (ranks of non-contenders)."""
    return table.astype(object).where(table.notna(), "").to_markdown(floatfmt=".4f")


def report(results: pd.DataFrame, params: dict, args, name: str) -> None:
    auc, ap = summary(results, "roc_auc"), summary(results, "average_precision")
    default = next((m for m in auc.index if m.endswith("(default)")), None)
    behind = behind_forest(auc, default) if default else {}
    times = results.groupby("method")[["fit_s", "score_s"]].mean()
    print("\nROC-AUC (mean over seeds)\n" + auc.to_string(float_format="%.4f"))
    print("\nAverage precision\n" + ap.to_string(float_format="%.4f"))
    if default:
        print(f"\nsets where the default is > 0.05 ROC-AUC below IsolationForest: {behind}")
    summary_cols = [c for c in auc.columns if c.startswith(("mean", "rank"))]
    payload = {"benchmark": "anomaly_tabular", "seeds": list(SEEDS), "vaeanom_params": params,
               "protocol": "ADBench: stratified 70/30 split per seed, unsupervised fit on the "
                           "training part, metrics on the test part; digits and "
                           "breast_cancer: vaeanom.datasets one-class protocols",
               "selection_sets": list(SELECTION), "held_out_sets": list(HELD_OUT),
               "peer_rows_from": str(args.peers_from) if args.peers_from else None,
               "results": results.to_dict(orient="records"),
               "roc_auc_summary": auc[summary_cols].to_dict(orient="index"),
               "average_precision_summary": ap[summary_cols].to_dict(orient="index"),
               "default_more_than_0.05_below_isolation_forest": behind,
               "torch_threads": torch.get_num_threads(),
               "versions": versions("vaeanom", "torch", "scikit-learn", "pyod")}
    markdown = "\n".join([
        "# Tabular anomaly detection (19 sets, seeds 0, 1, 2)", "",
        f"vaeanom parameters: {params or 'defaults'}; torch threads: {torch.get_num_threads()}",
        "",
        f"Selection half (defaults chosen here): {', '.join(SELECTION)}.",
        f"Held-out half (never used to choose): {', '.join(HELD_OUT)}.",
        "Ranks are among the default and the peers (1 = best).", "",
        *([f"Peer rows read from `{args.peers_from.name}` (an earlier run with the same seeds, "
           "splits and package versions), not refitted in this run.", ""]
          if args.peers_from else []),
        "## ROC-AUC: summary", "", _markdown(auc[summary_cols]), "",
        "## ROC-AUC per set", "", auc.drop(columns=summary_cols).to_markdown(floatfmt=".4f"), "",
        "## Average precision: summary", "", _markdown(ap[summary_cols]), "",
        "## Average precision per set", "",
        ap.drop(columns=summary_cols).to_markdown(floatfmt=".4f"), "",
        f"Sets where the default is more than 0.05 ROC-AUC below IsolationForest: "
        f"{behind or 'none'}", "",
        "## Mean seconds per fit / score", "", times.to_markdown(floatfmt=".2f")])
    write_results(name, payload, markdown)


if __name__ == "__main__":
    main()
