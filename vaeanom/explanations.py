"""Per-feature explanations as tables: what ``score_frame(X, explain=k)`` adds.

numpy and pandas only, so the detector and the torch-free runtime rank alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .checks import column_names


def explanation_columns(X, feature_names: Sequence | None, n_features: int) -> list:
    """The labels of an explanation's columns: the fitted feature names; else, for a
    DataFrame X, X's own column labels (scikit-learn keeps ``feature_names_in_`` only
    for string names, and a frame with columns 0, 1, ... should get 0, 1, ... back);
    else x0, x1, ..."""
    if feature_names is None and isinstance(X, pd.DataFrame) and X.shape[1] == n_features:
        return list(X.columns)
    return column_names(feature_names, n_features)


def top_features(contributions: pd.DataFrame, k: int) -> pd.DataFrame:
    """The k largest contributions of each row: feature_i and contribution_i columns."""
    values = contributions.to_numpy()
    ranked = np.where(np.isnan(values), -np.inf, values)   # a missing entry ranks last
    order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
    names = np.asarray(contributions.columns, dtype=object)
    columns = {}
    for i in range(order.shape[1]):
        columns[f"feature_{i + 1}"] = names[order[:, i]]
        columns[f"contribution_{i + 1}"] = np.take_along_axis(values, order[:, i:i + 1], 1)[:, 0]
    return pd.DataFrame(columns, index=contributions.index)
