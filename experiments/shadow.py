"""Comparing a shadow with production: each shadow job paired with the production job it copies (same
prompt and seed), figured and compared with the experiments' paired statistics, and the gate a rollout
may require before its first canary step.

Pairs are rows of the experiment results (`results.job_result`), arm "production" and arm "shadow",
one prompt index per pair, so `results.summarize`, `results.pairs` and `results.compare` apply as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Prefetch

from lanes.models import Artifact, Job, Lane, ModelVersion, Shadow
from lanes.stats import nearest_rank

from .paired import MIN_PAIRS, Comparison
from .results import ArmSummary, CellResult, compare, first_verifications, job_result, summarize

PRODUCTION, SHADOW = "production", "shadow"
FINISHED = (Job.State.SUCCEEDED, Job.State.FAILED)


@dataclass
class Pair:
    production_job: Job
    shadow_job: Job
    production: CellResult
    shadow: CellResult

    @property
    def finished(self) -> bool:
        return self.production.state in FINISHED and self.shadow.state in FINISHED

    @property
    def run_ratio(self) -> float | None:
        a, b = self.production.run_s, self.shadow.run_s
        return b / a if a and b is not None else None


@dataclass
class Report:
    shadow: Shadow
    pairs: list[Pair]  # newest first
    summaries: list[ArmSummary]  # production, shadow
    comparisons: list[Comparison]  # run time, GPU-seconds, pass rate, edit distance

    @property
    def finished(self) -> list[Pair]:
        return [p for p in self.pairs if p.finished]


def shadow_pairs(shadow: Shadow) -> list[Pair]:
    """Every shadow job of the shadow with its production job, newest first, in a fixed number of queries."""
    with_images = Prefetch("artifacts", queryset=Artifact.objects.order_by("created_at"))
    jobs = list(
        Job.objects.filter(shadow_run=shadow)
        .select_related("shadow_of", "model_version", "shadow_of__model_version")
        .prefetch_related(with_images, Prefetch("shadow_of__artifacts", queryset=Artifact.objects.all()))
        .order_by("-submitted_at", "-pk")
    )
    verifications = first_verifications([pk for job in jobs for pk in (job.pk, job.shadow_of_id)])
    pairs = []
    for index, job in enumerate(jobs):
        production = job.shadow_of
        pairs.append(
            Pair(
                production_job=production,
                shadow_job=job,
                production=job_result(
                    PRODUCTION, index, 0, production.seed, production, verifications.get(production.pk)
                ),
                shadow=job_result(SHADOW, index, 0, job.seed, job, verifications.get(job.pk)),
            )
        )
    return pairs


def report(shadow: Shadow) -> Report:
    pairs = shadow_pairs(shadow)
    # Figures from finished pairs only: a pair whose shadow still waits says nothing about either side yet.
    rows = [row for pair in pairs if pair.finished for row in (pair.production, pair.shadow)]
    return Report(
        shadow=shadow,
        pairs=pairs,
        summaries=summarize(rows, [PRODUCTION, SHADOW]),
        comparisons=compare(rows, PRODUCTION, SHADOW),
    )


def _error_rate(rows: list[CellResult]) -> float:
    return sum(1 for r in rows if r.state == Job.State.FAILED) / len(rows) if rows else 0.0


def judge(lane: Lane, version: ModelVersion, shadow_report: Report | None = None) -> tuple[bool, str]:
    """Whether the version's latest shadow on the lane passes, and why, against the lane's canary thresholds:
    at least max(canary_min_samples, MIN_PAIRS) finished pairs; error rate increase, p95 run-time ratio and
    flag-rate increase within the canary limits; GPU-seconds per image up by no more than run time may be;
    mean edit distance up by at most what one image may have and still pass (1 - verify_threshold)."""
    shadow = Shadow.objects.filter(lane=lane, version=version).select_related("version").first()
    if shadow is None:
        return False, f"{version.name} has not shadowed lane {lane.name}."
    version.refresh_from_db(fields=["status"])
    if not version.is_deployable:
        return (
            False,
            f"{version.name} is {version.get_status_display().lower()}: it cannot serve, whatever its shadow showed.",
        )
    figures = shadow_report or report(shadow)
    done = figures.finished
    need = max(lane.canary_min_samples, MIN_PAIRS)
    if len(done) < need:
        return False, f"too few finished pairs to judge ({len(done)}, need {need})."
    production = [p.production for p in done]
    shadowed = [p.shadow for p in done]
    reasons: list[str] = []
    notes: list[str] = []

    errors, base_errors = _error_rate(shadowed), _error_rate(production)
    increase, limit = errors - base_errors, lane.canary_max_error_rate_increase
    line = f"error rate {errors:.1%} vs {base_errors:.1%} ({increase:+.1%}, limit +{limit:.1%})"
    (reasons if increase > limit else notes).append(line)

    both = [p for p in done if p.production.run_s is not None and p.shadow.run_s is not None]
    base_p95 = nearest_rank([p.production.run_s for p in both], 95)
    shadow_p95 = nearest_rank([p.shadow.run_s for p in both], 95)
    if base_p95 and shadow_p95 is not None:
        ratio, limit = shadow_p95 / base_p95, lane.canary_max_p95_ratio
        line = f"p95 run time {shadow_p95 * 1000:.0f} ms vs {base_p95 * 1000:.0f} ms (×{ratio:.2f}, limit ×{limit:.2f})"
        (reasons if ratio > limit else notes).append(line)
    else:
        reasons.append("no run time on both sides of any pair")

    by_metric = {c.metric: c for c in figures.comparisons}
    gpu = by_metric["GPU-seconds"]
    if gpu.estimate is not None:
        ratio, limit = 1 + gpu.estimate, lane.canary_max_p95_ratio
        line = f"GPU-seconds per image ×{ratio:.2f} (limit ×{limit:.2f})"
        (reasons if ratio > limit else notes).append(line)
    else:
        notes.append(gpu.sentence)

    passing, distance = by_metric["pass rate"], by_metric["edit distance"]
    if passing.n == 0:
        notes.append("text: no sampled brief expects text")
    elif passing.n < need or passing.estimate is None:
        reasons.append(f"too few verified pairs to judge text ({passing.n}, need {need})")
    else:
        increase, limit = 0.0 - passing.estimate, lane.canary_max_flag_rate_increase  # 0.0 - x: never "-0.0%"
        line = f"flag rate {increase:+.1%} (limit +{limit:.1%})"
        (reasons if increase > limit else notes).append(line)
        if distance.estimate is not None:
            limit = 1 - lane.verify_threshold
            line = f"mean edit distance {distance.estimate:+.3f} (limit +{limit:.3f})"
            (reasons if distance.estimate > limit else notes).append(line)
    summary = f"{len(done)} pairs: " + "; ".join(reasons or notes)
    return (False, f"failed, {summary}.") if reasons else (True, f"passed, {summary}.")


def on_shadow_gate(sender, lane: Lane, version: ModelVersion, **kwargs) -> tuple[bool, str]:
    return judge(lane, version)
