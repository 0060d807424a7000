"""Does a second latent layer buy likelihood? A hierarchical VAE against one layer with as
many parameters, on held-out Fashion-MNIST images.

Data (``<data-dir>/fashion_mnist_8class.npz``): of each of the 8 classes, the
first 3000 images of its training pool train (24000 in all) and the first 250
of its test pool are the dev split (2000, never seen in fit). Both models get
the uint8 images, 15 epochs, seed 0, ``n_score_samples=64``:

- ``VAEDetector(latent_dim=(32, 8))``: a Markovian hierarchy, z_1 (32) next to
  x, z_2 (8) on top, with its default KL warm-up (the first third of training);
- ``VAEDetector(latent_dim=32, hidden_dims=(h, 128))`` with the smallest first
  width h that gives it at least as many parameters as the hierarchy, as it
  comes (no warm-up) and with the hierarchy's warm-up (``kl_warmup=1/3``): the
  same training recipe, so the gain is the second layer's.

Reported: the mean ELBO and IWAE bound (K = 64) on the dev split, in nats per
image (higher is better), each layer's KL at the last epoch, and fit seconds.

    python benchmarks/hierarchical.py --data-dir ../shared/data   # about 6 minutes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from _common import DEFAULT_DATA_DIR, load_fashion, versions, write_results
from vaeanom import VAEDetector

CLASSES = (0, 1, 3, 4, 5, 7, 8, 9)
COMMON = {"epochs": 15, "n_score_samples": 64, "random_state": 0}


def dev_split(x: np.ndarray, y: np.ndarray, n_train: int, n_dev: int):
    train = np.concatenate([x[y == c][:n_train] for c in CLASSES])
    dev = np.concatenate([x[y == c][6000:6000 + n_dev] for c in CLASSES])
    return train, dev


def n_parameters(detector: VAEDetector, shape=(1, 28, 28)) -> int:
    return sum(p.numel() for p in detector._build_model(shape, True).parameters())


def matched_one_layer(target: int) -> dict:
    """One latent layer of 32 with the first hidden width raised until it has at least
    ``target`` parameters."""
    for width in range(256, 1024):
        params = {"latent_dim": 32, "hidden_dims": (width, 128)}
        if n_parameters(VAEDetector(**params)) >= target:
            return params
    raise RuntimeError("no width up to 1024 matches")


def evaluate(name: str, params: dict, train: np.ndarray, dev: np.ndarray) -> dict:
    start = time.perf_counter()
    detector = VAEDetector(**params, **COMMON).fit(train)
    fit_s = time.perf_counter() - start
    row = {"model": name, "params": {k: str(v) for k, v in params.items()},
           "n_parameters": n_parameters(detector), "fit_s": fit_s,
           "last_epoch": detector.history_[-1]}
    for kind in ("elbo", "iwae"):
        row[kind] = float(detector.set_params(score_kind=kind).score_samples(dev).mean())
    print(f"{name}: {row['n_parameters']:,} parameters, ELBO {row['elbo']:.2f}, "
          f"IWAE {row['iwae']:.2f} nats, fit {fit_s:.0f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--train-per-class", type=int, default=3000)
    parser.add_argument("--dev-per-class", type=int, default=250)
    parser.add_argument("--epochs", type=int, default=COMMON["epochs"])
    parser.add_argument("--seed", type=int, default=COMMON["random_state"])
    parser.add_argument("--name", default="hierarchical", help="results file name")
    args = parser.parse_args()
    COMMON.update(epochs=args.epochs, random_state=args.seed)
    x, y = load_fashion(args.data_dir)
    train, dev = dev_split(x, y, args.train_per_class, args.dev_per_class)
    hierarchy = {"latent_dim": (32, 8)}
    one_layer = matched_one_layer(n_parameters(VAEDetector(**hierarchy)))
    name = f"one layer 32, hidden {one_layer['hidden_dims']}"
    rows = [evaluate("hierarchical (32, 8)", hierarchy, train, dev),
            evaluate(name, one_layer, train, dev),
            evaluate(f"{name}, kl_warmup=1/3", {**one_layer, "kl_warmup": 1 / 3}, train, dev)]
    gain = rows[0]["iwae"] - max(row["iwae"] for row in rows[1:])
    lines = ["# Hierarchical VAE vs one layer of as many parameters (Fashion-MNIST dev split)",
             "", f"Command: `python benchmarks/hierarchical.py --data-dir ../shared/data"
             f"{'' if args.seed == 0 else f' --seed {args.seed} --name {args.name}'}`. "
             f"{len(train)} training images (first {args.train_per_class} of each class's "
             f"training pool), {len(dev)} dev images (first {args.dev_per_class} of each "
             f"test pool); uint8 images, {COMMON['epochs']} epochs, seed {args.seed}; bounds in nats "
             "per image, K = 64 importance samples.", "",
             "| model | parameters | dev ELBO | dev IWAE (K=64) | KL per layer, last epoch "
             "(bottom first) | fit s |", "|---|---:|---:|---:|---|---:|"]
    for row in rows:
        layers = [v for k, v in row["last_epoch"].items() if k.startswith("kl_")]
        kl = ", ".join(f"{v:.1f}" for v in layers) or f"{row['last_epoch']['kl']:.1f}"
        lines.append(f"| {row['model']} | {row['n_parameters']:,} | {row['elbo']:.2f} | "
                     f"{row['iwae']:.2f} | {kl} | {row['fit_s']:.0f} |")
    lines += ["", f"IWAE gain of the hierarchy over the better one-layer model: "
              f"**{gain:+.2f} nats per image**."]
    markdown = "\n".join(lines)
    print("\n" + markdown)
    write_results(args.name, {"seed": args.seed, "rows": rows, "iwae_gain": gain,
                                   "versions": versions("vaeanom", "torch")}, markdown)


if __name__ == "__main__":
    main()
