"""Labels as every stage reads them: one encoding for training, monitoring and business outcomes."""

from __future__ import annotations

from typing import Any

import pandas as pd


def encode_labels(labels: pd.Series, task: str, positive: Any) -> pd.Series:
    """Classification labels as 0/1 (``positive`` is 1, a missing label stays missing), regression
    labels as floats. Training sets and business outcomes are both read through this one encoding,
    so a 0/1 column whose positive class is 0 is inverted in both, not only in training."""
    if task == "regression":
        return pd.to_numeric(labels, errors="coerce").astype("float64")
    if pd.api.types.is_bool_dtype(labels.dtype):
        return labels.astype("int8")
    if pd.api.types.is_numeric_dtype(labels.dtype) and positive in (1, True, "1"):
        return (labels.astype("float64") == 1).astype("int8").where(labels.notna())
    return (labels.astype(str) == str(positive)).astype("int8").where(labels.notna())
