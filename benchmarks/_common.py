"""Helpers shared by the benchmark scripts: data loading, versions, result files."""

from __future__ import annotations

import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def versions(*packages: str) -> dict[str, str]:
    out = {"python": sys.version.split()[0], "machine": platform.machine()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_fashion(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST 8-class images (n, 28, 28) uint8 and labels, from ``data_dir``."""
    path = Path(data_dir) / "fashion_mnist_8class.npz"
    if not path.is_file():
        raise SystemExit(f"{path} not found: pass --data-dir pointing at shared/data")
    with np.load(path, allow_pickle=False) as data:
        return data["x"], data["y"]


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(f"\nwrote {RESULTS / name}.json and .md")


# ------------------------------------------------------------------ peers
def peer_detectors(seed: int) -> dict:
    """The peers at their defaults: name -> make. ``make()`` returns an unfitted
    detector with fit/decision_function; higher decision = more normal.

    Everything is fitted on the same (already scaled) rows vaeanom sees.
    PCA reconstruction error keeps the components that explain 90% of the
    variance (PCA's own default keeps all and reconstructs perfectly).
    """
    from sklearn.ensemble import IsolationForest
    from sklearn.neighbors import LocalOutlierFactor
    from sklearn.svm import OneClassSVM

    def pyod(name):
        def make():
            import importlib
            module, cls = {"VAE": ("pyod.models.vae", "VAE"),
                           "AutoEncoder": ("pyod.models.auto_encoder", "AutoEncoder"),
                           "ECOD": ("pyod.models.ecod", "ECOD")}[name]
            detector = getattr(importlib.import_module(module), cls)
            kwargs = {} if name == "ECOD" else {"random_state": seed, "verbose": 0}
            return _PyODNormal(detector(**kwargs))
        return make

    return {
        "IsolationForest": lambda: IsolationForest(random_state=seed),
        "kNN": lambda: KNNMeanDistance(5),
        "OneClassSVM": lambda: OneClassSVM(),
        "LOF": lambda: LocalOutlierFactor(novelty=True),
        "PCA recon": lambda: PCAReconstruction(0.9),
        "PyOD VAE": pyod("VAE"),
        "PyOD AutoEncoder": pyod("AutoEncoder"),
        "PyOD ECOD": pyod("ECOD"),
    }


class KNNMeanDistance:
    """Minus the mean distance to the k nearest training rows (ADBench's strongest peer
    on clean training data; PyOD's ``KNN(method="mean")``)."""

    def __init__(self, n_neighbors: int = 5) -> None:
        self.n_neighbors = n_neighbors

    def fit(self, X):
        from sklearn.neighbors import NearestNeighbors
        self.nn_ = NearestNeighbors(n_neighbors=min(self.n_neighbors, len(X))).fit(X)
        return self

    def decision_function(self, X):
        return -self.nn_.kneighbors(X)[0].mean(axis=1)


class PCAReconstruction:
    """Minus the squared reconstruction error from the top principal components."""

    def __init__(self, n_components) -> None:
        self.n_components = n_components

    def fit(self, X):
        from sklearn.decomposition import PCA
        self.pca_ = PCA(self.n_components, random_state=0).fit(X)
        return self

    def decision_function(self, X):
        recon = self.pca_.inverse_transform(self.pca_.transform(X))
        return -((X - recon) ** 2).sum(axis=1)


class _PyODNormal:
    """A PyOD detector with scikit-learn's sign: higher = more normal."""

    def __init__(self, detector) -> None:
        self.detector = detector

    def fit(self, X):
        self.detector.fit(X)
        return self

    def decision_function(self, X):
        return -self.detector.decision_function(X)


def timed_fit_score(make, X_train, X_test) -> tuple[object, np.ndarray, float, float]:
    """Fit a new detector and score X_test: (detector, scores, fit seconds, score seconds)."""
    import time

    detector = make()
    t0 = time.perf_counter()
    detector.fit(X_train)
    t1 = time.perf_counter()
    scores = np.asarray(detector.decision_function(X_test), dtype=np.float64)
    return detector, scores, t1 - t0, time.perf_counter() - t1
