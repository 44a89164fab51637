"""Window-aggregation declarations: what a project asks for, checked when its config is loaded.

"Per ``entity``, the ``sum`` of ``column`` over ``7d``" is part of ``mlcycle.yaml`` (``features.aggregations``),
so the project config validates it; the engines that compute it (DuckDB offline, the incremental
stream engine) are ``mlcycle.features.aggregations``, which re-exports every name here. The split
keeps the config at the bottom of the layers (docs/architecture.md): reading a config imports
pydantic, not DuckDB, and not the feature stage above it. Semantics of the declarations are
described in ``mlcycle.features.aggregations``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator, model_validator
from pydantic_core import PydanticCustomError

if TYPE_CHECKING:  # Feast (slow to import) only where a declaration is converted for its registry
    from feast.aggregation import Aggregation as FeastAggregation

Function = Literal["count", "sum", "mean", "min", "max", "count_distinct"]
FUNCTIONS: tuple[str, ...] = ("count", "sum", "mean", "min", "max", "count_distinct")
NUMERIC_FUNCTIONS = frozenset({"sum", "mean", "min", "max"})

# Error types (``pydantic.ValidationError.errors()[i]["type"]``): a config loader reports them with
# their location (``aggregations.2.window``) and a test can tell them apart.
UNKNOWN_FUNCTION = "aggregation_unknown_function"
BAD_WINDOW = "aggregation_bad_window"
MISSING_COLUMN = "aggregation_missing_column"
UNEXPECTED_COLUMN = "aggregation_unexpected_column"
BAD_NAME = "aggregation_bad_name"
DUPLICATE_NAME = "aggregation_duplicate_name"

_WINDOW_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_US = 1_000_000


def parse_window(value: str | timedelta) -> timedelta:
    """``"30m"``, ``"1h"``, ``"24h"``, ``"7d"``, ``"2w"`` (or a timedelta) → a positive timedelta of whole seconds.

    One integer and one unit only: a window is a feature's name as much as a duration, and
    ``"1h30m"`` or ``"1.5h"`` read badly in both.
    """
    if isinstance(value, timedelta):
        window = value
    elif isinstance(value, str):
        match = _WINDOW_RE.match(value.lower())
        if not match:
            raise PydanticCustomError(
                BAD_WINDOW,
                "bad window {value}: write an integer and a unit among s, m, h, d, w (e.g. '1h', '24h', '7d')",
                {"value": repr(value)},
            )
        window = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    else:
        raise PydanticCustomError(
            BAD_WINDOW, "bad window {value}: give text such as '1h' or '7d', or a timedelta", {"value": repr(value)}
        )
    if window <= timedelta(0) or window % timedelta(seconds=1):
        raise PydanticCustomError(
            BAD_WINDOW, "bad window {value}: it must be a positive whole number of seconds", {"value": repr(str(value))}
        )
    return window


def format_window(window: timedelta) -> str:
    """The short text of a window, for output names: 2d and more in days, else hours, minutes, seconds.

    24 hours stays ``"24h"`` (how people say it); 48 hours becomes ``"2d"``.
    """
    seconds = int(window.total_seconds())
    if seconds % 86400 == 0 and seconds >= 2 * 86400:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class WindowAggregation(BaseModel):
    """One aggregate: ``function`` of ``column`` over the trailing ``window``, per entity.

    ``column`` is required for every function but ``count``, which counts events and takes none
    (SQL's ``count(column)`` would count non-missing values: a different feature, easy to confuse).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    function: Function
    column: str | None = None
    window: timedelta
    name: str | None = Field(default=None, description="output feature name; default {function}_{column}_{window}")

    @field_validator("function", mode="before")
    @classmethod
    def _known_function(cls, value: Any) -> Any:
        if value not in FUNCTIONS:
            raise PydanticCustomError(
                UNKNOWN_FUNCTION,
                "unknown aggregation function {value}: use one of {allowed}",
                {"value": repr(value), "allowed": ", ".join(FUNCTIONS)},
            )
        return value

    @field_validator("window", mode="before")
    @classmethod
    def _parse_window(cls, value: Any) -> timedelta:
        return parse_window(value)

    @field_serializer("window", when_used="json")
    def _window_text(self, window: timedelta) -> str:
        """Written back the way it is declared ("24h", not ISO 8601's "P1D"): a config dumped to
        JSON (the training run's config artifact, which ``reproduce`` reloads) must load again."""
        return format_window(window)

    @model_validator(mode="after")
    def _column_rules(self) -> WindowAggregation:
        if self.function == "count" and self.column is not None:
            raise PydanticCustomError(
                UNEXPECTED_COLUMN,
                "count counts events and takes no column (got {column}); drop 'column', or use "
                "count_distinct for the number of distinct values",
                {"column": repr(self.column)},
            )
        if self.function != "count" and not self.column:
            raise PydanticCustomError(
                MISSING_COLUMN, "{function} needs a column to aggregate", {"function": self.function}
            )
        if not _IDENTIFIER.match(self.output_name):
            raise PydanticCustomError(
                BAD_NAME,
                "output name {name} is not a valid feature name (letters, digits, underscores; not a digit "
                "first): set 'name'",
                {"name": repr(self.output_name)},
            )
        return self

    @property
    def output_name(self) -> str:
        if self.name:
            return self.name
        parts = (
            [self.function, self.column, format_window(self.window)]
            if self.column
            else ["count", format_window(self.window)]
        )
        return "_".join(parts)

    def to_feast(self) -> FeastAggregation:
        """Feast's declaration (what a ``StreamFeatureView`` registers), named with our output name."""
        from feast.aggregation import Aggregation as FeastAggregation

        return FeastAggregation(
            column=self.column or "", function=self.function, time_window=self.window, name=self.output_name
        )

    @classmethod
    def from_feast(cls, aggregation: FeastAggregation) -> WindowAggregation:
        """Back from a Feast declaration (e.g. read from a registered ``StreamFeatureView``), validated.

        A Feast sliding window (``slide_interval`` shorter than ``time_window``) is refused: our engines
        compute exact trailing windows at each event, not hops.
        """
        slide = aggregation.slide_interval
        if slide is not None and aggregation.time_window is not None and slide != aggregation.time_window:
            raise ValueError(
                f"aggregation {aggregation.name or aggregation.function!r}: slide_interval {slide} differs from "
                f"time_window {aggregation.time_window}; only exact trailing windows are supported"
            )
        return cls(
            function=aggregation.function,
            column=aggregation.column or None,
            window=aggregation.time_window,
            name=aggregation.name or None,
        )


def grid(functions: Iterable[str], windows: Iterable[str | timedelta], column: str | None = None) -> list[dict]:
    """Declarations for every (function, window) pair on one column, in that order (a shorthand).

    Returns plain dicts so the caller's :class:`AggregationSpec` validates them with their position.
    """
    return [{"function": f, "column": column, "window": w} for w in windows for f in functions]


class AggregationSpec(BaseModel):
    """The aggregations of one entity (one or more key columns), over one events table's timestamp."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    entities: tuple[str, ...] = Field(min_length=1)
    timestamp: str = "event_timestamp"
    aggregations: tuple[WindowAggregation, ...] = Field(min_length=1)
    expire_on_time: bool = Field(
        False,
        description="Feature tables also hold the state at each instant an event leaves a window (a 1h count "
        "drops an event an hour later, without a new event), and the stream consumer writes it online then. "
        "False: the state as of the entity's last event, as it stood after that event.",
    )
    last_event_column: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="The table's column holding the entity's last event time (Unix seconds); "
        "default '<table>_last_event_unix'. The stream consumer writes it beside the aggregates.",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> AggregationSpec:
        seen: dict[str, int] = {}
        for i, agg in enumerate(self.aggregations):
            name = agg.output_name
            if name in seen:
                raise PydanticCustomError(
                    DUPLICATE_NAME,
                    "duplicate output name {name} (aggregations {first} and {second}): give one a 'name'",
                    {"name": repr(name), "first": seen[name], "second": i},
                )
            if name in self.entities or name == self.timestamp:
                raise PydanticCustomError(
                    DUPLICATE_NAME,
                    "output name {name} (aggregation {index}) is also a key column: give it another 'name'",
                    {"name": repr(name), "index": i},
                )
            seen[name] = i
        return self

    @property
    def output_names(self) -> list[str]:
        return [a.output_name for a in self.aggregations]

    @property
    def windows(self) -> list[timedelta]:
        """Distinct windows, shortest first."""
        return sorted({a.window for a in self.aggregations})

    @property
    def columns(self) -> list[str]:
        """Source columns the aggregations read, in declaration order."""
        return list(dict.fromkeys(a.column for a in self.aggregations if a.column))

    def to_feast(self) -> list[FeastAggregation]:
        return [a.to_feast() for a in self.aggregations]
