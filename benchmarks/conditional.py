"""The conditional VAE on digits: does it generate the class it is asked for, and does
knowing the classes help detect a class it never saw?

Two experiments on ``sklearn.datasets.load_digits`` (embedded: no files needed),
one stratified split (75% train, 25% test, seed 0):

1. **Generation.** ``VAEDetector(conditional=True)`` is fitted on the training
   digits with their labels; ``sample(n, y=c)`` draws n digits of each class c.
   A LogisticRegression trained on the real training digits says which digit
   each sample is: the share it reads as c is the recognition rate (target: at
   least 90% for every class).
2. **Multi-class normal data.** For each digit d in turn: fit on the training
   rows of the other nine (with their labels, for the CVAE), score every
   test row, and ask how well the score separates digit d (ROC-AUC). The
   CVAE's label-marginal score ``score_samples(X)`` (no labels at test time)
   against the unconditional VAE, at its default and with the same "elbo"
   score, and the peers, in the same run.

No setting was tuned here: every detector runs at its defaults (the CVAE's
"auto" score for rows is "elbo", chosen before this benchmark existed).

    python benchmarks/conditional.py            # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _common import peer_detectors, versions, write_results
from vaeanom import VAEDetector

PEERS = ("IsolationForest", "kNN", "PCA recon")


def generation(x_train, y_train, n_per_class: int, seed: int) -> dict:
    reader = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    reader.fit(x_train, y_train)
    cvae = VAEDetector(conditional=True, random_state=seed).fit(x_train, y_train)
    rates = {}
    for c in cvae.classes_:
        samples = cvae.sample(n_per_class, random_state=seed + int(c), y=c)
        rates[int(c)] = float(np.mean(reader.predict(samples) == c))
    return {"recognised": rates, "min": min(rates.values()),
            "mean": float(np.mean(list(rates.values())))}


def multi_class_normal(x_train, y_train, x_test, y_test, seed: int) -> dict:
    detectors = {
        "CVAE label-marginal (elbo)": lambda: VAEDetector(conditional=True, random_state=seed),
        "CVAE label-marginal (iwae)": lambda: VAEDetector(conditional=True, score_kind="iwae",
                                                          random_state=seed),
        "VAE default (elbo_kl_knn)": lambda: VAEDetector(random_state=seed),
        "VAE elbo": lambda: VAEDetector(score_kind="elbo", random_state=seed),
        "VAE iwae": lambda: VAEDetector(score_kind="iwae", random_state=seed),
    }
    peers = peer_detectors(seed)
    scaler_free = {name: peers[name] for name in PEERS}
    results = {name: {} for name in (*detectors, *scaler_free)}
    for held_out in range(10):
        normal = y_train != held_out
        truth = (y_test == held_out).astype(int)       # 1 = anomaly
        for name, make in detectors.items():
            detector = make()
            if name.startswith("CVAE"):
                detector.fit(x_train[normal], y_train[normal])
            else:
                detector.fit(x_train[normal])
            results[name][held_out] = roc_auc_score(truth, -detector.score_samples(x_test))
        scaler = StandardScaler().fit(x_train[normal])
        for name, make in scaler_free.items():
            peer = make().fit(scaler.transform(x_train[normal]))
            decision = peer.decision_function(scaler.transform(x_test))
            results[name][held_out] = roc_auc_score(truth, -decision)
        print(f"digit {held_out} held out: " + ", ".join(
            f"{name} {results[name][held_out]:.3f}" for name in results), flush=True)
    return {name: {"per_digit": per, "mean": float(np.mean(list(per.values())))}
            for name, per in results.items()}


def markdown(report: dict) -> str:
    gen = report["generation"]
    lines = ["# Conditional VAE on digits", "",
             f"Command: `python benchmarks/conditional.py` ({report['seconds']:.0f} s). "
             "load_digits, stratified 75/25 split, seed 0.", "",
             "## Generation: `sample(n, y=c)` read by a LogisticRegression trained on real digits",
             "", "| class | " + " | ".join(str(c) for c in gen["recognised"]) + " | mean |",
             "|---|" + "---:|" * (len(gen["recognised"]) + 1),
             "| recognised as c | " + " | ".join(f"{r:.0%}" for r in gen["recognised"].values())
             + f" | {gen['mean']:.1%} |", "",
             "## Multi-class normal data: train on nine digits, the tenth is the anomaly", "",
             "ROC-AUC on the test split, one column per held-out digit.", "",
             "| detector | " + " | ".join(str(d) for d in range(10)) + " | mean |",
             "|---|" + "---:|" * 11]
    ranked = sorted(report["multi_class_normal"].items(), key=lambda kv: -kv[1]["mean"])
    for name, row in ranked:
        cells = " | ".join(f"{row['per_digit'][d]:.3f}" for d in range(10))
        lines.append(f"| {name} | {cells} | **{row['mean']:.3f}** |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=100, help="generated digits per class")
    args = parser.parse_args()
    start = time.time()
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y,
                                                        random_state=args.seed)
    report = {"generation": generation(x_train, y_train, args.samples, args.seed)}
    print("generation:", report["generation"], flush=True)
    report["multi_class_normal"] = multi_class_normal(x_train, y_train, x_test, y_test,
                                                      args.seed)
    report["seconds"] = time.time() - start
    report["versions"] = versions("torch", "scikit-learn", "vaeanom")
    md = markdown(report)
    print("\n" + md)
    write_results("conditional", report, md)


if __name__ == "__main__":
    main()
