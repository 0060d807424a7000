"""Matplotlib figures saved as PNG (headless: the Agg backend, atomic writes)."""

from __future__ import annotations

import os

import numpy as np

from .fileio import atomic_write


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plots need matplotlib: pip install matplotlib") from err
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _save(figure, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120,
                                                   bbox_inches="tight"))
    _pyplot().close(figure)


def save_roc_curve(labels: np.ndarray, anomaly_score: np.ndarray, path) -> None:
    """ROC curve of ``anomaly_score`` (higher = more anomalous) against 0/1 labels."""
    from sklearn.metrics import RocCurveDisplay

    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(4.5, 4.5))
    RocCurveDisplay.from_predictions(labels, anomaly_score, ax=ax, name="detector",
                                     plot_chance_level=True)
    ax.set_title("ROC curve (positive = anomaly)")
    _save(figure, path)


def save_score_histograms(scores: np.ndarray, labels: np.ndarray, offset: float, path) -> None:
    """Histograms of ``score_samples`` for normal rows and anomalies, with the threshold."""
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 3.5))
    low, high = np.percentile(scores, [0.5, 100])
    bins = np.linspace(low, high, 60)
    for value, name in ((0, "normal"), (1, "anomaly")):
        ax.hist(np.clip(scores[labels == value], low, high), bins=bins, alpha=0.6, label=name)
    ax.axvline(offset, color="black", linestyle="--", label="threshold (offset_)")
    ax.set_xlabel("score_samples (higher = more normal)")
    ax.set_ylabel("rows")
    ax.legend()
    _save(figure, path)


def save_explanation(contributions, path, top: int = 10) -> None:
    """One row's feature contributions (a row of ``det.explain(X)``) as a bar chart.

    The ``top`` largest, most anomalous at the top; a feature's bar is its
    negative log-likelihood in nats above its training median.
    """
    import pandas as pd

    row = pd.Series(contributions).astype(float)
    shown = row.sort_values(ascending=False).iloc[:top][::-1]
    plt = _pyplot()
    figure, ax = plt.subplots(figsize=(6, 0.35 * len(shown) + 1.2))
    ax.barh([str(name) for name in shown.index], shown.to_numpy(),
            color=["tab:red" if v > 0 else "tab:blue" for v in shown.to_numpy()])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("contribution to the anomaly (nats above the training median)")
    ax.set_title(f"row {row.name!r}" if row.name is not None else "row")
    _save(figure, path)
