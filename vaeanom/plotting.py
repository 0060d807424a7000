"""Matplotlib figures saved as PNG (built outside pyplot, written atomically)."""

from __future__ import annotations

import os

import numpy as np

from .checks import check_count, rankable_scores
from .evaluation import anomaly_labels   # labels read as evaluate reads them (-1/+1 too)
from .fileio import atomic_write


def _subplots(*grid: int, figsize: tuple[float, float], **kwargs):
    """A figure and its axes built outside pyplot: no backend is chosen or changed (a
    notebook's inline backend stays), and no figure is left open."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - matplotlib is a dependency
        raise ImportError("plots need matplotlib: pip install matplotlib") from err
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(*grid, **kwargs)


def _save(figure, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120,
                                                   bbox_inches="tight"))


def save_roc_curve(labels: np.ndarray, anomaly_score: np.ndarray, path) -> None:
    """ROC curve of ``anomaly_score`` (higher = more anomalous) against labels that mark
    anomalies with 1 (or True, or -1 as ``predict`` does); a NaN or infinite anomaly
    score ranks as the most anomalous (the outlier rule)."""
    labels = anomaly_labels(labels)
    anomaly_score = -rankable_scores(-np.asarray(anomaly_score, dtype=np.float64))
    from sklearn.metrics import RocCurveDisplay

    figure, ax = _subplots(figsize=(4.5, 4.5))
    RocCurveDisplay.from_predictions(labels, anomaly_score, ax=ax, name="detector",
                                     plot_chance_level=True)
    ax.set_title("ROC curve (positive = anomaly)")
    _save(figure, path)


def save_score_histograms(scores: np.ndarray, labels: np.ndarray, offset: float, path) -> None:
    """Histograms of ``score_samples`` for normal rows and anomalies, with the threshold;
    ``labels`` as :func:`save_roc_curve` reads them.

    A row that could not be scored (-inf, NaN) is drawn in the lowest bin, as the
    least normal; histograms would otherwise drop it, or draw nothing at all."""
    scores = rankable_scores(scores)
    labels = anomaly_labels(labels, both_classes=False)
    figure, ax = _subplots(figsize=(6, 3.5))
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
    """One row's feature contributions (a row of ``det.explain(X)``, or its one-row
    frame, ``det.explain(X.iloc[[i]])``) as a bar chart; one image's map
    (``det.explain(images)[i]``, shape (H, W)) as a heat map.

    The ``top`` largest, most anomalous at the top; a feature's bar is its
    negative log-likelihood in nats above its training median. A map's colours
    are the same nats, red above the training median and blue below, on a scale
    symmetric about 0 (``top`` does not apply).
    """
    import pandas as pd

    if not isinstance(contributions, (pd.DataFrame, pd.Series)) and np.ndim(contributions) >= 2:
        _save_pixel_map(np.asarray(contributions, dtype=np.float64), path)
        return
    if isinstance(contributions, pd.DataFrame):
        if len(contributions) != 1:
            raise ValueError(f"contributions has {len(contributions)} rows; draw one row, "
                             "e.g. det.explain(X).iloc[0], or det.explain(X).loc[label].")
        contributions = contributions.iloc[0]
    row = pd.Series(contributions).astype(float)
    shown = row.sort_values(ascending=False).iloc[:top][::-1]
    figure, ax = _subplots(figsize=(6, 0.35 * len(shown) + 1.2))
    ax.barh([str(name) for name in shown.index], shown.to_numpy(),
            color=["tab:red" if v > 0 else "tab:blue" for v in shown.to_numpy()])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("contribution to the anomaly (nats above the training median)")
    ax.set_title(f"row {row.name!r}" if row.name is not None else "row")
    _save(figure, path)


def _save_pixel_map(values: np.ndarray, path) -> None:
    """One image's per-pixel contributions (H, W) as a heat map with a colour bar in nats."""
    if values.ndim != 2:
        raise ValueError(f"save_explanation draws one image's map, shape (H, W); got shape "
                         f"{values.shape}. Pass det.explain(images)[i].")
    finite = values[np.isfinite(values)]
    limit = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    height, width = values.shape
    figure, ax = _subplots(figsize=(1.2 + 4.0 * width / max(height, width),
                                    0.8 + 4.0 * height / max(height, width)))
    shown = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    figure.colorbar(shown, ax=ax, label="nats above the training median")
    ax.set_axis_off()
    ax.set_title("per-pixel contribution")
    _save(figure, path)


def save_image_grid(images: np.ndarray, path, nrow: int = 8, scale: int = 4) -> None:
    """Images (n, H, W) or (n, C, H, W), floats in [0, 1] or uint8 in 0..255 (as the
    estimators take them), as one grid PNG, ``nrow`` to a row, each pixel drawn
    ``scale`` x ``scale`` (torchvision's make_grid). Floats are clipped to [0, 1]
    (a decoded image can overshoot a little); ``explain`` maps are nats, not pixels:
    draw them with :func:`save_explanation`."""
    import torch
    from torchvision.utils import save_image

    images = np.asarray(images)
    if check_count(nrow, "nrow") < 1:
        raise ValueError(f"nrow must be >= 1; got {nrow}.")
    images = images[None] if images.ndim == 2 else images          # one (H, W) image
    if images.ndim not in (3, 4) or len(images) == 0:
        raise ValueError(f"save_image_grid takes images (n, H, W) or (n, C, H, W) with n >= 1; "
                         f"got shape {images.shape}.")
    if images.ndim == 4 and images.shape[1] not in (1, 3) and images.shape[-1] in (1, 3):
        raise ValueError(f"images of shape {images.shape} look channels-last; pass "
                         "images.transpose(0, 3, 1, 2).")
    images = images / np.float32(255) if images.dtype == np.uint8 else images
    images = images.astype(np.float32)
    if images.ndim == 3:
        images = images[:, None]
    grid = torch.from_numpy(np.clip(images, 0.0, 1.0))
    grid = torch.nn.functional.interpolate(grid, scale_factor=scale, mode="nearest")
    atomic_write(path, lambda tmp: save_image(grid, tmp, nrow=nrow, padding=2, pad_value=1.0,
                                              format="png"))


def save_latent_map(codes: np.ndarray, labels, path, title: str = "latent space") -> None:
    """Posterior means as a 2-D scatter coloured by label: the codes themselves when
    latent_dim is 2 (a strip when it is 1), else their first two principal components
    (PCA)."""
    codes = np.asarray(codes, dtype=np.float64)
    labels = np.asarray(labels)
    if codes.ndim != 2 or len(codes) == 0 or codes.shape[1] == 0:
        raise ValueError(f"codes must be (n, latent_dim) with n >= 1, as encode returns; got "
                         f"shape {codes.shape}.")
    if labels.shape != (len(codes),):
        raise ValueError(f"labels must be one per code ({len(codes)}); got shape "
                         f"{labels.shape}.")
    if not np.isfinite(codes).all():
        raise ValueError("codes hold NaN or infinity; pass the finite codes encode returns.")
    axes_names = ("z1", "z2")
    if codes.shape[1] == 1:
        codes, axes_names = np.column_stack([codes, np.zeros(len(codes))]), ("z1", "")
    elif codes.shape[1] > 2 and len(codes) > 1:     # one code has no principal components
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2).fit(codes)
        codes = pca.transform(codes)
        share = pca.explained_variance_ratio_
        axes_names = (f"PC1 of z ({share[0]:.0%})", f"PC2 of z ({share[1]:.0%})")
    figure, ax = _subplots(figsize=(5.5, 4.5))
    for value in np.unique(labels):
        mine = labels == value
        ax.scatter(codes[mine, 0], codes[mine, 1], s=8, alpha=0.6, label=str(value))
    ax.set_xlabel(axes_names[0])
    ax.set_ylabel(axes_names[1])
    ax.set_title(title)
    ax.legend(markerscale=2, fontsize="small")
    _save(figure, path)


def save_training_curves(history: list[dict], path) -> None:
    """Per-epoch training terms from ``history_`` (loss, reconstruction, kl, val_loss).

    A term some epochs lack (``val_loss`` after a ``partial_fit`` without a validation
    split) is drawn where it was recorded."""
    if not history:
        raise ValueError("the history is empty: fit the model first.")
    names = [n for n in ("loss", "reconstruction", "kl", "val_loss")
             if any(n in record for record in history)]
    figure, axes = _subplots(1, len(names), figsize=(3.2 * len(names), 3), squeeze=False)
    epochs = [record["epoch"] for record in history]
    for ax, name in zip(axes[0], names):
        ax.plot(epochs, [record.get(name, np.nan) for record in history], marker=".")
        ax.set_title(name)
        ax.set_xlabel("epoch")
    figure.tight_layout()
    _save(figure, path)
