"""Per-feature explanations as tables: what ``score_frame(X, explain=k)`` adds.

numpy and pandas only, so the detector and the torch-free runtime rank alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


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
