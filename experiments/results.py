"""An experiment's results: one row per cell, a summary per arm, and the paired comparisons."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from lanes.models import Job, Verification
from lanes.stats import nearest_rank, price_per_hour

from .models import Experiment, ExperimentCell
from .paired import compare_distances, compare_pass_rates, compare_times


@dataclass
class CellResult:
    arm: str
    prompt_index: int
    sample_index: int
    seed: int
    job_id: int | None
    state: str
    queue_s: float | None
    run_s: float | None
    gpu_s: float | None
    cost: float | None
    peak_memory_bytes: int | None
    verdict: str
    score: float | None
    edit_distance: float | None
    image_sha256: str
    device: str = ""  # "cpu" or "cuda": gpu_s is CPU-seconds and the peak an RSS rise on a CPU

    @property
    def passed(self) -> bool | None:
        return {"passed": True, "flagged": False}.get(self.verdict)

    @property
    def verdict_label(self) -> str:
        """The verdict in words ("not applicable", not `not_applicable`)."""
        return Verification.Status(self.verdict).label.lower() if self.verdict else ""


def cell_results(experiment: Experiment) -> list[CellResult]:
    """One row per cell, read in a fixed number of queries."""
    cells = list(
        ExperimentCell.objects.filter(experiment=experiment)
        .select_related("arm", "job")
        .prefetch_related("job__artifacts")
        .order_by("prompt_index", "sample_index", "arm__position")
    )
    verifications = first_verifications([c.job_id for c in cells if c.job_id])
    return [
        job_result(cell.arm.name, cell.prompt_index, cell.sample_index, cell.seed, cell.job,
                   verifications.get(cell.job_id) if cell.job_id else None)
        for cell in cells
    ]  # fmt: skip


def first_verifications(job_ids: list[int]) -> dict[int, Verification]:
    """Each job's own verification (the first, not an auto-fix's re-check), in one query."""
    verifications: dict[int, Verification] = {}
    for v in Verification.objects.filter(job_id__in=job_ids, source__isnull=True).order_by("created_at"):
        verifications.setdefault(v.job_id, v)
    return verifications


def job_result(
    arm: str, prompt_index: int, sample_index: int, seed: int, job: Job | None, verification: Verification | None
) -> CellResult:
    """One rendered (or pending) prompt x seed on one arm, with its figures (shadow pairs use it too)."""
    scores = (verification.details or {}).get("scores", []) if verification else []
    similarity = statistics.fmean(s["similarity"] for s in scores) if scores else None
    final = job.final_artifact() if job else None
    return CellResult(
        arm=arm,
        prompt_index=prompt_index,
        sample_index=sample_index,
        seed=seed,
        job_id=job.pk if job else None,
        state=job.state if job else "pending",
        queue_s=job.queue_seconds if job else None,
        run_s=job.run_seconds if job else None,
        gpu_s=job.gpu_seconds if job else None,
        # Device time (CPU-seconds on a CPU) at the device's price, plus what a hosted engine charged.
        cost=job.gpu_seconds * price_per_hour(job.gpu_name) / 3600 + job.api_cost
        if job and job.gpu_seconds is not None
        else None,
        peak_memory_bytes=job.peak_memory_bytes if job else None,
        verdict=verification.status if verification else "",
        score=round(similarity, 4) if similarity is not None else None,
        edit_distance=round(1 - similarity, 4) if similarity is not None else None,
        image_sha256=final.sha256 if final else "",
        device=job.device if job else "",
    )


@dataclass
class ArmSummary:
    arm: str
    jobs: int
    succeeded: int
    failed: int
    run_p50: float | None
    run_p95: float | None
    gpu_s_per_image: float | None
    cost_per_image: float | None
    peak_memory_bytes: int | None
    judged: int
    pass_rate: float | None
    mean_edit_distance: float | None
    device_seconds_label: str = "GPU-s"  # "CPU-s" when every image ran on a CPU, "device-s" when mixed
    peak_memory_label: str = ""  # "RSS rise" on a CPU: the peak is the process memory the job added


def summarize(rows: list[CellResult], arm_names: list[str]) -> list[ArmSummary]:
    summaries = []
    for name in arm_names:
        mine = [r for r in rows if r.arm == name]
        done = [r for r in mine if r.state == Job.State.SUCCEEDED]
        runs = [r.run_s for r in done if r.run_s is not None]
        judged = [r for r in mine if r.passed is not None]
        distances = [r.edit_distance for r in judged if r.edit_distance is not None]
        gpu = [r.gpu_s for r in done if r.gpu_s is not None]
        cost = [r.cost for r in done if r.cost is not None]
        peaks = [r.peak_memory_bytes for r in done if r.peak_memory_bytes is not None]
        devices = {r.device for r in done if r.device}
        on_cpu = "cpu" in devices
        summaries.append(
            ArmSummary(
                arm=name,
                jobs=len(mine),
                succeeded=len(done),
                failed=sum(1 for r in mine if r.state == Job.State.FAILED),
                run_p50=nearest_rank(runs, 50),
                run_p95=nearest_rank(runs, 95),
                gpu_s_per_image=sum(gpu) / len(done) if done and gpu else None,
                cost_per_image=sum(cost) / len(done) if done and cost else None,
                peak_memory_bytes=max(peaks) if peaks else None,
                judged=len(judged),
                pass_rate=sum(1 for r in judged if r.passed) / len(judged) if judged else None,
                mean_edit_distance=statistics.fmean(distances) if distances else None,
                device_seconds_label=("CPU-s" if devices == {"cpu"} else "device-s") if on_cpu else "GPU-s",
                peak_memory_label=("RSS rise" if devices == {"cpu"} else "GPU peak or RSS rise") if on_cpu else "",
            )
        )
    return summaries


def pairs(rows: list[CellResult], baseline: str, arm: str, value) -> list[tuple]:
    """(baseline value, arm value) for each prompt × seed both arms have a value for."""
    by_key: dict[tuple, dict[str, CellResult]] = {}
    for r in rows:
        by_key.setdefault((r.prompt_index, r.sample_index), {})[r.arm] = r
    out = []
    for key in sorted(by_key):
        both = by_key[key]
        if baseline in both and arm in both:
            a, b = value(both[baseline]), value(both[arm])
            if a is not None and b is not None:
                out.append((a, b))
    return out


def compare(rows: list[CellResult], baseline: str, arm: str) -> list:
    """The paired comparisons of one arm against the baseline: run time, GPU-seconds, pass rate, edit distance."""
    return [
        compare_times(pairs(rows, baseline, arm, lambda r: r.run_s), arm, baseline),
        compare_times(pairs(rows, baseline, arm, lambda r: r.gpu_s), arm, baseline, "GPU-seconds"),
        compare_pass_rates(pairs(rows, baseline, arm, lambda r: r.passed), arm, baseline),
        compare_distances(pairs(rows, baseline, arm, lambda r: r.edit_distance), arm, baseline),
    ]
