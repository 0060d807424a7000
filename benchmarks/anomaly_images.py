"""Image anomaly detection: Fashion-MNIST one-class, vaeanom vs the peers, same run.

Protocol (``<data-dir>/README.md``): the 8 classes of
``fashion_mnist_8class.npz``; per class, its first 6000 rows (file order) are
the training pool and its last 1000 rows the test pool. For class c: fit on
the 6000 training images of c only; test on the 1000 test images of c
(normal) and the 1000 test images of every other class (anomalies). ROC-AUC
per class and the mean over classes.

vaeanom gets the uint8 images ``(n, 28, 28)`` with its defaults (``--set``
overrides them for experiments) and one column per score kind from the same
fit. The peers get the same pixels flattened and divided by 255, with their
own defaults. A hierarchical VAE (``latent_dim=(32, 8)``, otherwise the same
parameters) is fitted on the same images and scored with each of its kinds,
Havtorn et al.'s "llr" among them (``--hierarchy none`` skips it).

    python benchmarks/anomaly_images.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from _common import (DEFAULT_DATA_DIR, load_fashion, peer_detectors, timed_fit_score, versions,
                     write_results)
from vaeanom import VAEDetector
from vaeanom.scoring import HIERARCHICAL_SCORE_KINDS, IMAGE_SCORE_KINDS, SCORE_KINDS

CLASS_NAMES = {0: "T-shirt/top", 1: "Trouser", 3: "Dress", 4: "Coat", 5: "Sandal",
               7: "Sneaker", 8: "Bag", 9: "Ankle boot"}
SEED = 0


def split(x: np.ndarray, y: np.ndarray, normal: int):
    """Training images of ``normal``; test images of every class and 1 = anomaly labels."""
    train = x[y == normal][:6000]
    test_x = np.concatenate([x[y == c][-1000:] for c in sorted(CLASS_NAMES)])
    test_y = np.concatenate([np.full(1000, int(c != normal)) for c in sorted(CLASS_NAMES)])
    return train, test_x, test_y


def hierarchy_rows(train, test_x, test_y, params: dict, latent_dims: tuple, flat: bool):
    """One hierarchical fit, scored with every kind it has."""
    start = time.perf_counter()
    det = VAEDetector(random_state=SEED, **{**params, "latent_dim": latent_dims}).fit(train)
    fit_s = time.perf_counter() - start
    rows = []
    for kind in [k for k in HIERARCHICAL_SCORE_KINDS if not (flat and k in IMAGE_SCORE_KINDS)]:
        t1 = time.perf_counter()
        scores = det.set_params(score_kind=kind).score_samples(test_x)
        rows.append({"method": f"vaeanom hierarchy {kind}", "roc_auc": roc_auc_score(test_y, -scores),
                     "fit_s": fit_s, "score_s": time.perf_counter() - t1})
    return rows


def run_class(x, y, normal: int, params: dict, peers: list[str], flat: bool,
              hierarchy: tuple | None = None) -> list[dict]:
    train, test_x, test_y = split(x, y, normal)
    if flat:  # vaeanom sees rows of 784 pixels: MLP with per-pixel standardisation
        train, test_x = train.reshape(len(train), -1), test_x.reshape(len(test_x), -1)
    rows = []
    t0 = time.perf_counter()
    det = VAEDetector(random_state=SEED, **params).fit(train)
    fit_s = time.perf_counter() - t0
    default = det._resolved_score_kind()
    for kind in [k for k in SCORE_KINDS if not (flat and k in IMAGE_SCORE_KINDS)]:
        t1 = time.perf_counter()
        scores = det.set_params(score_kind=kind).score_samples(test_x)
        name = f"vaeanom {kind}" + (" (default)" if kind == default and not params else "")
        rows.append({"method": name, "roc_auc": roc_auc_score(test_y, -scores),
                     "fit_s": fit_s, "score_s": time.perf_counter() - t1})
    if hierarchy:
        rows += hierarchy_rows(train, test_x, test_y, params, hierarchy, flat)
    flat_train = train.reshape(len(train), -1) / 255.0
    flat_test = test_x.reshape(len(test_x), -1) / 255.0
    makers = peer_detectors(SEED)
    for name in peers:
        _, scores, fit_s, score_s = timed_fit_score(makers[name], flat_train, flat_test)
        rows.append({"method": name, "roc_auc": roc_auc_score(test_y, -scores),
                     "fit_s": fit_s, "score_s": score_s})
    for row in rows:
        row["class"] = CLASS_NAMES[normal]
        print(f"{CLASS_NAMES[normal]:12s} {row['method']:24s} ROC-AUC {row['roc_auc']:.4f} "
              f"fit {row['fit_s']:6.1f}s score {row['score_s']:5.1f}s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--classes", type=int, nargs="*", default=sorted(CLASS_NAMES))
    parser.add_argument("--peers", nargs="*", default=None,
                        help="peer names to run (default: all; none: vaeanom only)")
    parser.add_argument("--set", dest="params", action="append", default=[],
                        metavar="NAME=VALUE", help="a VAEDetector parameter (repeatable)")
    parser.add_argument("--name", default="anomaly_images", help="results file name")
    parser.add_argument("--hierarchy", default="32,8",
                        help="latent layer sizes of the hierarchical VAE, bottom first "
                             "('none': skip it)")
    parser.add_argument("--rows", action="store_true",
                        help="give vaeanom flattened pixel rows (MLP, standardised) "
                             "instead of images")
    args = parser.parse_args()
    from vaeanom.cli import parse_params

    params = parse_params(args.params)
    peers = list(peer_detectors(SEED)) if args.peers is None else args.peers
    hierarchy = (None if args.hierarchy == "none"
                 else tuple(int(d) for d in args.hierarchy.split(",")))
    x, y = load_fashion(args.data_dir)
    results = pd.DataFrame([row for c in args.classes
                            for row in run_class(x, y, c, params, peers, args.rows, hierarchy)])
    table = results.pivot_table(index="class", columns="method", values="roc_auc",
                                sort=False)
    table.loc["mean"] = table.mean()
    times = results.groupby("method", sort=False)[["fit_s", "score_s"]].mean()
    print("\nROC-AUC\n" + table.T.to_string(float_format="%.4f"))
    payload = {"benchmark": "anomaly_images", "seed": SEED, "vaeanom_params": params,
               "hierarchy": hierarchy,
               "vaeanom_input": "rows of 784 pixels" if args.rows else "uint8 images",
               "protocol": "Fashion-MNIST 8 classes; per class first 6000 rows train, last 1000 "
                           "test; fit on one class, test on all test pools",
               "results": results.to_dict(orient="records"),
               "mean_roc_auc": table.loc["mean"].to_dict(),
               "torch_threads": torch.get_num_threads(),
               "versions": versions("vaeanom", "torch", "scikit-learn", "pyod")}
    markdown = "\n".join([
        "# Fashion-MNIST one-class anomaly detection (8 classes, seed 0)", "",
        f"vaeanom parameters: {params or 'defaults'}; input: "
        f"{payload['vaeanom_input']}; torch threads: {torch.get_num_threads()}", "", "## ROC-AUC", "",
        table.T.to_markdown(floatfmt=".4f"), "", "## Mean seconds per fit / score (8000 images)",
        "", times.to_markdown(floatfmt=".2f")])
    write_results(args.name, payload, markdown)


if __name__ == "__main__":
    main()
