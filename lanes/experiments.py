"""A/B experiments: identical prompts and seeds on several engines, compared side by side.

An experiment is defined in YAML (the console form and `manage.py run_experiment` take the
same file)::

    name: sale-posters
    samples: 2            # seeds per prompt, shared by every arm
    seed: 1000            # the first seed (then 1001, ...)
    prompts:
      - A summer sale poster, bold type
      - {prompt: "Grand opening banner", expected_text: GRAND OPENING}
    arms:
      - {name: current, lane: fast-draft}
      - {name: candidate, lane: fast-draft, version: demo-tiny-sd-v2, steps: 8}
      - {name: serving, version: demo-tiny-sd-v1}   # a version alone: on the lane it serves

Its jobs are ordinary background-priority jobs through admission, so they wait behind
production traffic. A pump keeps at most EXPERIMENT_MAX_OUTSTANDING of them unfinished at
a time (the next are submitted as jobs finish, and by beat), which is what makes pausing
and cancelling immediate.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import yaml
from celery import shared_task
from django.conf import settings
from django.core.validators import validate_slug
from django.db import transaction
from django.utils import timezone

from .metrics import nearest_rank, price_per_hour
from .models import (
    Arm,
    AuditEvent,
    Experiment,
    ExperimentCell,
    Job,
    Lane,
    ModelVersion,
    Priority,
    Verification,
    team_of,
)
from .router import check_parameters

OVERRIDES = ("steps", "guidance", "width", "height")
ARM_KEYS = {"name", "lane", "version", *OVERRIDES}
TOP_KEYS = {"name", "samples", "seed", "prompts", "arms"}


class ExperimentError(Exception):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class ArmSpec:
    name: str
    lane: Lane
    version: ModelVersion
    overrides: dict = field(default_factory=dict)


@dataclass
class Definition:
    name: str
    prompts: list[dict]
    seeds: list[int]
    arms: list[ArmSpec]
    text: str

    @property
    def job_count(self) -> int:
        return len(self.prompts) * len(self.seeds) * len(self.arms)


def _line(node) -> int:
    return node.start_mark.line + 1


def _scalar(node):
    return yaml.safe_load(yaml.serialize(node))


def parse_prompt_lines(text: str) -> list[dict]:
    """Pasted or uploaded prompts, one per line; `prompt || EXPECTED TEXT` carries the text to check."""
    prompts = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        prompt, _, expected = line.partition("||")
        prompts.append({"prompt": prompt.strip(), "expected_text": expected.strip()})
    return prompts


def parse(text: str, extra_prompts: list[dict] | None = None) -> Definition:
    """Validate a definition completely; ExperimentError lists every problem, with line numbers."""
    errors: list[str] = []
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ExperimentError([f"{where}not valid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(root, yaml.MappingNode):
        raise ExperimentError(["line 1: an experiment is a mapping with name, prompts and arms"])
    nodes = {key.value: (key, value) for key, value in root.value}
    for key, (key_node, _) in nodes.items():
        if key not in TOP_KEYS:
            errors.append(
                f"line {_line(key_node)}: unknown key {key!r} (expected one of {', '.join(sorted(TOP_KEYS))})"
            )

    name = str(_scalar(nodes["name"][1]) or "") if "name" in nodes else ""
    name_line = _line(nodes["name"][1]) if "name" in nodes else 1
    try:
        validate_slug(name)
    except Exception:
        errors.append(f"line {name_line}: name {name!r} must be letters, digits, - and _ (and not empty)")
    if name and Experiment.objects.filter(name=name).exists():
        errors.append(f"line {name_line}: an experiment named {name!r} already exists")

    def integer(key: str, default: int, low: int) -> int:
        if key not in nodes:
            return default
        value = _scalar(nodes[key][1])
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            errors.append(f"line {_line(nodes[key][1])}: {key} must be a whole number ≥ {low}")
            return default
        return value

    samples = integer("samples", 1, 1)
    first_seed = integer("seed", 1, 0)
    seeds = [first_seed + i for i in range(samples)]

    prompts = _parse_prompts(nodes.get("prompts", (None, None))[1], list(extra_prompts or []), errors)
    arms: list[ArmSpec] = []
    arm_nodes = nodes.get("arms", (None, None))[1]
    if arm_nodes is None or not isinstance(arm_nodes, yaml.SequenceNode):
        errors.append(f"line {_line(arm_nodes) if arm_nodes is not None else 1}: arms must be a list of two or more")
    else:
        lanes = {lane.name: lane for lane in Lane.objects.select_related("active_version", "canary_version")}
        versions = {v.name: v for v in ModelVersion.objects.all()}
        seen: set[str] = set()
        for item in arm_nodes.value:
            arm = _parse_arm(item, lanes, versions, seen, errors)
            if arm is not None:
                arms.append(arm)
        if len(arm_nodes.value) < 2:
            errors.append(f"line {_line(nodes['arms'][0])}: an experiment compares two or more arms")

    jobs = len(prompts) * len(seeds) * max(len(arms), 2)
    if jobs > settings.EXPERIMENT_MAX_JOBS:
        errors.append(
            f"{len(prompts)} prompts × {len(seeds)} seeds × {len(arms)} arms is {jobs} jobs; "
            f"the limit is {settings.EXPERIMENT_MAX_JOBS} (EXPERIMENT_MAX_JOBS)"
        )
    if errors:
        raise ExperimentError(errors)
    return Definition(name=name, prompts=prompts, seeds=seeds, arms=arms, text=text)


def _parse_prompts(node, prompts: list[dict], errors: list[str]) -> list[dict]:
    """The prompt list (after any pasted or uploaded ones), each {prompt, expected_text}."""
    if node is not None and not isinstance(node, yaml.SequenceNode):
        errors.append(f"line {_line(node)}: prompts must be a list")
    elif node is not None:
        for item in node.value:
            value = _scalar(item)
            if isinstance(value, str):
                value = {"prompt": value}
            if not isinstance(value, dict) or not set(value) <= {"prompt", "expected_text"}:
                errors.append(f"line {_line(item)}: a prompt is text, or {{prompt, expected_text}}")
                continue
            prompts.append(
                {
                    "prompt": str(value.get("prompt") or "").strip(),
                    "expected_text": str(value.get("expected_text") or "").strip(),
                }
            )
    for index, prompt in enumerate(prompts):
        if not prompt["prompt"]:
            errors.append(f"prompt {index + 1} is empty")
        elif len(prompt["prompt"]) > settings.PROMPT_MAX_LENGTH:
            errors.append(f"prompt {index + 1} is longer than {settings.PROMPT_MAX_LENGTH} characters")
    if not prompts:
        errors.append("the prompt set is empty: give at least one prompt")
    return prompts


def _parse_arm(item, lanes: dict, versions: dict, seen: set[str], errors: list[str]) -> ArmSpec | None:
    line = _line(item)
    value = _scalar(item)
    if not isinstance(value, dict):
        errors.append(f"line {line}: an arm is a mapping with name and lane")
        return None
    unknown = set(value) - ARM_KEYS
    if unknown:
        errors.append(f"line {line}: unknown arm key {', '.join(sorted(unknown))}")
    name = str(value.get("name") or "")
    if not name:
        errors.append(f"line {line}: an arm needs a name")
    elif name in seen:
        errors.append(f"line {line}: arm name {name!r} is used twice")
    seen.add(name)
    where = f"line {line}: arm {name!r}"
    if value.get("lane") is None and value.get("version") is not None:
        # A version alone runs on the enabled lane it serves (as active, else as canary).
        wanted = str(value["version"])
        serving = [v for v in lanes.values() if v.enabled and v.active_version.name == wanted]
        serving = serving or [
            v for v in lanes.values() if v.enabled and v.canary_version_id and v.canary_version.name == wanted
        ]
        if not serving:
            errors.append(f"{where}: version {wanted!r} serves no enabled lane; name the lane to run it on")
            return None
        value["lane"] = serving[0].name
    lane = lanes.get(str(value.get("lane") or ""))
    if lane is None:
        errors.append(f"{where}: unknown lane {value.get('lane')!r}")
        return None
    if not lane.enabled:
        errors.append(f"{where}: lane {lane.name} is {lane.mode}")
    version = lane.active_version
    if value.get("version") is not None:
        version = versions.get(str(value["version"]))
        if version is None:
            errors.append(f"{where}: unknown version {value['version']!r}")
            return None
    if version.status == ModelVersion.Status.RETIRED:
        errors.append(f"{where}: version {version.name} is retired")
    elif not version.is_deployable:
        errors.append(f"{where}: version {version.name} is {version.get_status_display()}")
    elif version.family != ModelVersion.Family.STABLE_DIFFUSION:
        errors.append(f"{where}: {version.name} cannot render from a prompt")
    overrides = {}
    for key in OVERRIDES:
        if value.get(key) is None:
            continue
        if not isinstance(value[key], int | float) or isinstance(value[key], bool):
            errors.append(f"{where}: {key} must be a number")
            continue
        overrides[key] = (float if key == "guidance" else int)(value[key])
    params = {
        "steps": overrides.get("steps", lane.default_steps),
        "guidance": overrides.get("guidance", lane.default_guidance),
        "width": overrides.get("width", lane.default_width),
        "height": overrides.get("height", lane.default_height),
    }
    for message in check_parameters(lane, **params).values():
        errors.append(f"{where}: {message}")
    return ArmSpec(name, lane, version, overrides)


def create(by, definition: Definition) -> Experiment:
    """Store the experiment with every cell, then start submitting its jobs."""
    with transaction.atomic():
        experiment = Experiment.objects.create(
            name=definition.name, created_by=by, team_id=team_of(by), prompts=definition.prompts,
            seeds=definition.seeds, definition=definition.text,
        )  # fmt: skip
        arms = [
            Arm.objects.create(
                experiment=experiment,
                name=spec.name,
                position=i,
                lane=spec.lane,
                model_version=spec.version,
                **spec.overrides,
            )  # fmt: skip
            for i, spec in enumerate(definition.arms)
        ]
        ExperimentCell.objects.bulk_create(
            ExperimentCell(experiment=experiment, arm=arm, prompt_index=p, sample_index=s, seed=seed)
            for p in range(len(definition.prompts))
            for s, seed in enumerate(definition.seeds)
            for arm in arms
        )
        AuditEvent.record(
            by, "experiment.start", target=experiment.name,
            after={"arms": [a.name for a in arms], "jobs": definition.job_count},
        )  # fmt: skip
        transaction.on_commit(lambda: pump(experiment.pk))
    return experiment


def pump(experiment_id: int) -> int:
    """Submit the next cells (in prompt, seed, arm order) up to the outstanding limit; returns how many."""
    from .actions import BriefRejected, submit_brief

    with transaction.atomic():
        experiment = Experiment.objects.select_for_update().filter(pk=experiment_id).first()
        if experiment is None or experiment.state != Experiment.State.RUNNING:
            return 0
        cells = ExperimentCell.objects.filter(experiment=experiment)
        outstanding = cells.filter(job__isnull=False).exclude(job__state__in=Job.TERMINAL).count()
        room = settings.EXPERIMENT_MAX_OUTSTANDING - outstanding
        submitted = 0
        for cell in cells.filter(job__isnull=True).select_related("arm__lane", "arm__model_version")[: max(room, 0)]:
            arm, prompt = cell.arm, experiment.prompts[cell.prompt_index]
            try:
                job = submit_brief(
                    experiment.created_by, prompt=prompt["prompt"], expected_text=prompt.get("expected_text", ""),
                    intent="experiment", seed=cell.seed, priority=Priority.BACKGROUND, lane=arm.lane,
                    model_version=arm.model_version,
                    **{key: getattr(arm, key) for key in OVERRIDES if getattr(arm, key) is not None},
                )  # fmt: skip
            except BriefRejected as exc:  # the lane changed since the experiment was defined
                reason = f"arm {arm.name} can no longer run: {exc}"[:300]
                Experiment.objects.filter(pk=experiment.pk).update(
                    state=Experiment.State.CANCELLED, finished_at=timezone.now(), stopped_reason=reason
                )
                AuditEvent.record(None, "experiment.stop", target=experiment.name, note=reason)
                return submitted
            ExperimentCell.objects.filter(pk=cell.pk).update(job=job)
            submitted += 1
        if not submitted and outstanding == 0 and not cells.filter(job__isnull=True).exists():
            Experiment.objects.filter(pk=experiment.pk, state=Experiment.State.RUNNING).update(
                state=Experiment.State.FINISHED, finished_at=timezone.now()
            )
    return submitted


def pause(experiment: Experiment, by=None) -> bool:
    with transaction.atomic():
        paused = Experiment.objects.filter(pk=experiment.pk, state=Experiment.State.RUNNING).update(
            state=Experiment.State.PAUSED
        )
        if paused:
            AuditEvent.record(by, "experiment.pause", target=experiment.name)
    return bool(paused)


def resume(experiment: Experiment, by=None) -> bool:
    with transaction.atomic():
        resumed = Experiment.objects.filter(pk=experiment.pk, state=Experiment.State.PAUSED).update(
            state=Experiment.State.RUNNING
        )
        if resumed:
            AuditEvent.record(by, "experiment.resume", target=experiment.name)
            transaction.on_commit(lambda: pump(experiment.pk))
    return bool(resumed)


def cancel(experiment: Experiment, by=None) -> int | None:
    """Stop the experiment and cancel its jobs that have not started: how many, or None if it had already ended."""
    from .actions import cancel_job

    with transaction.atomic():
        done = Experiment.objects.filter(
            pk=experiment.pk, state__in=(Experiment.State.RUNNING, Experiment.State.PAUSED)
        ).update(state=Experiment.State.CANCELLED, finished_at=timezone.now(), stopped_reason="cancelled")
        if not done:
            return None
        waiting = Job.objects.filter(experiment_cell__experiment=experiment, state__in=Job.CANCELLABLE)
        cancelled = sum(1 for job in waiting if cancel_job(job))
        AuditEvent.record(by, "experiment.cancel", target=experiment.name, after={"jobs_cancelled": cancelled})
        return cancelled


@shared_task(name="lanes.experiments.pump_experiments", ignore_result=True)
def pump_experiments() -> int:
    """Beat: keep every running experiment fed (job completions feed them too)."""
    return sum(
        pump(pk) for pk in Experiment.objects.filter(state=Experiment.State.RUNNING).values_list("pk", flat=True)
    )


def after_job(job: Job) -> None:
    """A finished job of an experiment makes room for its next cell (the task loads the cell with the job)."""
    try:
        cell = job.experiment_cell
    except ExperimentCell.DoesNotExist:
        return
    pump(cell.experiment_id)


# Results


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

    @property
    def passed(self) -> bool | None:
        return {"passed": True, "flagged": False}.get(self.verdict)


def cell_results(experiment: Experiment) -> list[CellResult]:
    """One row per cell, read in a fixed number of queries."""
    cells = list(
        ExperimentCell.objects.filter(experiment=experiment)
        .select_related("arm", "job")
        .prefetch_related("job__artifacts")
        .order_by("prompt_index", "sample_index", "arm__position")
    )
    verifications: dict[int, Verification] = {}
    job_ids = [c.job_id for c in cells if c.job_id]
    for v in Verification.objects.filter(job_id__in=job_ids, source__isnull=True).order_by("created_at"):
        verifications.setdefault(v.job_id, v)
    rows = []
    for cell in cells:
        job = cell.job
        verification = verifications.get(cell.job_id) if job else None
        scores = (verification.details or {}).get("scores", []) if verification else []
        similarity = statistics.fmean(s["similarity"] for s in scores) if scores else None
        final = job.final_artifact() if job else None
        rows.append(
            CellResult(
                arm=cell.arm.name,
                prompt_index=cell.prompt_index,
                sample_index=cell.sample_index,
                seed=cell.seed,
                job_id=cell.job_id,
                state=job.state if job else "pending",
                queue_s=job.queue_seconds if job else None,
                run_s=job.run_seconds if job else None,
                gpu_s=job.gpu_seconds if job else None,
                cost=job.gpu_seconds * price_per_hour(job.gpu_name) / 3600
                if job and job.gpu_seconds is not None
                else None,
                peak_memory_bytes=job.peak_memory_bytes if job else None,
                verdict=verification.status if verification else "",
                score=round(similarity, 4) if similarity is not None else None,
                edit_distance=round(1 - similarity, 4) if similarity is not None else None,
                image_sha256=final.sha256 if final else "",
            )
        )
    return rows


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
    from .comparison import compare_distances, compare_pass_rates, compare_times

    return [
        compare_times(pairs(rows, baseline, arm, lambda r: r.run_s), arm, baseline),
        compare_times(pairs(rows, baseline, arm, lambda r: r.gpu_s), arm, baseline, "GPU-seconds"),
        compare_pass_rates(pairs(rows, baseline, arm, lambda r: r.passed), arm, baseline),
        compare_distances(pairs(rows, baseline, arm, lambda r: r.edit_distance), arm, baseline),
    ]
