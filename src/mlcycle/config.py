"""Typed project configuration: one YAML file drives a project, validated at the edge.

Every path in the file is relative to the file itself, so a project directory can be moved or
copied (tests copy it into a temporary directory). Generated state lives in ``data/`` beside the
file, where ``feature_repo/feature_store.yaml`` points too. ``MLCYCLE_CONFIG`` names the file and
``MLCYCLE_PROFILE`` overrides the storage profile.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_CONFIG_NAME = "mlcycle.yaml"


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in the config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")


class DriftSpec(StrictModel):
    """Changes injected into the generated stream from ``start_day`` on, for monitoring to catch."""

    start_day: int | None = Field(None, ge=0, description="Day (from the stream's start) the drift begins.")
    amount_inflation: float = Field(1.0, gt=0, description="Covariate shift: amounts multiply by this.")
    new_category: str | None = Field(None, description="A merchant category that appears at start_day.")
    new_category_share: float = Field(0.0, ge=0, le=1, description="Share of merchants moving to it.")
    concept_drift: bool = Field(
        False, description="Fraud switches to a domestic, low-amount, daytime pattern."
    )

    @property
    def active(self) -> bool:
        return self.start_day is not None and (
            self.amount_inflation != 1.0
            or (self.new_category is not None and self.new_category_share > 0)
            or self.concept_drift
        )


class DataSpec(StrictModel):
    """Shape of the generated card-transaction stream."""

    seed: int = 42
    start: datetime | None = Field(
        None, description="First day of the stream; unset: the stream ends at today's midnight (UTC)."
    )
    days: int = Field(90, ge=1)
    n_users: int = Field(20_000, ge=10)
    n_merchants: int = Field(2_000, ge=10)
    n_transactions: int = Field(200_000, ge=100)
    fraud_rate: float = Field(0.02, gt=0, lt=0.5, description="Target share of fraudulent transactions.")
    label_maturity_days: float = Field(
        30.0, gt=0, description="A legitimate transaction is confirmed legitimate after the dispute window."
    )
    drift: DriftSpec = DriftSpec()

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def resolved_start(self, now: datetime | None = None) -> datetime:
        """The explicit start, or ``days`` before today's midnight so the stream is current."""
        if self.start is not None:
            return self.start
        today = (now or datetime.now(UTC)).astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=self.days)

    @model_validator(mode="after")
    def _drift_inside_span(self) -> DataSpec:
        if self.drift.start_day is not None and self.drift.start_day >= self.days:
            raise ValueError(f"drift.start_day={self.drift.start_day} must be < days={self.days}")
        return self


class FeaturesSpec(StrictModel):
    feature_repo: Path = Path("feature_repo")
    feature_service: str = "fraud_model_v1"


class ProjectConfig(StrictModel):
    project: str = "fraud"
    profile: Literal["local", "scale"] = "local"
    data: DataSpec = DataSpec()
    features: FeaturesSpec = FeaturesSpec()

    root: Path = Field(Path("."), exclude=True, description="Directory of the config file.")

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.root / path).resolve()

    @property
    def data_path(self) -> Path:
        return self.root.resolve() / "data"

    @property
    def feature_repo_path(self) -> Path:
        return self.resolve(self.features.feature_repo)

    @property
    def raw_dir(self) -> Path:
        return self.data_path / "raw"

    @property
    def features_dir(self) -> Path:
        return self.data_path / "features"

    @property
    def feast_dir(self) -> Path:
        return self.data_path / "feast"


class ConfigError(ValueError):
    """The config file is missing or invalid; the message says which key and why."""


def load_config(path: str | Path | None = None) -> ProjectConfig:
    """Load and validate the project config; a missing file gives the defaults rooted at the cwd."""
    path = Path(path or os.environ.get("MLCYCLE_CONFIG", DEFAULT_CONFIG_NAME))
    raw: dict = {}
    if path.exists():
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    if env_profile := os.environ.get("MLCYCLE_PROFILE"):
        raw["profile"] = env_profile
    try:
        cfg = ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"invalid config {path}:\n" + "\n".join(lines)) from None
    cfg.root = path.resolve().parent
    return cfg
