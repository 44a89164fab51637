"""Typed decisions with their evidence: every gate, check and verdict in the loop is one of these.

A person reading a run later must see what was measured, against which bound, and why it passed
or failed — not a bare boolean.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Comparison = Literal[">=", "<=", "within"]


@dataclass(frozen=True)
class CheckResult:
    name: str
    value: float | None
    bound: float | tuple[float, float] | None
    comparison: Comparison
    passed: bool
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        if isinstance(self.bound, tuple):
            bound = f"[{self.bound[0]:.4g}, {self.bound[1]:.4g}]"
        else:
            bound = "n/a" if self.bound is None else f"{self.bound:.4g}"
        extra = f" — {self.detail}" if self.detail else ""
        return f"{mark}  {self.name}: {value} {self.comparison} {bound}{extra}"


def at_least(name: str, value: float | None, bound: float, detail: str = "", **evidence: Any) -> CheckResult:
    ok = value is not None and value >= bound
    return CheckResult(name, value, bound, ">=", ok, detail, evidence)


def at_most(name: str, value: float | None, bound: float, detail: str = "", **evidence: Any) -> CheckResult:
    ok = value is not None and value <= bound
    return CheckResult(name, value, bound, "<=", ok, detail, evidence)


def within(name: str, value: float | None, low: float, high: float, detail: str = "", **evidence: Any) -> CheckResult:
    ok = value is not None and low <= value <= high
    return CheckResult(name, value, (low, high), "within", ok, detail, evidence)


@dataclass(frozen=True)
class Verdict:
    """A named set of checks; it passes when every check does."""

    kind: str
    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def markdown(self) -> str:
        rows = ["| check | value | bound | result | detail |", "|---|---|---|---|---|"]
        for c in self.checks:
            bound = c.bound if not isinstance(c.bound, tuple) else f"{c.bound[0]:.4g} – {c.bound[1]:.4g}"
            value = "n/a" if c.value is None else f"{c.value:.4g}"
            bound_s = "n/a" if bound is None else (f"{bound:.4g}" if isinstance(bound, float) else str(bound))
            rows.append(
                f"| {c.name} | {value} | {c.comparison} {bound_s} | {'PASS' if c.passed else '**FAIL**'} | {c.detail} |"
            )
        status = "passed" if self.passed else f"FAILED ({', '.join(c.name for c in self.failed)})"
        return f"**{self.kind}: {status}**\n\n" + "\n".join(rows) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "passed": self.passed, "checks": [asdict(c) for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)
