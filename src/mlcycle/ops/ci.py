"""``mlcycle ci``: the checks a change to a project must pass before it merges, each a JUnit test case.

Steps, in order (each reads the project as it is in the working tree):

1. ``config``      the config and the ci profile validate; ``feast plan`` of the feature definitions
                   against the registry (nothing to apply: the registry is these definitions); the
                   FeatureService exists; every behavioural check names a model input.
2. ``contract``    the latest ``ci.contract_rows`` rows of the table against the data contract.
3. ``skew``        ``ci.skew_entities`` entities: the online vector equals the offline row now.
4. ``smoke_train`` training-set checks and a training with the ``ci`` hyperparameter profile on the
                   latest ``ci.window_days`` matured days (at most ``ci.max_rows`` rows), in memory:
                   nothing is logged to MLflow, registered, or moved.
5. ``golden_set``  the golden set's sha256 against its pin, then the gates on it (latency aside).
6. ``champion``    the smoke model against the champion on the same rows (the golden set, else the
                   smoke test window), within ``ci.max_champion_drop``.
7. ``behaviour``   the declared invariance and direction checks.
8. ``bento``       ``mlcycle build`` into a scratch BentoML store (a separate process).

A step ends ``pass``, ``fail``, ``not_measurable`` (the data cannot decide: no champion yet, no
golden set; never a pass) or ``skipped`` (not asked for, nothing declared, or an earlier step it
needs failed). CI fails on any ``fail``; with ``ci.strict`` (or ``--strict``) on ``not_measurable`` too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from mlcycle.decisions import CheckResult, Verdict, at_least, at_most
from mlcycle.project.config import DEFAULT_CONFIG_NAME, ConfigError, InvarianceCheck, ProjectConfig, load_config
from mlcycle.training import golden
from mlcycle.training.fit import TIME_COLUMN

Status = Literal["pass", "fail", "not_measurable", "skipped"]
STEPS = ("config", "contract", "skew", "smoke_train", "golden_set", "champion", "behaviour", "bento")
GOLDEN_ROWS = 2000


class CIError(RuntimeError):
    """A ``mlcycle ci`` command that cannot start (no project, nothing to pin); the message says the fix."""


@dataclass
class StepResult:
    name: str
    status: Status
    detail: str
    seconds: float = 0.0
    checks: tuple[CheckResult, ...] = ()

    def text(self) -> str:
        return "\n".join([self.detail, *(c.line() for c in self.checks)])


@dataclass
class CIReport:
    project: str
    steps: list[StepResult] = field(default_factory=list)
    strict: bool = False

    @property
    def failed(self) -> list[StepResult]:
        bad: tuple[str, ...] = ("fail", "not_measurable") if self.strict else ("fail",)
        return [s for s in self.steps if s.status in bad]

    @property
    def ok(self) -> bool:
        return not self.failed

    def junit(self) -> ET.ElementTree:
        """JUnit XML (one testsuite, a testcase per step) as CI systems read it: ``failure`` for a
        failed step, ``skipped`` for one not run or not measurable (its message says which)."""
        count = {s: sum(step.status == s for step in self.steps) for s in ("fail", "not_measurable", "skipped")}
        suite = ET.Element(
            "testsuite",
            name=f"mlcycle ci ({self.project})",
            tests=str(len(self.steps)),
            failures=str(len(self.failed)),
            errors="0",
            skipped=str(count["skipped"] + count["not_measurable"] - (count["not_measurable"] if self.strict else 0)),
            time=f"{sum(s.seconds for s in self.steps):.3f}",
            timestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
        )
        for step in self.steps:
            case = ET.SubElement(suite, "testcase", classname="mlcycle.ci", name=step.name, time=f"{step.seconds:.3f}")
            first = step.detail.splitlines()[0] if step.detail else step.status
            if step in self.failed:
                kind = "failure" if step.status == "fail" else "not measurable (ci.strict)"
                ET.SubElement(case, "failure", message=first, type=kind).text = step.text()
            elif step.status in ("skipped", "not_measurable"):
                label = "not measurable yet: " if step.status == "not_measurable" else "skipped: "
                ET.SubElement(case, "skipped", message=label + first).text = step.text()
            ET.SubElement(case, "system-out").text = step.text()
        root = ET.Element("testsuites", name="mlcycle ci")
        root.append(suite)
        ET.indent(root)
        return ET.ElementTree(root)

    def write_junit(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.junit().write(path, encoding="utf-8", xml_declaration=True)
        return path


class _Fail(Exception):
    def __init__(self, detail: str, checks: Iterable[CheckResult] = ()) -> None:
        super().__init__(detail)
        self.detail, self.checks = detail, tuple(checks)


class _Unmeasurable(_Fail):
    pass


class _Skip(_Fail):
    pass


# ----------------------------------------------------------------------------- the run
class _Run:
    """What the steps share: the store, its plan, the table, the smoke model, the golden rows."""

    def __init__(self, cfg: ProjectConfig, bento_home: Path | None) -> None:
        self.cfg = cfg
        self.bento_home = bento_home
        self.store: Any = None
        self.plan: Any = None
        self.table: pd.DataFrame | None = None
        self.candidate: Any = None
        self.golden: pd.DataFrame | None = None
        self.golden_failed = False

    # ------------------------------------------------------------------ helpers
    def open_store(self) -> Any:
        if self.store is None:
            from mlcycle.features.store import open_project_store, plan_for

            self.store = open_project_store(self.cfg)
            self.plan = plan_for(self.store, self.cfg.features.feature_service)
        return self.store

    def load_table(self) -> pd.DataFrame:
        if self.table is None:
            from mlcycle.data.validation import load_table

            self.table = load_table(self.cfg)
        return self.table

    def needs_model(self) -> None:
        if self.candidate is None:
            raise _Skip("needs the smoke model (step smoke_train did not train one)")

    def golden_keys(self) -> tuple[list[str], set[str]] | None:
        """The columns that identify a row (the event id, else the entity keys and event time) and
        the golden set's values of them, when a golden set is pinned and its file is the pinned one."""
        pin, t = self.cfg.evaluation.golden_set, self.cfg.table
        if pin is None:
            return None
        path = self.cfg.resolve(pin.path)
        try:
            golden.check_pin(path, pin.sha256)
        except golden.GoldenSetError:
            return None  # refused by the golden_set step, by name
        rows = pd.read_parquet(path)
        keys = [t.event_id] if t.event_id else [*t.entities, t.timestamp]
        rows = rows.rename(columns={t.timestamp: TIME_COLUMN})
        keys = [TIME_COLUMN if k == t.timestamp else k for k in keys]
        if TIME_COLUMN in keys:
            rows[TIME_COLUMN] = pd.to_datetime(rows[TIME_COLUMN], utc=True)
        return keys, set(_row_keys(rows, keys))

    def eval_rows(self) -> tuple[pd.DataFrame, str]:
        if self.golden is not None and not self.golden.empty:
            return self.golden, f"the golden set ({len(self.golden):,} rows)"
        test = self.candidate.split.test
        return test, f"the smoke model's test window ({len(test):,} rows; no golden set)"

    # ------------------------------------------------------------------ steps
    def step_config(self) -> str:
        cfg = self.cfg
        spec = cfg.ci.model_spec(cfg.model)
        spec.check_task(cfg.task)
        diff = feast_plan(cfg)
        self.open_store()
        inputs = set(self.plan.model_features)
        requested = set(self.plan.request_fields) - {"request_unix"}
        declared = [c.field for c in [*cfg.evaluation.invariance, *cfg.evaluation.direction]]
        if unknown := sorted(set(declared) - inputs - requested):
            raise _Fail(f"behavioural checks name fields that are neither a request field nor a model input: "
                        f"{', '.join(unknown)} (request fields: {', '.join(sorted(requested)) or 'none'}; model "
                        f"inputs of {cfg.features.feature_service}: {', '.join(sorted(inputs))})")  # fmt: skip
        if diff:
            raise _Fail(
                "the Feast registry is not these feature definitions (feast plan):\n"
                + "\n".join(diff)
                + "\nApply them first: `mlcycle features publish` (the other steps read the registry)"
            )
        return (f"config valid (ci profile: {spec.flavor}); feast plan: registry up to date; "
                f"{cfg.features.feature_service}: {len(inputs)} model inputs")  # fmt: skip

    def step_contract(self) -> str:
        from mlcycle.data.validation import validate_table

        table = self.load_table()
        sample = table.sort_values(self.cfg.table.timestamp, kind="stable").tail(self.cfg.ci.contract_rows)
        report = validate_table(sample, self.cfg)
        if not report.ok:
            raise _Fail(f"the latest {len(sample):,} rows break the contract:\n{report.summary()}")
        return f"the latest {len(sample):,} of {len(table):,} rows meet the contract"

    def step_skew(self) -> str:
        from mlcycle.features.store import entity_frame, online_vector, skew_report, training_set

        cfg, fs = self.cfg, self.open_store()
        t, plan, service = cfg.table, self.plan, cfg.features.feature_service
        table = self.load_table().sort_values(t.timestamp, kind="stable")
        rows = (table.drop_duplicates(t.entities, keep="last") if t.entities else table).tail(cfg.ci.skew_entities)
        if rows.empty:
            raise _Unmeasurable("the table has no rows to compare")
        when = datetime.now(UTC).replace(microsecond=0)
        entity = entity_frame(rows, t.entities, plan.request_fields, t.timestamp).drop(columns=["event_timestamp"])
        entity["request_unix"] = int(when.timestamp())
        request = entity.drop(columns=list(t.entities))
        online = online_vector(fs, _records(entity, t.entities), request.to_dict("records"), service, now=when)
        offline = training_set(fs, entity.assign(event_timestamp=pd.Timestamp(when)), service)
        report = skew_report(online, offline, plan.model_features)
        stored = [f for f in plan.model_features if f in online and f not in request]
        if report:
            worst = ", ".join(f"{col} ({n} rows)" for col, n in sorted(report.items(), key=lambda kv: -kv[1]))
            raise _Fail(f"train/serve skew on {len(rows)} entities at {when:%Y-%m-%d %H:%M:%S} UTC: online vectors "
                        f"differ from offline rows in {worst}. Rebuild and republish the features "
                        "(`mlcycle features build && mlcycle features publish`), or fix the definition both "
                        "paths should share")  # fmt: skip
        if t.entities and plan.view_refs and not online["features_missing"].map(len).lt(len(stored) or 1).any():
            raise _Unmeasurable(f"the online store holds nothing for {len(rows)} entities: nothing was compared "
                                "(run `mlcycle features publish`)")  # fmt: skip
        return f"{len(rows)} entities × {len(plan.model_features)} features: online = offline"

    def step_smoke_train(self) -> str:
        from mlcycle.data.validation import check_training_set
        from mlcycle.features.pipeline import build_training_set
        from mlcycle.training.fit import train_candidate

        cfg = self.cfg
        self.open_store()
        features = list(self.plan.model_features)
        # The window counts back from the newest matured event, not from today: a table of past
        # events (a replayed history) has its own calendar, as `mlcycle train` has with no window.
        frame = build_training_set(cfg)
        if frame.empty:
            raise _Fail("no matured labelled rows to train on (table.label_delay after each event)")
        if cfg.ci.window_days:
            frame = frame.loc[frame[TIME_COLUMN] > frame[TIME_COLUMN].max() - pd.Timedelta(days=cfg.ci.window_days)]
        held_out = ""
        if (golden_keys := self.golden_keys()) is not None:  # the golden rows are judged on, never learnt
            keys, values = golden_keys
            seen = _row_keys(frame, keys).isin(values).to_numpy()
            frame, held_out = frame.loc[~seen], f"; {int(seen.sum()):,} golden-set rows held out"
        frame = frame.sort_values(TIME_COLUMN, kind="stable").tail(cfg.ci.max_rows).reset_index(drop=True)
        quality = check_training_set(frame, features, cfg.table.label, cfg.quality, cfg.task)
        if not quality.passed:
            raise _Fail(f"training-set checks failed on {len(frame):,} rows", quality.checks)
        spec = cfg.ci.model_spec(cfg.model)
        self.candidate = train_candidate(frame, features, spec, label=cfg.table.label, task=cfg.task,
                                         slices=cfg.table.slices, protected=cfg.table.protected)  # fmt: skip
        window = f"{cfg.ci.window_days} days to the newest matured event" if cfg.ci.window_days else "all matured days"
        return (f"trained on {len(self.candidate.split.train):,} rows (ci profile, {window}{held_out}), test "
                f"{_metrics(self.candidate.report)}; nothing registered")  # fmt: skip

    def step_golden_set(self) -> tuple[str, tuple[CheckResult, ...]]:
        from mlcycle.training.evaluation import evaluate
        from mlcycle.training.gates import run_gates

        cfg = self.cfg
        pin = cfg.evaluation.golden_set
        if pin is None:
            raise _Unmeasurable("no golden set declared (evaluation.golden_set): make and pin one with "
                                "`mlcycle ci golden`")  # fmt: skip
        path = cfg.resolve(pin.path)
        try:
            golden.check_pin(path, pin.sha256)
        except golden.GoldenSetError as exc:
            self.golden_failed = True
            raise _Fail(str(exc)) from None
        self.golden = golden_rows(cfg, self.open_store(), self.plan, path)
        if self.golden.empty:
            raise _Unmeasurable(f"golden set {path}: no matured labelled rows")
        self.needs_model()
        m = self.candidate.model
        report = evaluate(self.golden, m.predict(self.golden), cfg.table.label, m.threshold, task=cfg.task,
                          slices=cfg.table.slices, protected=cfg.table.protected)  # fmt: skip
        verdict = run_gates(report, cfg.gates, None, protected=cfg.table.protected)
        checks = tuple(c for c in verdict.checks if c.name not in ("max_p99_latency_ms", "no_regression_vs_champion"))
        return _verdict_step(Verdict("golden set gates", checks),
                             f"gates on the golden set ({len(self.golden):,} rows, sha256 pinned): "
                             f"{_metrics(report)}; latency is judged by `mlcycle train`, not here")  # fmt: skip

    def step_champion(self) -> tuple[str, tuple[CheckResult, ...]]:
        from mlcycle.ops.bento import BuildError, NoChampion, champion_version
        from mlcycle.registry.aliases import client_for
        from mlcycle.registry.tracking import champion_report
        from mlcycle.training.evaluation import evaluate

        if self.golden_failed:
            raise _Skip("the golden set was refused")
        self.needs_model()
        cfg = self.cfg
        try:
            version = champion_version(cfg)
        except NoChampion as exc:
            raise _Unmeasurable(str(exc)) from None
        except BuildError as exc:
            raise _Unmeasurable(f"cannot read the champion: {exc}") from None
        rows, where = self.eval_rows()
        theirs = champion_report(client_for(cfg), cfg, rows)
        if theirs is None:
            raise _Unmeasurable(f"champion v{version} cannot score {where} (it reads features these rows lack)")
        m = self.candidate.model
        ours = evaluate(rows, m.predict(rows), cfg.table.label, m.threshold, task=cfg.task)
        drop = cfg.ci.max_champion_drop
        if cfg.task == "regression":
            a, b = ours.overall.rmse, theirs.overall.rmse
            value = None if a is None or not b else a / b - 1
            check = at_most("rmse_increase_vs_champion", value, drop,
                            f"smoke RMSE {a:.4g} vs champion v{version} {b:.4g} on {where}")  # fmt: skip
        else:
            a, b = ours.overall.roc_auc, theirs.overall.roc_auc
            value = None if a is None or b is None else a - b
            check = at_least("roc_auc_vs_champion", value, -drop,
                             f"smoke ROC-AUC {a:.4f} vs champion v{version} {b:.4f} on {where}")  # fmt: skip
        return _verdict_step(Verdict("champion", (check,)), f"smoke model vs champion v{version} on {where}")

    def step_behaviour(self) -> tuple[str, tuple[CheckResult, ...]]:
        from mlcycle.training import behaviour

        ev = self.cfg.evaluation
        if not ev.invariance and not ev.direction:
            raise _Skip("no behavioural checks declared (evaluation.invariance, evaluation.direction)")
        self.needs_model()
        from mlcycle.features.store import training_set

        rows, where = self.eval_rows()
        m, t, service = self.candidate.model, self.cfg.table, self.cfg.features.feature_service
        # A request field changes what the request carries: the rows' features are computed again
        # through the same join (on-demand features included), as of each row's own time. A model
        # input is changed in the model's own input row.
        request = [f for f in self.plan.request_fields if f in rows]
        entities = rows[[*t.entities, TIME_COLUMN, *request]].reset_index(drop=True)

        def from_request(changed: pd.DataFrame) -> np.ndarray:
            return m.predict(training_set(self.store, changed, service))

        def check(c: Any) -> CheckResult:
            frame, predict, fields = (
                (entities, from_request, request) if c.field in request else (rows, m.predict, m.features)
            )
            if isinstance(c, InvarianceCheck):
                return behaviour.invariance(predict, frame, fields, c.field, c.values, c.max_change)
            return behaviour.direction(predict, frame, fields, c.field, c.values, c.direction, c.tolerance)

        checks = tuple(check(c) for c in [*ev.invariance, *ev.direction])
        return _verdict_step(Verdict("behaviour", checks), f"{len(checks)} behavioural checks on {where}")

    def step_bento(self) -> str:
        from mlcycle.ops.bento import BuildError, NoChampion, champion_version

        try:
            champion_version(self.cfg)
        except NoChampion as exc:
            raise _Unmeasurable(f"nothing to package: {exc}") from None
        except BuildError as exc:
            raise _Fail(str(exc)) from None
        with tempfile.TemporaryDirectory(prefix="mlcycle-ci-bento-") as scratch:
            home = self.bento_home or Path(scratch)
            cmd = [sys.executable, "-c", "from mlcycle.cli import main; main()", "build", "--config",
                   str(self.cfg.root / DEFAULT_CONFIG_NAME)]  # fmt: skip
            env = {**os.environ, "BENTOML_HOME": str(home), "COLUMNS": "200"}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=self.cfg.root, timeout=900)
        out = (done.stdout + done.stderr).strip()
        if done.returncode != 0:
            raise _Fail(f"mlcycle build failed (exit {done.returncode}):\n{out[-3000:]}")
        built = next((line for line in out.splitlines() if line.startswith("Built Bento")), out.splitlines()[0])
        where = "" if self.bento_home else " (scratch BENTOML_HOME, removed)"
        return built + where


def _row_keys(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """One text per row identifying it: its ``keys`` columns joined."""
    out = frame[keys[0]].astype(str).reset_index(drop=True)
    for key in keys[1:]:
        out = out + "|" + frame[key].astype(str).reset_index(drop=True)
    return out


def _records(frame: pd.DataFrame, columns: list[str]) -> list[dict[str, Any]]:
    """Rows of ``columns`` as dicts; one empty dict per row when there are none (a project without
    entity keys: every feature comes in the request)."""
    return frame[list(columns)].to_dict("records") if columns else [{} for _ in range(len(frame))]


def _metrics(report: Any) -> str:
    o = report.overall
    if report.task == "regression":
        return f"RMSE {o.rmse:.4g}, MAE {o.mae:.4g}"
    auc, pr = ("n/a" if v is None else f"{v:.4f}" for v in (o.roc_auc, o.pr_auc))
    return f"ROC-AUC {auc}, PR-AUC {pr}"


def _verdict_step(verdict: Verdict, detail: str) -> tuple[str, tuple[CheckResult, ...]]:
    if verdict.state == "fail":
        names = ", ".join(c.name for c in verdict.measured_failures)
        raise _Fail(f"{detail}\nfailed: {names}", verdict.checks)
    if verdict.state == "not_measurable":
        names = ", ".join(c.name for c in verdict.undecided)
        raise _Unmeasurable(f"{detail}\nnot measurable: {names}", verdict.checks)
    return detail, verdict.checks


def feast_plan(cfg: ProjectConfig) -> list[str]:
    """``feast plan`` of the project's repo, in-process: the registry objects its definitions would
    create, update or delete (empty: the registry is these definitions). Parsing the repo imports
    the definitions, so a broken one fails here with Feast's own error."""
    import contextlib
    import io

    from feast.diff.property_diff import TransitionType
    from feast.repo_config import load_repo_config
    from feast.repo_operations import _get_repo_contents

    from mlcycle.features.store import fs_yaml_for, open_store

    repo = cfg.feature_repo_path.resolve()
    config = load_repo_config(repo, fs_yaml_for(cfg))
    for module_file in repo.glob("*.py"):  # another copy of the same module names must really be read
        sys.modules.pop(module_file.stem, None)
    cwd = os.getcwd()
    sys.path.insert(0, str(repo))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            os.chdir(repo)  # Feast imports the repo's files as top-level modules, as its CLI does
            contents = _get_repo_contents(repo, config.project, config)
            store = open_store(repo, fs_yaml_for(cfg))
            registry_diff, _, _ = store.plan(contents)
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo))
    out = []
    for d in registry_diff.feast_object_diffs:
        if d.transition_type in (TransitionType.UNCHANGED, TransitionType.UNKNOWN):
            continue
        changed = [p.property_name for p in d.feast_object_property_diffs
                   if _stamped(p.val_existing) != _stamped(p.val_declared)]  # fmt: skip
        if changed or d.transition_type != TransitionType.UPDATE:
            what = f" ({', '.join(changed)})" if changed else ""
            out.append(f"  {d.transition_type.name.lower()} {d.feast_object_type.name.lower()} {d.name}{what}")
    return out


def _stamped(value: Any) -> str:
    """A registry property as text without its creation and update times, its feature columns in
    name order: Feast's plan reports an object as updated when only those differ (each parse stamps
    a data source anew; a feature service's projections come back in another column order)."""
    text = re.sub(r"\s*(created|last_updated)_timestamp \{[^}]*\}", "", str(value))
    text = re.sub(r"\s*meta \{\s*\}", "", text)
    columns = re.compile(r"feature_columns \{[^{}]*\}")
    parts = re.split(r"(feature_view_name: )", columns.sub("", text))
    return "".join(parts) + "\n".join(sorted(columns.findall(text)))


def golden_rows(cfg: ProjectConfig, store: Any, plan: Any, path: Path) -> pd.DataFrame:
    """The golden set's rows (the table's own columns) as evaluation rows: each row's features as of
    its own event, through the current definitions and offline store, with its label."""
    from mlcycle.data.validation import load_table
    from mlcycle.features.pipeline import carried_columns, labelled_entities
    from mlcycle.features.store import training_set

    table = load_table(cfg, path)
    entities = labelled_entities(table, cfg, None, None, plan.request_fields, carried_columns(cfg, table, plan))
    if entities.empty:
        return entities
    return training_set(store, entities.reset_index(drop=True), cfg.features.feature_service)


def run_ci(
    cfg: ProjectConfig,
    skip: Iterable[str] = (),
    strict: bool | None = None,
    bento_home: Path | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> CIReport:
    """Every step in order; a step that raises is a failure with its own message, never a traceback."""
    skip = set(skip)
    if unknown := sorted(skip - set(STEPS)):
        raise CIError(f"no such ci step: {', '.join(unknown)} (steps: {', '.join(STEPS)})")
    run = _Run(cfg, bento_home)
    report = CIReport(cfg.project, strict=cfg.ci.strict if strict is None else strict)
    config_failed = False
    for name in STEPS:
        started = time.perf_counter()
        checks: tuple[CheckResult, ...] = ()
        if name in skip:
            status, detail = "skipped", "not asked for (--skip)"
        elif config_failed:
            status, detail = "skipped", "the config step failed"
        else:
            try:
                out = getattr(run, f"step_{name}")()
                detail, checks = out if isinstance(out, tuple) else (out, ())
                status = "pass"
            except _Skip as exc:
                status, detail, checks = "skipped", exc.detail, exc.checks
            except _Unmeasurable as exc:
                status, detail, checks = "not_measurable", exc.detail, exc.checks
            except _Fail as exc:
                status, detail, checks = "fail", exc.detail, exc.checks
            except Exception as exc:  # the step's own error (Feast, pandera, a hook): named, not a traceback
                status, detail = "fail", f"{type(exc).__name__}: {exc}"
            config_failed = name == "config" and status == "fail"
        result = StepResult(name, status, detail, time.perf_counter() - started, checks)  # type: ignore[arg-type]
        report.steps.append(result)
        if on_step:
            on_step(result)
    return report


# ----------------------------------------------------------------------------- the golden set
@dataclass
class Pinned:
    path: Path
    sha256: str
    rows: int
    written: bool


def make_golden_set(cfg: ProjectConfig, rows: int = GOLDEN_ROWS, out: Path | None = None) -> pd.DataFrame:
    """The table's latest ``rows`` matured labelled rows, with all their columns."""
    from mlcycle.data.validation import load_table
    from mlcycle.features.pipeline import default_as_of, label_arrival

    table = load_table(cfg)
    t = cfg.table
    as_of = default_as_of()
    cutoff = as_of - pd.Timedelta(days=t.label_delay_days)
    matured = (table[t.timestamp] <= cutoff) & (label_arrival(table, cfg) <= as_of) & table[t.label].notna()
    chosen = table.loc[matured].sort_values(t.timestamp, kind="stable").tail(rows)
    if chosen.empty:
        raise CIError(f"the table {cfg.table_path} has no matured labelled rows to freeze as a golden set yet")
    return chosen.reset_index(drop=True)


def pin_golden_set(cfg: ProjectConfig, rows: int = GOLDEN_ROWS, rewrite: bool = False, repin: bool = False) -> Pinned:
    """Write (or keep) the golden set file and pin its sha256 in the project's mlcycle.yaml.

    No golden set declared: write the table's latest matured rows and pin them. Declared: ``repin``
    pins the file as it is now (a deliberate change); ``rewrite`` writes new rows and pins them;
    neither: refused (a pinned golden set never changes by accident)."""
    declared = cfg.evaluation.golden_set
    path = cfg.resolve(declared.path) if declared else cfg.resolve(Path("golden/golden_set.parquet"))
    if declared and not (rewrite or repin):
        raise CIError(f"a golden set is pinned already ({path}, sha256 {declared.sha256[:12]}…): pass --repin to pin "
                      "the file as it is now, or --rewrite to freeze the table's latest rows instead")  # fmt: skip
    written = False
    if not declared or rewrite or not path.is_file():
        if repin and not rewrite and not path.is_file():
            raise CIError(f"golden set {path} does not exist: nothing to re-pin (--rewrite writes a new one)")
        frame = make_golden_set(cfg, rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        written = True
    digest = golden.file_sha256(path)
    rel = os.path.relpath(path, cfg.root)
    write_pin(cfg.root / DEFAULT_CONFIG_NAME, Path(rel), digest)
    return Pinned(path, digest, len(pd.read_parquet(path, columns=[cfg.table.timestamp])), written)


def write_pin(config_file: Path, rel: Path, digest: str) -> None:
    """Set ``evaluation.golden_set`` in the config file, keeping the rest of its text (comments
    included); the file is restored when the result does not load with the new pin."""
    before = config_file.read_text()
    block = f"  golden_set:\n    path: {rel.as_posix()}\n    sha256: {digest}\n"
    text = before
    if re.search(r"^evaluation:", text, re.M) is None:
        text = text.rstrip("\n") + "\n\nevaluation:\n" + block
    elif re.search(r"^  golden_set:", text, re.M) is None:
        text = re.sub(r"^evaluation:[^\n]*\n", lambda m: m.group(0) + block, text, count=1, flags=re.M)
    else:
        text = re.sub(r"^(  golden_set:\n(?:    [^\n]*\n)*?    path:)[^\n]*", rf"\g<1> {rel.as_posix()}", text,
                      count=1, flags=re.M)  # fmt: skip
        text = re.sub(r"^(  golden_set:\n(?:    [^\n]*\n)*?    sha256:)[^\n]*", rf"\g<1> {digest}", text,
                      count=1, flags=re.M)  # fmt: skip
    config_file.write_text(text)
    try:
        cfg = load_config(config_file)
        pin = cfg.evaluation.golden_set
        if pin is None or pin.sha256 != digest:
            raise ConfigError(f"{config_file}: the pin did not read back; set evaluation.golden_set by hand")
    except ConfigError:
        config_file.write_text(before)
        raise


# ----------------------------------------------------------------------------- staging
def staging_check(cfg: ProjectConfig, alias: str = "challenger") -> StepResult:
    """The golden set's requests through the online path, scored by the version ``alias`` names
    (alone: no traffic policy, no champion beside it): every request must get a finite score (in
    [0, 1] for classification) and the version must read features the store serves."""
    from mlcycle.data.validation import load_table
    from mlcycle.features.store import entity_frame, online_vector, open_project_store, plan_for
    from mlcycle.registry.aliases import client_for, version_by_alias
    from mlcycle.registry.tracking import FEATURES_TAG, load_version
    from mlcycle.training.fit import matrix

    started = time.perf_counter()
    pin = cfg.evaluation.golden_set
    if pin is None:
        raise CIError("no golden set declared (evaluation.golden_set): make and pin one with `mlcycle ci golden`")
    path = cfg.resolve(pin.path)
    golden.check_pin(path, pin.sha256)  # GoldenSetError: refused, nothing is scored
    mv = version_by_alias(client_for(cfg), cfg.model.name, alias)
    if mv is None:
        raise CIError(f"model {cfg.model.name!r} has no {alias!r} alias: train one (`mlcycle train`) first")
    version = str(mv.version)
    t = cfg.table
    fs = open_project_store(cfg)
    plan = plan_for(fs, cfg.features.feature_service)
    rows = load_table(cfg, path)
    entity = entity_frame(rows, t.entities, plan.request_fields, t.timestamp).drop(columns=["event_timestamp"])
    entity["request_unix"] = int(datetime.now(UTC).timestamp())
    keys = _records(entity, t.entities)
    online = online_vector(fs, keys, entity.drop(columns=list(t.entities)).to_dict("records"),
                           cfg.features.feature_service)  # fmt: skip
    features = json.loads(mv.tags.get(FEATURES_TAG, "[]")) or list(plan.model_features)
    absent = [f for f in features if f not in online]
    checks: list[CheckResult] = []
    if absent:
        checks.append(at_most("features_served", float(len(absent)), 0.0, f"v{version} reads {', '.join(absent)}, "
                              "which the FeatureService does not serve"))  # fmt: skip
    else:
        flavor, model = load_version(cfg, version)
        scores = np.asarray(flavor.predict(model, matrix(online, features)), dtype=float)
        bad = ~np.isfinite(scores)
        if cfg.task == "classification":
            bad |= (scores < 0) | (scores > 1)
        checks.append(at_most("invalid_answers", float(bad.sum()), 0.0,
                              f"{len(scores):,} golden requests scored by v{version} ({alias}) alone"))  # fmt: skip
    verdict = Verdict("staging", tuple(checks))
    status: Status = "pass" if verdict.passed else "fail"
    detail = f"staging of {cfg.model.name} v{version} ({alias}) on {len(rows):,} golden requests"
    return StepResult(f"staging:v{version}", status, detail, time.perf_counter() - started, verdict.checks)
