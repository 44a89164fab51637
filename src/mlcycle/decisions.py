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

    @property
    def interval(self) -> tuple[float, float] | None:
        """The measured value's confidence interval (``ci_low``, ``ci_high`` in the evidence), or None
        for a check that has only a point estimate."""
        low, high = self.evidence.get("ci_low"), self.evidence.get("ci_high")
        if low is None or high is None:
            return None
        return float(low), float(high)

    @property
    def confidence(self) -> float | None:
        """The interval's confidence level (0.95 unless the check recorded another), None without one."""
        return None if self.interval is None else float(self.evidence.get("confidence", 0.95))

    def interval_text(self) -> str:
        """``95% CI 0.2079 … 0.2486``, with how the interval was built when that matters (a lower bound
        adjusted for several comparisons), or that there is none: a reader must not take a point
        estimate for a firm number."""
        if self.interval is None or self.confidence is None:
            return "no interval: a point estimate"
        low, high = self.interval
        note = self.evidence.get("interval_note")
        return f"{self.confidence:.0%} CI {low:.4g} … {high:.4g}" + (f"; {note}" if note else "")

    def bound_text(self) -> str:
        """The bound as judged: ``<= 0.15``, ``within 0.1 … 0.2``, or ``no bound``."""
        if isinstance(self.bound, tuple):
            return f"within {self.bound[0]:.4g} … {self.bound[1]:.4g}"
        return "no bound" if self.bound is None else f"{self.comparison} {self.bound:.4g}"

    def measured(self) -> str:
        """One line saying why this check decided as it did: the measured value (and the groups it
        compares, for a pairwise check), its interval with its confidence level, and the bound.
        What a refused candidate's owner needs to see first: how far from the bound, and how sure.
        A check that could not be measured says why instead of a value."""
        if self.value is None:
            return f"{self.mark} {self.name}: not measured, bound {self.bound_text()} — {self.detail}"
        pair = self.evidence.get("pair")
        what = f"{self.value:.4g}" + (f" for {' vs '.join(map(str, pair))}" if pair else "")
        text = f"{self.mark} {self.name}: measured {what} ({self.interval_text()}), bound {self.bound_text()}"
        return text if self.measurable else f"{text} — {self.detail}"


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
    *,
    confidence: float = 0.95,
    **evidence: Any,
) -> CheckResult:
    """Judge a confidence interval ``[low, high]`` of an estimate against ``bound``.

    Pass when the whole interval is on the right side of the bound, fail when the whole interval is
    on the wrong side, and "not measurable" when it straddles the bound: then the data cannot tell
    a pass from a fail, and passing (or failing) it would be deciding on noise. ``value`` is the
    point estimate; the interval and its ``confidence`` level are in the evidence and the detail."""
    ci = f"{estimate:.4g} ({confidence:.0%} CI {low:.4g} … {high:.4g})"
    text = f"{ci}; {detail}" if detail else ci
    evidence = {"estimate": estimate, "ci_low": low, "ci_high": high, "confidence": confidence, **evidence}
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

    @property
    def reasons(self) -> tuple[str, ...]:
        """Per check that stops the decision (``failed``), its measured value, interval and bound
        (``CheckResult.measured``): a refusal that names only the failed checks leaves its reader
        to dig for how far off the candidate was, and how sure the measurement is."""
        return tuple(c.measured() for c in self.failed)

    def markdown(self) -> str:
        rows = ["| check | value | interval | bound | result | detail |", "|---|---|---|---|---|---|"]
        for c in self.checks:
            bound = c.bound if not isinstance(c.bound, tuple) else f"{c.bound[0]:.4g} – {c.bound[1]:.4g}"
            value = "n/a" if c.value is None else f"{c.value:.4g}"
            bound_s = "n/a" if bound is None else (f"{bound:.4g}" if isinstance(bound, float) else str(bound))
            interval = "—" if c.interval is None else c.interval_text()
            mark = c.mark if c.mark == "PASS" else f"**{c.mark}**"
            rows.append(f"| {c.name} | {value} | {interval} | {c.comparison} {bound_s} | {mark} | {c.detail} |")
        if self.state == "pass":
            warned = ", ".join(c.name for c in self.warnings)
            status = "passed" + (f" with warnings ({warned})" if warned else "")
        elif self.state == "fail":
            status = f"FAILED ({', '.join(c.name for c in self.measured_failures)})"
        else:
            status = f"NOT MEASURABLE YET ({', '.join(c.name for c in self.undecided)})"
        why = "".join(f"- {line}\n" for line in self.reasons)
        return f"**{self.kind}: {status}**\n\n" + (f"{why}\n" if why else "") + "\n".join(rows) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "passed": self.passed,
            "state": self.state,
            "checks": [{**asdict(c), "status": c.status} for c in self.checks],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)
