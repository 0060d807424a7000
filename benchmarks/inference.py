"""Inference speed: torch eager vs the exported scorer on onnxruntime, same run.

Two scorers, both VAEDetector defaults (ELBO score, 16 Monte-Carlo samples):
an MLP on Fashion-MNIST rows flattened to 784 features, and the conv model on
the same images as 28x28. Each is fitted for a few epochs on the first 6000
training images of class 0 (speed does not depend on how well it is trained),
exported with ``export_onnx``, and timed on test images at batch sizes 1, 64
and 4096:

- ``torch det.score_samples``: the estimator as users call it (validation,
  preprocessing, 64-row chunks that make scores batch-independent);
- ``torch module``: the bare scorer module under ``torch.no_grad`` on the
  preprocessed batch, 256 rows a call like OnnxModel (no validation);
- ``torch export formula``: the same, with the module the export runs
  (``vaeanom.scoring.inference_scorer``: for the MLP's ELBO, the decoder's last
  layer once per row instead of once per sample), so the table separates
  what the runtime gains from what the formula gains;
- ``OnnxModel``: ``vaeanom.OnnxModel.score_samples`` (validation included,
  256 rows a call);
- ``ort session``: a bare ``onnxruntime.InferenceSession.run``, 256 rows a call.

Latency is the median of repeated calls; rows/s is batch / median latency.
On a machine with an NVIDIA GPU the CUDA execution provider (fp32 and fp16
exports) is timed too, at batch 65536.

    python benchmarks/inference.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from _common import DEFAULT_DATA_DIR, load_fashion, versions, write_results
from vaeanom import OnnxModel, VAEDetector
from vaeanom.runtime import cuda_device_count
from vaeanom.scoring import inference_scorer

BATCHES = (1, 64, 4096)
GPU_BATCH = 65536


def timed(call, min_repeats: int = 2, budget_s: float = 3.0) -> float:
    """Median seconds per call, after one warm-up call."""
    call()
    times = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def engines(det: VAEDetector, onnx_path: Path):
    """name -> function(batch) scoring that batch."""
    reference = det._make_scorer().eval()
    exported = inference_scorer(det.model_, torch.from_numpy(det.noise_),
                                det._resolved_score_kind(), det._complexity()).eval()
    model = OnnxModel(onnx_path, providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])

    def eager(module):
        def score(batch):
            x = det._preprocess(batch)
            with torch.no_grad():
                return np.concatenate([module(x[i:i + 256]).numpy()
                                       for i in range(0, len(x), 256)])
        return score

    takes_uint8 = session.get_inputs()[0].type == "tensor(uint8)"  # input_dtype="auto"

    def ort_session(batch):
        if takes_uint8:
            feed = batch
        else:
            feed = (batch.astype(np.float32) / 255 if batch.dtype == np.uint8 else batch)
            feed = feed.astype(np.float32)
        return np.concatenate([session.run(None, {"input": feed[i:i + 256]})[0]
                               for i in range(0, len(feed), 256)])

    return {"torch det.score_samples": det.score_samples, "torch module": eager(reference),
            "torch export formula": eager(exported), "OnnxModel": model.score_samples,
            "ort session": ort_session}


def bench_model(name: str, det: VAEDetector, test: np.ndarray, folder: Path) -> list[dict]:
    path = det.export_onnx(folder / f"{name}.onnx")
    reference = det.score_samples(test[:4096])
    onnx_scores = OnnxModel(path, providers=["CPUExecutionProvider"]).score_samples(test[:4096])
    parity = float(np.max(np.abs(onnx_scores - reference) / np.abs(reference)))
    results = []
    for engine, call in engines(det, path).items():
        for batch in BATCHES:
            data = test[:batch]
            latency = timed(lambda: call(data))
            results.append({"model": name, "engine": engine, "device": "cpu", "batch": batch,
                            "latency_ms": 1e3 * latency, "rows_per_s": batch / latency,
                            "max_rel_diff_vs_torch": parity if engine == "OnnxModel" else None})
            print(f"{name:5s} {engine:24s} batch {batch:5d}: {1e3 * latency:9.3f} ms "
                  f"{batch / latency:12.0f} rows/s", flush=True)
    fp16 = OnnxModel(det.export_onnx(folder / f"{name}-fp16.onnx", fp16=True),
                     providers=["CPUExecutionProvider"]).score_samples(test[:4096])
    fp16_error = float(np.median(np.abs(fp16 - reference) / np.abs(reference)))
    results.extend(bench_gpu(name, det, test, folder, reference))
    for row in results:
        row["fp16_median_rel_diff_cpu"] = fp16_error
    return results


def bench_gpu(name: str, det: VAEDetector, test: np.ndarray, folder: Path,
              reference: np.ndarray) -> list[dict]:
    if cuda_device_count() == 0:
        return []
    data = np.concatenate([test] * (GPU_BATCH // len(test) + 1))[:GPU_BATCH]
    rows = []
    for precision in ("float32", "float16"):
        path = det.export_onnx(folder / f"{name}-gpu-{precision}.onnx",
                               fp16=precision == "float16")
        model = OnnxModel(path, providers=["CUDAExecutionProvider"], batch_size=4096)
        gpu = model.score_samples(test[:4096])
        latency = timed(lambda: model.score_samples(data))
        rows.append({"model": name, "engine": f"OnnxModel CUDA {precision}", "device": "cuda",
                     "batch": GPU_BATCH, "latency_ms": 1e3 * latency,
                     "rows_per_s": GPU_BATCH / latency,
                     "max_rel_diff_vs_torch": float(np.max(np.abs(gpu - reference)
                                                           / np.abs(reference)))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()

    x, y = load_fashion(args.data_dir)
    train = x[y == 0][:6000]
    test = np.concatenate([x[y == c][-1000:] for c in np.unique(y)])[:4096]
    fits = {
        "mlp": (VAEDetector(backbone="mlp", epochs=args.epochs, random_state=0),
                train.reshape(len(train), -1), test.reshape(len(test), -1)),
        "conv": (VAEDetector(backbone="conv", epochs=args.epochs, random_state=0), train, test),
    }
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (det, train_x, test_x) in fits.items():
            det.fit(train_x)
            results.extend(bench_model(name, det, test_x, Path(folder)))
    speedup = {name: _speedup(results, name) for name in fits}
    payload = {
        "benchmark": "inference", "threads": {"torch": torch.get_num_threads()},
        "gpu": cuda_device_count() > 0, "results": results,
        "onnx_vs_torch_det_rows_per_s_at_4096": speedup,
        "versions": versions("torch", "onnxruntime-gpu", "onnxruntime", "onnx", "vaeanom"),
    }
    write_results("inference", payload, _markdown(results, speedup, payload["gpu"]))


def _speedup(results: list[dict], model: str) -> dict[str, float]:
    at = {r["engine"]: r["rows_per_s"] for r in results
          if r["model"] == model and r["batch"] == 4096}
    return {"vs det.score_samples": at["OnnxModel"] / at["torch det.score_samples"],
            "vs torch module": at["OnnxModel"] / at["torch module"],
            "vs torch export formula": at["OnnxModel"] / at["torch export formula"]}


def _markdown(results: list[dict], speedup: dict, gpu: bool) -> str:
    lines = ["# Inference speed (CPU: 2 cores)", "",
             "| model | engine | batch | latency (ms) | rows/s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['engine']} | {r['batch']} | {r['latency_ms']:.3f} | "
              f"{r['rows_per_s']:,.0f} |" for r in results]
    lines += ["", "OnnxModel rows/s at batch 4096 divided by torch's:", ""]
    lines += [f"- {m}: {s['vs det.score_samples']:.2f}x det.score_samples, "
              f"{s['vs torch module']:.2f}x the bare torch module, "
              f"{s['vs torch export formula']:.2f}x torch running the exported formula"
              for m, s in speedup.items()]
    parity = {r["model"]: r["max_rel_diff_vs_torch"] for r in results if r["engine"] == "OnnxModel"}
    fp16 = {r["model"]: r["fp16_median_rel_diff_cpu"] for r in results}
    lines += ["", "Max relative difference of OnnxModel scores vs det.score_samples (4096 test "
              "images): " + ", ".join(f"{m} {v:.1e}" for m, v in parity.items()),
              "", "fp16 export, median relative difference on CPU: "
              + ", ".join(f"{m} {v:.1e}" for m, v in fp16.items())]
    if not gpu:
        lines += ["", "No NVIDIA GPU on this machine: the CUDA rows were not measured."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
