"""Typed decisions with their evidence: every gate, check and verdict in the loop is one of these.

A person reading a run later must see what was measured, against which bound, and why it passed
or failed — not a bare boolean. A check has three outcomes, not two: the data can show a pass, show
a fail, or be unable to tell the two apart ("not measurable yet": too few rows, or a confidence
interval wider than the tolerance it is judged against). What "not measurable" means for the
decision is the caller's policy, stated in the config and written into the check:

- ``block``: the decision does not go ahead (a training gate refuses the model);
- ``wait``:  nothing is decided yet (a canary step keeps collecting, then aborts if still unsure);
- ``warn``:  the decision goes ahead, and the check is listed as a warning where people read it
  (the model card, the run's tags) — never a silent pass.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Comparison = Literal[">=", "<=", "within"]
Status = Literal["pass", "fail", "not_measurable"]
OnUnmeasurable = Literal["block", "wait", "warn"]


@dataclass(frozen=True)
class CheckResult:
    """One measured check. ``passed`` is what the decision uses; ``measurable`` says whether the data
    could decide at all (a not-measurable check passes only under the ``warn`` policy)."""

    name: str
    value: float | None
    bound: float | tuple[float, float] | None
    comparison: Comparison
    passed: bool
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)
    measurable: bool = True
    policy: OnUnmeasurable | None = None

    @property
    def status(self) -> Status:
        if not self.measurable:
            return "not_measurable"
        return "pass" if self.passed else "fail"

    @property
    def mark(self) -> str:
        if not self.measurable:
            return "WARN" if self.passed else ("WAIT" if self.policy == "wait" else "N/M")
        return "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        value = "n/a" if self.value is None else f"{self.value:.4g}"
        if isinstance(self.bound, tuple):
            bound = f"[{self.bound[0]:.4g}, {self.bound[1]:.4g}]"
        else:
            bound = "n/a" if self.bound is None else f"{self.bound:.4g}"
        extra = f" — {self.detail}" if self.detail else ""
        return f"{self.mark:<4}  {self.name}: {value} {self.comparison} {bound}{extra}"


def at_least(name: str, value: float | None, bound: float, detail: str = "", **evidence: Any) -> CheckResult:
    ok = value is not None and value >= bound
    return CheckResult(name, value, bound, ">=", ok, detail, evidence)


def at_most(name: str, value: float | None, bound: float, detail: str = "", **evidence: Any) -> CheckResult:
    ok = value is not None and value <= bound
    return CheckResult(name, value, bound, "<=", ok, detail, evidence)


def within(name: str, value: float | None, low: float, high: float, detail: str = "", **evidence: Any) -> CheckResult:
    ok = value is not None and low <= value <= high
    return CheckResult(name, value, (low, high), "within", ok, detail, evidence)


def not_measurable(
    name: str,
    bound: float | tuple[float, float] | None,
    comparison: Comparison,
    detail: str,
    policy: OnUnmeasurable,
    value: float | None = None,
    **evidence: Any,
) -> CheckResult:
    """A check the data cannot decide yet; ``detail`` must say why (how many rows, how wide an
    interval) so a reader knows what would make it decidable."""
    text = f"not measurable yet: {detail}" if not detail.startswith("not measurable") else detail
    return CheckResult(name, value, bound, comparison, policy == "warn", text, evidence, False, policy)


def interval_check(
    name: str,
    estimate: float,
    low: float,
    high: float,
    bound: float,
    comparison: Literal[">=", "<="],
    policy: OnUnmeasurable,
    detail: str = "",
    **evidence: Any,
) -> CheckResult:
    """Judge a confidence interval ``[low, high]`` of an estimate against ``bound``.

    Pass when the whole interval is on the right side of the bound, fail when the whole interval is
    on the wrong side, and "not measurable" when it straddles the bound: then the data cannot tell
    a pass from a fail, and passing (or failing) it would be deciding on noise. ``value`` is the
    point estimate; the interval is in the evidence and the detail."""
    ci = f"{estimate:.4g} (95% CI {low:.4g} … {high:.4g})"
    text = f"{ci}; {detail}" if detail else ci
    evidence = {"estimate": estimate, "ci_low": low, "ci_high": high, **evidence}
    good, bad = (low >= bound, high < bound) if comparison == ">=" else (high <= bound, low > bound)
    if good or bad:
        return CheckResult(name, estimate, bound, comparison, good, text, evidence)
    return not_measurable(
        name,
        bound,
        comparison,
        f"the interval straddles the bound {bound:.4g}: {text}",
        policy,
        value=estimate,
        **evidence,
    )


@dataclass(frozen=True)
class Verdict:
    """A named set of checks; it passes when every check does (warnings included as passes)."""

    kind: str
    checks: tuple[CheckResult, ...]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """Checks that stop the decision: measured failures and not-measurable checks that block or wait."""
        return tuple(c for c in self.checks if not c.passed)

    @property
    def measured_failures(self) -> tuple[CheckResult, ...]:
        return tuple(c for c in self.checks if c.measurable and not c.passed)

    @property
    def undecided(self) -> tuple[CheckResult, ...]:
        """Not measurable and not accepted: the decision must wait (or block)."""
        return tuple(c for c in self.checks if not c.measurable and not c.passed)

    @property
    def warnings(self) -> tuple[CheckResult, ...]:
        """Not measurable but accepted under the ``warn`` policy: to be shown wherever the decision is."""
        return tuple(c for c in self.checks if not c.measurable and c.passed)

    @property
    def state(self) -> Status:
        if self.measured_failures:
            return "fail"
        return "not_measurable" if self.undecided else "pass"

    def markdown(self) -> str:
        rows = ["| check | value | bound | result | detail |", "|---|---|---|---|---|"]
        for c in self.checks:
            bound = c.bound if not isinstance(c.bound, tuple) else f"{c.bound[0]:.4g} – {c.bound[1]:.4g}"
            value = "n/a" if c.value is None else f"{c.value:.4g}"
            bound_s = "n/a" if bound is None else (f"{bound:.4g}" if isinstance(bound, float) else str(bound))
            mark = c.mark if c.mark == "PASS" else f"**{c.mark}**"
            rows.append(f"| {c.name} | {value} | {c.comparison} {bound_s} | {mark} | {c.detail} |")
        if self.state == "pass":
            warned = ", ".join(c.name for c in self.warnings)
            status = "passed" + (f" with warnings ({warned})" if warned else "")
        elif self.state == "fail":
            status = f"FAILED ({', '.join(c.name for c in self.measured_failures)})"
        else:
            status = f"NOT MEASURABLE YET ({', '.join(c.name for c in self.undecided)})"
        return f"**{self.kind}: {status}**\n\n" + "\n".join(rows) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "passed": self.passed,
            "state": self.state,
            "checks": [{**asdict(c), "status": c.status} for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)
