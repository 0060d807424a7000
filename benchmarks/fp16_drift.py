"""How far an fp16 export's scores move from float32's, on the embedded protocols.

The default VAEDetector (seed 0) on ``load_breast_cancer`` (core protocol, rows,
the vote score) and on ``load_digits`` as rows and as uint8 images (the demo's
digit 0), exported twice (float32 and ``fp16=True``) and run by ``OnnxModel`` on
CPU. A relative difference misleads for the rows' vote, whose scores sit near 0
by construction (robust training units), so the drift is given in the score's
own units: the absolute difference over the interquartile range of the training
rows' scores. Also: ``predict`` flips, ROC-AUC in each precision, and the rows
whose fp16 score is -inf while the float32 one is finite (a posterior spread
past float16's range in the decoder: see vaeanom.export).

    python benchmarks/fp16_drift.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from _common import versions, write_results
from vaeanom import OnnxModel, VAEDetector
from vaeanom.datasets import breast_cancer_one_class, digits_one_class


def cases() -> dict[str, tuple]:
    cancer = breast_cancer_one_class(200, 0)
    digits = digits_one_class(0, 0)
    images = [(x.reshape(-1, 8, 8) * 255).round().astype(np.uint8)      # X is pixels / 16
              for x in (digits.X_train, digits.X_test)]
    return {"breast_cancer rows": (cancer.X_train, cancer.X_test, cancer.y_test),
            "digits rows": (digits.X_train, digits.X_test, digits.y_test),
            "digits uint8 images": (images[0], images[1], digits.y_test)}


def drift(name: str, X_train, X_test, y_test, folder: Path) -> dict:
    det = VAEDetector(random_state=0).fit(X_train)
    full = OnnxModel(det.export_onnx(folder / f"{name}-32.onnx"))
    half = OnnxModel(det.export_onnx(folder / f"{name}-16.onnx", fp16=True))
    s32, s16 = full.score_samples(X_test), half.score_samples(X_test)
    q1, q3 = np.percentile(full.score_samples(X_train), [25, 75])
    finite = np.isfinite(s16) & np.isfinite(s32)
    units = np.abs(s16 - s32)[finite] / (q3 - q1)
    return {"case": name, "score kind": full.score_kind, "rows": len(X_test),
            "median |diff| / IQR": float(np.median(units)), "max |diff| / IQR": float(units.max()),
            "fp16 -inf, float32 finite": int((~np.isfinite(s16) & np.isfinite(s32)).sum()),
            "predict flips": int((full.predict(X_test) != half.predict(X_test)).sum()),
            "ROC-AUC float32": roc_auc_score(y_test, -s32),
            "ROC-AUC fp16": roc_auc_score(y_test, -np.where(np.isfinite(s16), s16, -np.inf)
                                          .clip(-np.finfo(float).max))}


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        rows = [drift(name, *case, Path(folder)) for name, case in cases().items()]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    write_results("fp16_drift", {"rows": rows, "versions": versions(
        "torch", "onnxruntime-gpu", "onnxruntime", "vaeanom")},
        "# fp16 export against float32 (OnnxModel, CPU, seed 0)\n\n"
        + table.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
