"""Why two "must show" items still fail: soybean (issue 15) and load_breast_cancer (issue 13).

Diagnostics, not candidates for a default: every figure here is vaeanom's
default fit (or a plain statistic) on the protocols of ``tables_real_world.py``
and ``tabular_sets.py``, seeds 0-2, mean ROC-AUC.

- soybean and housevotes, raw columns: the default's score per score kind; the
  summed ``explain`` contributions capped, squared, exponentiated or maxed; and
  the vote plus each column's surprise under its training frequencies.
- soybean: PCA (90% variance, standardised one-hot rows with holes as a
  category) against the default, per seed.
- load_breast_cancer (core protocol): plain distances (from the standardised
  training mean, Ledoit-Wolf Mahalanobis, PCA reconstruction) against the
  default's terms, and terms that measure a row's size in the model's own
  space (decoded distance, Mahalanobis of the codes) alone and in the vote; and
  the mean of three default fits' votes (session 22: the issue's "a few small
  VAEs whose scores are averaged"), which asks whether the gap is the model's
  seed or the split.

    python benchmarks/categorical_diagnostics.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from _common import DEFAULT_DATA_DIR, PCAReconstruction, versions, write_results
from tables_real_world import read_raw_columns
from vaeanom import VAEDetector
from vaeanom.datasets import breast_cancer_one_class

SEEDS = (0, 1, 2)
KINDS = ("elbo_kl_knn", "elbo_kl", "elbo", "kl", "latent_knn", "reconstruction", "recon_prob")


def robust(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    q1, median, q3 = np.percentile(reference, [25, 50, 75])
    return (scores - median) / (q3 - q1)


def marginal_surprise(train: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Each row's summed -log frequency of its categories in ``train`` (add-1/2), per
    observed column times the number of columns, as vaeanom scales holes."""
    total, observed = np.zeros(len(rows)), np.zeros(len(rows))
    for column in train.columns:
        counts = train[column].value_counts()
        p = ((rows[column].map(counts).fillna(0).to_numpy(float) + 0.5)
             / (counts.sum() + 0.5 * (len(counts) + 1)))
        seen = rows[column].notna().to_numpy()
        total += np.where(seen, -np.log(p), 0.0)
        observed += seen
    return total * rows.shape[1] / observed


def outranking_normals(test: pd.DataFrame, y_test: np.ndarray, score: np.ndarray,
                       contributions: np.ndarray) -> dict[str, list[int]]:
    """The normal rows scored at least as anomalous as the least anomalous anomaly: their
    holes and their features over 2 nats, next to the anomalies' own."""
    above = (y_test == 0) & (score >= score[y_test == 1].min())
    holes = test.isna().sum(axis=1).to_numpy()
    unusual = np.nansum(contributions > 2, axis=1)
    return {"normal rows above, holes": holes[above].tolist(),
            "normal rows above, features over 2 nats": unusual[above].tolist(),
            "anomalies, features over 2 nats": unusual[y_test == 1].tolist()}


def categorical_diagnostics(data_dir: Path, soybean_rows: list[dict]
                            ) -> dict[tuple[str, str], list[float]]:
    found: dict[tuple[str, str], list[float]] = {}
    for name in ("soybean", "housevotes"):
        raw, y = read_raw_columns(data_dir / "tabular_uci" / f"{name}.csv")
        one_hot = pd.get_dummies(raw, dummy_na=True).to_numpy(float)
        for seed in SEEDS:
            train_i, test_i = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y,
                                               random_state=seed)
            train, test, y_test = raw.iloc[train_i], raw.iloc[test_i], y[test_i]
            out = {}
            det = VAEDetector(random_state=seed).fit(train)
            for kind in KINDS:
                out[f"kind {kind}"] = -det.set_params(score_kind=kind).score_samples(test)
            det.set_params(score_kind="auto")
            contributions = det.explain(test).to_numpy()
            if name == "soybean":
                soybean_rows.append({"seed": seed, **outranking_normals(
                    test, y_test, out["kind elbo_kl_knn"], contributions)})
            for cap in (0.5, 1, 2, 3, 5):
                out[f"explain capped at {cap}"] = np.nansum(np.minimum(contributions, cap), 1)
            positive = np.clip(contributions, 0, None)
            out["explain squared"] = np.nansum(positive ** 2, 1)
            out["explain exponentiated"] = np.nansum(np.expm1(np.clip(contributions, -20, 20)),
                                                     1)
            out["explain maximum"] = np.nanmax(contributions, 1)
            vote, vote_train = det.score_samples(test), det.score_samples(train)
            surprise = marginal_surprise(train, test)
            surprise_train = marginal_surprise(train, train)
            for weight in (0.5, 1, 2):
                out[f"vote + {weight} x marginal surprise"] = (
                    -robust(vote, vote_train) + weight * robust(surprise, surprise_train))
            scaler = StandardScaler().fit(one_hot[train_i])
            pca = PCAReconstruction(0.9).fit(scaler.transform(one_hot[train_i]))
            out["PCA recon, one-hot"] = -pca.decision_function(scaler.transform(one_hot[test_i]))
            for method, scores in out.items():
                found.setdefault((name, method), []).append(roc_auc_score(y_test, scores))
            print(name, seed, f"default {found[(name, 'kind elbo_kl_knn')][-1]:.4f}", flush=True)
    return found


def breast_cancer_diagnostics() -> dict[tuple[str, str], list[float]]:
    found: dict[tuple[str, str], list[float]] = {}
    for seed in SEEDS:
        X_train, X_test, y_test = breast_cancer_one_class(200, seed)
        scaler = StandardScaler().fit(X_train)
        a, b = scaler.transform(X_train), scaler.transform(X_test)
        out = {"distance from the mean": (b ** 2).sum(1),
               "Ledoit-Wolf Mahalanobis": LedoitWolf().fit(a).mahalanobis(b)}
        for k in (2, 5, 10):
            pca = PCA(k).fit(a)
            out[f"PCA recon, {k} components"] = ((b - pca.inverse_transform(pca.transform(b)))
                                                 ** 2).sum(1)
        det = VAEDetector(random_state=seed).fit(X_train)
        for kind in KINDS:
            out[f"kind {kind}"] = -det.set_params(score_kind=kind).score_samples(X_test)
        out.update(latent_size_terms(det.set_params(score_kind="auto"), X_train, X_test))
        out["mean of 3 models' votes (seeds s, 100s+1, 100s+2)"] = np.mean(
            [-d.score_samples(X_test) for d in
             [det] + [VAEDetector(random_state=100 * seed + m).fit(X_train) for m in (1, 2)]], 0)
        for method, scores in out.items():
            found.setdefault(("breast_cancer", method), []).append(roc_auc_score(y_test, scores))
    return found


def latent_size_terms(det: VAEDetector, X_train: np.ndarray,
                      X_test: np.ndarray) -> dict[str, np.ndarray]:
    """Terms that measure a row's size in the model's own space (session 21): the
    distance of its decoded posterior mean from the training rows' mean decoding (in
    standardised units: what the distance from the mean does, through the decoder),
    the Mahalanobis distance of its code under the training codes, and the default's
    vote with the decoded distance added or put in place of the KL."""
    def decoded(X):
        return det.decode(det.encode(X)) / det.scale_
    centre = decoded(X_train).mean(0)
    size_train, size_test = (np.sqrt(((decoded(X) - centre) ** 2).sum(1))
                             for X in (X_train, X_test))
    codes = det.encode(X_train)
    mahalanobis = LedoitWolf().fit(codes).mahalanobis(det.encode(X_test))
    frame = det.score_frame(X_test)
    distance = -det.set_params(score_kind="latent_knn").score_samples(X_test)
    det.set_params(score_kind="auto")
    (elbo_m, elbo_s), (kl_m, kl_s), (knn_m, knn_s) = det.score_reference_
    nelbo, kl = (-frame["elbo"] - elbo_m) / elbo_s, (frame["kl"] - kl_m) / kl_s
    knn, size = (distance - knn_m) / knn_s, robust(size_test, size_train)
    return {"decoded distance from the mean decoding": size_test,
            "Ledoit-Wolf Mahalanobis of the codes": mahalanobis,
            "vote + decoded distance": (nelbo + kl + knn + size).to_numpy(),
            "vote, decoded distance for the KL": (nelbo + size + knn).to_numpy(),
            "ELBO + KL + decoded distance": (nelbo + kl + size).to_numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    args = parser.parse_args()
    torch.set_num_threads(1)          # as tables_real_world.py: its figures are comparable
    start = time.perf_counter()
    soybean_rows: list[dict] = []
    found = {**categorical_diagnostics(args.data_dir, soybean_rows),
             **breast_cancer_diagnostics()}
    table = pd.DataFrame(
        [{"set": s, "method": m, **{f"seed {seed}": v for seed, v in zip(SEEDS, values)},
          "mean": float(np.mean(values))} for (s, m), values in found.items()])
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    outranking = pd.DataFrame(soybean_rows)
    print(outranking.to_string(index=False))
    markdown = ("# Diagnostics of the two unmet items (ROC-AUC, seeds 0-2)\n\n"
                + table.to_markdown(index=False, floatfmt=".4f")
                + "\n\n## soybean: the normal rows the default ranks above an anomaly\n\n"
                + outranking.to_markdown(index=False)
                + f"\n\nRun time {time.perf_counter() - start:.0f} s, torch threads 1.")
    write_results("categorical_diagnostics",
                  {"rows": table.to_dict(orient="records"), "soybean_outranking": soybean_rows,
                   "versions": versions("torch", "scikit-learn", "pandas")}, markdown)


if __name__ == "__main__":
    main()
