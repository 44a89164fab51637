"""A canary's two arms compared on label-free estimates while their labels have not matured.

A canary of minutes never sees a matured label (they take ``table.label_delay``), so its quality
check is "not measurable yet". What it can see is each arm's scores on its own requests: each
version's CBPE estimate (calibrated on that version's own held-out window) gives an expected ROC-AUC
with an interval, and their difference (challenger − champion) is judged against
``-canary.max_auc_drop``: fail when the whole interval is below it, pass when it is wholly above,
not measurable when it straddles. The two arms are independent samples, so the difference's
standard error combines the two intervals' (normal approximation: half-width / z). Each interval
holds the calibration fixed (labels simulated from the calibrated probabilities): the error of
fitting it on a finite held-out window is not in it, so the comparison is narrower than the truth
by that much, one more reason it decides only when configured to.

The estimate cannot see concept drift: after the world changed, the champion's calibration is
stale and its estimate optimistic, which is exactly when a retrained challenger is proposed. So the
comparison is shown in the canary's report and decides only when ``canary.judge_on_estimates`` says
so; matured labels remain the judge of quality.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from mlcycle.decisions import CheckResult, Verdict, interval_check, not_measurable
from mlcycle.monitoring import estimate as cbpe
from mlcycle.project.config import CanarySpec
from mlcycle.stats import z_for

KIND = "canary estimate"
NAME = "estimated_roc_auc_drop"


def arm_estimate(probabilities: np.ndarray, scores: np.ndarray, threshold: float) -> cbpe.Estimate:
    return cbpe.estimate(probabilities, scores, threshold, seed=0)


def difference_check(
    champion: cbpe.Estimate, challenger: cbpe.Estimate, spec: CanarySpec, looks: int = 1
) -> CheckResult:
    """The challenger's expected ROC-AUC minus the champion's, with a normal interval from the two
    estimates' intervals, widened for ``looks`` analyses of one step (Bonferroni, as the canary's
    other intervals), judged against ``-spec.max_auc_drop``."""
    bound, policy = -spec.max_auc_drop, spec.estimate_on_unmeasurable
    pair = {"champion": champion.evidence(), "challenger": challenger.evidence()}
    ci_c, ci_x = champion.interval("roc_auc"), challenger.interval("roc_auc")
    if not (champion.measurable and challenger.measurable) or None in (ci_c, ci_x):
        sides = (("champion", champion), ("challenger", challenger))
        why = "; ".join(f"{side}: {e.detail or 'no expected ROC-AUC'}" for side, e in sides
                        if not e.measurable or e.roc_auc is None)  # fmt: skip
        return not_measurable(NAME, bound, ">=", why or "no interval for an arm's estimate", policy, **pair)
    z_each = z_for(champion.confidence)
    se = math.hypot((ci_c[1] - ci_c[0]) / (2 * z_each), (ci_x[1] - ci_x[0]) / (2 * z_each))
    diff = float(challenger.roc_auc - champion.roc_auc)
    z = z_for(0.95, looks)
    detail = (f"expected ROC-AUC challenger {challenger.roc_auc:.4f} vs champion {champion.roc_auc:.4f} on "
              f"{challenger.n}/{champion.n} requests without labels (CBPE, each calibrated on its own held-out "
              "window; blind to concept drift)")  # fmt: skip
    return interval_check(NAME, diff, diff - z * se, diff + z * se, bound, ">=", policy, detail, **pair)


def compare(
    references: dict[str, Any],
    predictions: pd.DataFrame,
    spec: CanarySpec,
    *,
    champion_version: str,
    challenger_version: str,
    looks: int = 1,
) -> Verdict:
    """Both arms' estimates on their own answered requests. ``references``: version → the version's
    monitoring reference (``job.version_reference``: its held-out scores and labels, its threshold)."""
    from mlcycle.serving.canary import variant_rows

    champion_rows, challenger_rows = variant_rows(predictions, challenger_version, champion_version)
    estimates = []
    for version, rows in ((champion_version, champion_rows), (challenger_version, challenger_rows)):
        ref = references[version]
        scores = rows.loc[rows["error"].isna() & rows["score"].notna(), "score"].to_numpy(float)
        if ref.labels is None:
            why = f"v{version}'s reference has no held-out labels to calibrate on"
            return Verdict(KIND, (not_measurable(NAME, -spec.max_auc_drop, ">=", why, spec.estimate_on_unmeasurable),))
        try:
            calibrator = cbpe.calibrate(ref.scores, ref.labels)
        except cbpe.NotMeasurable as exc:
            why = f"v{version}'s calibration: {exc.detail}"
            return Verdict(KIND, (not_measurable(NAME, -spec.max_auc_drop, ">=", why, spec.estimate_on_unmeasurable),))
        estimates.append(arm_estimate(calibrator.apply(scores), scores, ref.threshold))
    return Verdict(KIND, (difference_check(estimates[0], estimates[1], spec, looks),))


def compare_versions(
    cfg: Any, predictions: pd.DataFrame, *, champion_version: str, challenger_version: str, looks: int = 1
) -> Verdict:
    """``compare`` with each version's reference read (or computed once and cached) by the monitor's code."""
    from mlcycle.monitoring.job import version_reference
    from mlcycle.registry import aliases as registry

    client = registry.client_for(cfg)
    references = {v: version_reference(cfg, client.get_model_version(cfg.model.name, v))
                  for v in (champion_version, challenger_version)}  # fmt: skip
    return compare(references, predictions, cfg.canary, champion_version=champion_version,
                   challenger_version=challenger_version, looks=looks)  # fmt: skip
