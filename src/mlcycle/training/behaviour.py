"""Behavioural checks of a model (in the style of Made-With-ML's model tests): what its score must
do when one input changes and everything else stays, row by row.

- invariance: setting a field to any of a few values moves no row's score by more than a tolerance
  (a field that must not matter, or must matter only a little);
- direction: raising a field through increasing values never lowers (or never raises) a row's score
  by more than a tolerance (a monotone relation the domain knows).

``predict`` takes a frame of model inputs and returns one score per row; the checks never look
inside the model. Every check is a typed result (mlcycle.decisions) with the worst row as evidence;
a field the model does not read, or no rows, is "not measurable", never a pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlcycle.decisions import CheckResult, at_most, not_measurable

Predict = Callable[[pd.DataFrame], np.ndarray]


def _scores(predict: Predict, frame: pd.DataFrame, field: str, values: Sequence[Any]) -> np.ndarray:
    """Rows × values: each row's score with ``field`` set to each value."""
    out = []
    for value in values:
        changed = frame.copy()
        changed[field] = value
        out.append(np.asarray(predict(changed), dtype=float))
    return np.column_stack(out)


def _unusable(name: str, frame: pd.DataFrame, field: str, inputs: Sequence[str]) -> CheckResult | None:
    if field not in inputs:
        return not_measurable(name, None, "<=", f"{field!r} is not a model input (inputs: {', '.join(inputs)})",
                              "block")  # fmt: skip
    if frame.empty:
        return not_measurable(name, None, "<=", "no rows to check on", "block")
    return None


def invariance(
    predict: Predict, frame: pd.DataFrame, inputs: Sequence[str], field: str, values: Sequence[Any], max_change: float
) -> CheckResult:
    """The largest change of any row's score across ``values`` of ``field``, at most ``max_change``."""
    name = f"invariance:{field}"
    if (bad := _unusable(name, frame, field, inputs)) is not None:
        return bad
    scores = _scores(predict, frame, field, values)
    spread = scores.max(axis=1) - scores.min(axis=1)
    worst = int(np.argmax(spread))
    detail = f"{len(frame):,} rows × {len(values)} values; worst row {worst} moved {spread[worst]:.4g}"
    return at_most(name, float(spread[worst]), max_change, detail, values=list(values), worst_row=worst,
                   rows_over=int((spread > max_change).sum()))  # fmt: skip


def direction(
    predict: Predict,
    frame: pd.DataFrame,
    inputs: Sequence[str],
    field: str,
    values: Sequence[float],
    expected: Literal["increasing", "decreasing"],
    tolerance: float,
) -> CheckResult:
    """The largest move against ``expected`` between consecutive ``values``, at most ``tolerance``."""
    name = f"direction:{field}:{expected}"
    if (bad := _unusable(name, frame, field, inputs)) is not None:
        return bad
    steps = np.diff(_scores(predict, frame, field, values), axis=1)
    against = -steps if expected == "increasing" else steps
    worst_per_row = against.max(axis=1)
    worst = int(np.argmax(worst_per_row))
    move = max(float(worst_per_row[worst]), 0.0)
    detail = (f"{len(frame):,} rows, {field} through {list(values)}; largest move against {expected}: {move:.4g} "
              f"(row {worst})")  # fmt: skip
    return at_most(name, move, tolerance, detail, worst_row=worst, rows_against=int((worst_per_row > tolerance).sum()))
