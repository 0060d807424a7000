"""Training speed: VAEDetector (fp32 and bf16) vs PyOD's VAE, and default fit times, same run.

Epochs per second on the first 6000 training images of Fashion-MNIST class 0
(T-shirt/top), flattened to 784 features, from --data-dir. VAEDetector: MLP
512-256, latent 16, batch 128, in float32 and with ``precision="bf16"``
(torch autocast). PyOD 3.6 VAE: its defaults (batch 32, 128-64-32 layers,
dropout) and, for a like-for-like line, the same 512-256/16/128 shape.

Fit times of the rows defaults (``VAEDetector(random_state=0).fit(X)``, the
whole fit: training, the scoring passes for the threshold and the score
units) on a 100k x 50 table (a random Gaussian with correlated columns) and a
300 x 30 table (the first 300 rows of ``load_breast_cancer``), fp32 and bf16.
Every figure is the median of three timings taken round robin.

    python benchmarks/training_speed.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import DEFAULT_DATA_DIR, load_fashion, versions, write_results
from vaeanom import VAEDetector

#: every timing is taken this many times, round robin, and the median reported
REPEATS = 3


def time_fit(make, X: np.ndarray, epochs: int) -> float:
    """Seconds per epoch: (fit with 1 + epochs epochs - fit with 1 epoch) / epochs.

    The difference cancels what a fit does once (model build, scoring the
    training set for the threshold) and the first-call warm-up of torch.
    """
    def fit_seconds(n_epochs: int) -> float:
        model = make(n_epochs)
        start = time.perf_counter()
        model.fit(X)
        return time.perf_counter() - start

    fit_seconds(1)  # warm-up
    return (fit_seconds(1 + epochs) - fit_seconds(1)) / epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    images, labels = load_fashion(args.data_dir)
    X = images[labels == 0][:6000].reshape(6000, -1).astype(np.float32) / 255.0
    from pyod.models.vae import VAE as PyodVAE

    contenders = {
        "vaeanom VAEDetector (MLP 512-256, latent 16, batch 128)": lambda e: VAEDetector(
            hidden_dims=(512, 256), latent_dim=16, batch_size=128, epochs=e, device="cpu",
            random_state=0),
        "vaeanom VAEDetector, same, precision='bf16'": lambda e: VAEDetector(
            hidden_dims=(512, 256), latent_dim=16, batch_size=128, epochs=e, device="cpu",
            precision="bf16", random_state=0),
        "PyOD VAE, defaults (batch 32)": lambda e: PyodVAE(
            epoch_num=e, device="cpu", verbose=0),
        "PyOD VAE, same shape (512-256, latent 16, batch 128)": lambda e: PyodVAE(
            epoch_num=e, device="cpu", verbose=0, batch_size=128, latent_dim=16,
            encoder_neuron_list=[512, 256], decoder_neuron_list=[256, 512]),
    }
    # round robin, median of REPEATS: identical work varies by 20-45% from one timing to
    # the next on this machine, so one timing per contender can rank them either way
    timings = {name: [] for name in contenders}
    for _ in range(REPEATS):
        for name, make in contenders.items():
            timings[name].append(time_fit(make, X, args.epochs))
    rows = []
    for name, seconds in timings.items():
        median = float(np.median(seconds))
        rows.append({"model": name, "s_per_epoch": median, "epochs_per_s": 1.0 / median,
                     "s_per_epoch_all": seconds})
        print(f"{name:58s} {median:7.3f} s/epoch  {1 / median:6.2f} epochs/s  "
              f"(timings {', '.join(f'{t:.3f}' for t in seconds)})")

    fits = default_fit_times()
    table = ["| model | s/epoch | epochs/s |", "|---|---:|---:|"]
    table += [f"| {r['model']} | {r['s_per_epoch']:.3f} | {r['epochs_per_s']:.2f} |" for r in rows]
    fit_table = ["| table | precision | epochs (auto) | fit s |", "|---|---|---:|---:|"]
    fit_table += [f"| {r['table']} | {r['precision']} | {r['epochs']} | {r['fit_s']:.2f} |"
                  for r in fits]
    payload = {"data": "Fashion-MNIST class 0, first 6000 training rows, 784 features",
               "epochs_timed": args.epochs, "torch_threads": torch.get_num_threads(),
               "versions": versions("vaeanom", "torch", "pyod", "numpy"), "rows": rows,
               "default_fit_times": fits}
    write_results("training_speed", payload,
                  "# Training speed (CPU, same run)\n\n" + "\n".join(table)
                  + f"\n\n{args.epochs} epochs timed per model, torch threads = "
                  f"{torch.get_num_threads()}; medians of {REPEATS} timings taken round robin. "
                  "Timings vary run to run; compare within one run."
                  "\n\n## Whole fits with the rows defaults\n\n" + "\n".join(fit_table))


def default_fit_times() -> list[dict]:
    """Seconds for a whole default fit of a 100k x 50 and a 300 x 30 table, fp32 and bf16."""
    from sklearn.datasets import load_breast_cancer

    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(50, 50)) / np.sqrt(50)
    tables = {"100000 x 50 (correlated Gaussian)": rng.normal(size=(100_000, 50)) @ mixing,
              "300 x 30 (load_breast_cancer)": load_breast_cancer().data[:300]}
    VAEDetector(epochs=1, random_state=0).fit(tables["300 x 30 (load_breast_cancer)"])  # warm-up
    seconds = {(name, precision): [] for name in tables for precision in ("fp32", "bf16")}
    epochs = {}
    for _ in range(REPEATS):
        for name, precision in seconds:
            start = time.perf_counter()
            det = VAEDetector(precision=precision, random_state=0).fit(tables[name])
            seconds[name, precision].append(time.perf_counter() - start)
            epochs[name] = len(det.history_)
    out = []
    for (name, precision), times in seconds.items():
        out.append({"table": name, "precision": precision, "epochs": epochs[name],
                    "fit_s": float(np.median(times)), "fit_s_all": times})
        print(f"{name:36s} {precision}  {epochs[name]:5d} epochs  {out[-1]['fit_s']:7.2f} s "
              f"(timings {', '.join(f'{t:.2f}' for t in times)})")
    return out


if __name__ == "__main__":
    main()
