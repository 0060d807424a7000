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
