"""Judging a canary against the lane's active version, and rolling it back when it is worse.

Beat runs `check_canaries`. Over the lane's window (since the canary started), each arm's
routed jobs (experiment jobs are pinned to their arm's version, not split by the canary)
give an error rate and a p95 run time, and its verifications a flag rate; below the lane's
minimum sample count nothing is decided.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from django.utils import timezone

from .changes import ControlError
from .models import Job, Lane, ModelVersion, Rollout, Verification
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
    gpu_s_per_image: float | None = None  # mean device seconds of a succeeded job
    mean_edit_distance: float | None = None  # over judged images: 1 - similarity, averaged per image
    expecting_text: int = 0  # finished jobs whose brief expects text (the ones a text check can judge)

    @property
    def error_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0

    @property
    def flag_rate(self) -> float:
        return self.flagged / self.judged if self.judged else 0.0


def _edit_distance(details: dict) -> float | None:
    scores = (details or {}).get("scores") or []
    similarities = [s["similarity"] for s in scores if isinstance(s, dict) and s.get("similarity") is not None]
    return 1 - statistics.fmean(similarities) if similarities else None


def arm_figures(lane: Lane, version: ModelVersion, since) -> ArmFigures:
    # Routed traffic only: experiment jobs are pinned to their arm's version, not split by the canary.
    jobs = Job.objects.filter(
        lane=lane, model_version=version, finished_at__gte=since, state__in=(Job.State.SUCCEEDED, Job.State.FAILED),
        routed=True,
    )  # fmt: skip
    rows = list(jobs.values_list("state", "run_seconds", "gpu_seconds", "expected_text"))
    judged = Verification.objects.filter(
        lane=lane, model_version=version, created_at__gte=since,
        status__in=(Verification.Status.PASSED, Verification.Status.FLAGGED), source__isnull=True,
        job__routed=True,
    ).values_list("status", "details")  # fmt: skip
    verdicts = list(judged)
    succeeded = [row for row in rows if row[0] == Job.State.SUCCEEDED]
    gpu = [g for _, _, g, _ in succeeded if g is not None]
    distances = [d for d in (_edit_distance(details) for _, details in verdicts) if d is not None]
    return ArmFigures(
        version=version.name,
        finished=len(rows),
        failed=len(rows) - len(succeeded),
        p95_run_s=nearest_rank([s for _, s, _, _ in succeeded if s is not None], 95),
        judged=len(verdicts),
        flagged=sum(1 for status, _ in verdicts if status == Verification.Status.FLAGGED),
        gpu_s_per_image=statistics.fmean(gpu) if gpu else None,
        mean_edit_distance=statistics.fmean(distances) if distances else None,
        expecting_text=sum(1 for *_, text in rows if text),
    )


class Status:
    PASS = "pass"
    FAIL = "fail"
    WAITING = "waiting"
    NOT_APPLICABLE = "n/a"


@dataclass(frozen=True)
class MetricCheck:
    """One metric of an analysis, as an Argo AnalysisRun shows it: canary against baseline, the limit,
    the samples each side, and pass / fail / waiting (too few samples) / n/a (nothing to measure)."""

    name: str  # the threshold's name, e.g. max_p95_ratio
    label: str
    kind: str  # "increase" (canary - baseline) or "ratio" (canary / baseline)
    canary: float | None
    baseline: float | None
    threshold: float
    canary_n: int
    baseline_n: int
    needed: int
    status: str
    unit: str = ""  # "%" for rates, "s" for seconds, "" for plain numbers

    @property
    def observed(self) -> float | None:
        if self.canary is None or self.baseline is None:
            return None
        if self.kind == "increase":
            return self.canary - self.baseline
        return self.canary / self.baseline if self.baseline else None

    def show(self, value: float | None) -> str:
        if value is None:
            return "–"
        if self.unit == "%":
            return f"{value:.1%}"
        if self.unit == "s":
            return f"{value * 1000:.0f} ms"
        return f"{value:.3f}"

    @property
    def limit(self) -> str:
        if self.kind == "increase":
            return f"+{self.threshold:.1%}" if self.unit == "%" else f"+{self.threshold:.3f}"
        return f"×{self.threshold:.2f}"

    @property
    def change(self) -> str:
        observed = self.observed
        if observed is None:
            return "–"
        if self.kind == "increase":
            return f"{observed:+.1%}" if self.unit == "%" else f"{observed:+.3f}"
        return f"×{observed:.2f}"

    def sentence(self) -> str:
        if self.status == Status.WAITING:
            counts = f"canary {self.canary_n}, baseline {self.baseline_n}, need {self.needed} each"
            return f"{self.label}: waiting for samples ({counts})"
        if self.status == Status.NOT_APPLICABLE:
            return f"{self.label}: nothing to measure"
        return (
            f"{self.label} {self.show(self.canary)} vs {self.show(self.baseline)} ({self.change}, limit {self.limit}; "
            f"n={self.canary_n}/{self.baseline_n})"
        )

    def as_dict(self) -> dict:
        return {
            "name": self.name, "label": self.label, "kind": self.kind, "canary": self.canary,
            "baseline": self.baseline, "threshold": self.threshold, "canary_n": self.canary_n,
            "baseline_n": self.baseline_n, "needed": self.needed, "status": self.status, "unit": self.unit,
            "change": self.change, "limit": self.limit, "canary_shown": self.show(self.canary),
            "baseline_shown": self.show(self.baseline), "sentence": self.sentence(),
        }  # fmt: skip


def analyse(
    canary: ArmFigures, baseline: ArmFigures, thresholds: Mapping[str, float | None], needed: int, *, text_checked: bool
) -> list[MetricCheck]:
    """Each metric with a threshold (None or absent: not checked). Job metrics need `needed` finished jobs
    on each arm, text metrics `needed` checked images; text metrics are n/a when the lane does not check
    text or no brief on either arm expected any."""
    checks: list[MetricCheck] = []
    job_n = (canary.finished, baseline.finished)
    text_n = (canary.judged, baseline.judged)
    text_applies = text_checked and (canary.expecting_text or baseline.expecting_text or any(text_n))
    metrics = (
        ("max_error_rate_increase", "error rate", "increase", canary.error_rate, baseline.error_rate, job_n, "%", True),
        ("max_p95_ratio", "p95 run time", "ratio", canary.p95_run_s, baseline.p95_run_s, job_n, "s", True),
        ("max_gpu_seconds_ratio", "GPU seconds per image", "ratio", canary.gpu_s_per_image,
         baseline.gpu_s_per_image, job_n, "", True),
        ("max_flag_rate_increase", "verification flag rate", "increase", canary.flag_rate, baseline.flag_rate,
         text_n, "%", text_applies),
        ("max_edit_distance_increase", "mean edit distance", "increase", canary.mean_edit_distance,
         baseline.mean_edit_distance, text_n, "", text_applies),
    )  # fmt: skip
    for name, label, kind, mine, theirs, (n_canary, n_baseline), unit, applies in metrics:
        threshold = thresholds.get(name)
        if threshold is None:
            continue
        if not applies:
            status = Status.NOT_APPLICABLE
        elif min(n_canary, n_baseline) < needed:
            status = Status.WAITING
        elif mine is None or theirs is None or (kind == "ratio" and not theirs):
            # Every job of an arm failed (no run time), or none billed device time: the error rate judges it.
            status = Status.NOT_APPLICABLE
        else:
            observed = mine - theirs if kind == "increase" else mine / theirs
            status = Status.FAIL if observed > threshold else Status.PASS
        checks.append(
            MetricCheck(name, label, kind, mine, theirs, threshold, n_canary, n_baseline, needed, status, unit)
        )
    return checks


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
    thresholds = {
        "max_error_rate_increase": lane.canary_max_error_rate_increase,
        "max_p95_ratio": lane.canary_max_p95_ratio,
        "max_flag_rate_increase": lane.canary_max_flag_rate_increase,
    }
    checks = analyse(canary, baseline, thresholds, minimum, text_checked=True)
    reasons = [check.sentence() for check in checks if check.status == Status.FAIL]
    waiting = []
    if min(canary.finished, baseline.finished) < minimum:
        waiting.append(
            f"too few finished jobs to judge run time and errors (canary {canary.finished}, "
            f"baseline {baseline.finished}, need {minimum} each)"
        )
    if min(canary.judged, baseline.judged) < minimum:
        waiting.append(
            f"too few verified images to judge text (canary {canary.judged}, baseline {baseline.judged}, "
            f"need {minimum} each)"
        )
    return CanaryVerdict(bool(reasons), reasons, waiting, canary, baseline)


def check_canaries() -> dict[str, str]:
    """Beat: roll back every canary that is worse than its baseline past the lane's thresholds."""
    outcome: dict[str, str] = {}
    # A lane with a progressive rollout running is judged by its plan's analysis (lanes/progressive.py).
    lanes = Lane.objects.filter(canary_version__isnull=False).exclude(rollouts__state=Rollout.State.RUNNING)
    for lane in lanes.select_related("active_version", "canary_version"):
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
