"""Judging a canary against the lane's active version, and rolling it back when it is worse.

Beat runs `check_canaries`. Over the lane's window (since the canary started), each arm's
routed jobs (experiment jobs are pinned to their arm's version, not split by the canary)
give an error rate and a p95 run time, and its verifications a flag rate; below the lane's
minimum sample count nothing is decided.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from .changes import ControlError
from .models import Job, Lane, ModelVersion, Verification
from .rollout import end_canary
from .stats import nearest_rank


@dataclass(frozen=True)
class ArmFigures:
    version: str
    finished: int
    failed: int
    p95_run_s: float | None
    judged: int
    flagged: int

    @property
    def error_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.judged if self.judged else 0.0


def arm_figures(lane: Lane, version: ModelVersion, since) -> ArmFigures:
    # Routed traffic only: experiment jobs are pinned to their arm's version, not split by the canary.
    jobs = Job.objects.filter(
        lane=lane, model_version=version, finished_at__gte=since, state__in=(Job.State.SUCCEEDED, Job.State.FAILED),
        routed=True,
    )  # fmt: skip
    rows = list(jobs.values_list("state", "run_seconds"))
    judged = Verification.objects.filter(
        lane=lane, model_version=version, created_at__gte=since,
        status__in=(Verification.Status.PASSED, Verification.Status.FLAGGED), source__isnull=True,
        job__routed=True,
    ).values_list("status", flat=True)  # fmt: skip
    verdicts = list(judged)
    return ArmFigures(
        version=version.name,
        finished=len(rows),
        failed=sum(1 for state, _ in rows if state == Job.State.FAILED),
        p95_run_s=nearest_rank([s for state, s in rows if state == Job.State.SUCCEEDED and s is not None], 95),
        judged=len(verdicts),
        flagged=sum(1 for v in verdicts if v == Verification.Status.FLAGGED),
    )


@dataclass(frozen=True)
class CanaryVerdict:
    regressed: bool
    reasons: list[str]
    waiting: list[str]
    canary: ArmFigures
    baseline: ArmFigures

    def describe(self) -> str:
        if self.regressed:
            return "; ".join(self.reasons)
        return "; ".join(self.waiting) or "canary within thresholds"


def judge_canary(lane: Lane, now=None) -> CanaryVerdict | None:
    """Compare the canary with the active version over the lane's window (since the canary started)."""
    canary_version = lane.canary_version  # None without a query when canary_version_id is None
    if canary_version is None:
        return None
    now = now or timezone.now()
    since = max(lane.canary_started_at or now, now - timedelta(minutes=lane.canary_window_minutes))
    canary = arm_figures(lane, canary_version, since)
    baseline = arm_figures(lane, lane.active_version, since)
    minimum = lane.canary_min_samples
    reasons, waiting = [], []
    if min(canary.finished, baseline.finished) < minimum:
        waiting.append(
            f"too few finished jobs to judge run time and errors (canary {canary.finished}, "
            f"baseline {baseline.finished}, need {minimum} each)"
        )
    else:
        increase = canary.error_rate - baseline.error_rate
        if increase > lane.canary_max_error_rate_increase:
            reasons.append(
                f"error rate {canary.error_rate:.1%} vs {baseline.error_rate:.1%} (+{increase:.1%}, limit "
                f"+{lane.canary_max_error_rate_increase:.1%}; n={canary.finished}/{baseline.finished})"
            )
        if canary.p95_run_s is not None and baseline.p95_run_s:
            ratio = canary.p95_run_s / baseline.p95_run_s
            if ratio > lane.canary_max_p95_ratio:
                reasons.append(
                    f"p95 run time {canary.p95_run_s * 1000:.0f} ms vs {baseline.p95_run_s * 1000:.0f} ms "
                    f"(×{ratio:.2f}, limit ×{lane.canary_max_p95_ratio:.2f})"
                )
    if min(canary.judged, baseline.judged) < minimum:
        waiting.append(
            f"too few verified images to judge text (canary {canary.judged}, baseline {baseline.judged}, "
            f"need {minimum} each)"
        )
    else:
        increase = canary.flag_rate - baseline.flag_rate
        if increase > lane.canary_max_flag_rate_increase:
            reasons.append(
                f"verification flag rate {canary.flag_rate:.1%} vs {baseline.flag_rate:.1%} (+{increase:.1%}, "
                f"limit +{lane.canary_max_flag_rate_increase:.1%}; n={canary.judged}/{baseline.judged})"
            )
    return CanaryVerdict(bool(reasons), reasons, waiting, canary, baseline)


def check_canaries() -> dict[str, str]:
    """Beat: roll back every canary that is worse than its baseline past the lane's thresholds."""
    outcome: dict[str, str] = {}
    for lane in Lane.objects.filter(canary_version__isnull=False).select_related("active_version", "canary_version"):
        verdict = judge_canary(lane)
        if verdict is None:
            continue
        if verdict.regressed:
            try:
                end_canary(lane, None, lane.revision, reason=verdict.describe(), automatic=True)
            except ControlError as exc:  # someone changed the lane meanwhile: judge it again next time
                outcome[lane.name] = f"not rolled back: {exc}"
                continue
            outcome[lane.name] = f"rolled back: {verdict.describe()}"
        else:
            outcome[lane.name] = f"kept: {verdict.describe()}"
    return outcome
