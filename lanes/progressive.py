"""Progressive rollouts: a version reaches a lane's traffic in canary steps, each judged by an analysis.

A lane's plan (RolloutPlan) lists steps such as `5 % for 20 jobs → 25 % for 10 min → 100 %` and the
analysis thresholds. Starting a rollout copies the plan into a Rollout row and starts the canary at
the first step's share. Beat (`check_rollouts`) analyses the current step over the jobs finished
since it began (lanes/canary.py `analyse`, canary against the active version): any metric failing
rolls the version back (end_canary, which re-pins its waiting jobs); when the step's minimums are met
and every metric passes, the canary takes the next share, and after the last step it is promoted;
otherwise it waits. Ops may pause (the step is held; a failing metric still rolls back), resume,
skip a step or abort. Every transition is a lane change (lanes/changes.py: revision, audit, 409).

A plan is written in YAML — the `rollout:` key of a policy route, or the lane page's plan box:

    steps:
      - {percent: 5, min_samples: 20}
      - {percent: 25, min_samples: 50}
      - {percent: 50, min_minutes: 10}
    thresholds: {max_error_rate_increase: 0.05, max_p95_ratio: 1.5}
    require_shadow: true    # optional: no first step until the version's shadow on the lane passes

With `require_shadow`, a rollout starts only once the version's latest shadow on the lane passes
(lanes.shadow.gate: enough pairs, each figure within the lane's guards); otherwise it is refused
with the gate's reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml
from django.db import transaction
from django.utils import timezone

from telemetry import push

from . import shadow, yamlfile
from .canary import MetricCheck, Status, analyse, arm_figures
from .changes import ControlError, locked_lane, record_change
from .models import THRESHOLDS, Lane, ModelVersion, Rollout, RolloutPlan
from .rollout import _check_deployable, end_canary, promote, rollout_change, start_canary
from .yamlfile import YamlError

STEP_KEYS = ("percent", "min_samples", "min_minutes")
EXAMPLE_PLAN = """\
steps:
- {percent: 5, min_samples: 20}
- {percent: 25, min_samples: 50}
- {percent: 50, min_minutes: 10}
thresholds: {max_error_rate_increase: 0.05, max_p95_ratio: 1.5, max_flag_rate_increase: 0.1,
  max_edit_distance_increase: 0.1, max_gpu_seconds_ratio: 1.5}
"""
MAX_STEPS = 20


class PlanError(YamlError):
    """A plan that cannot be used; `errors` lists every problem (with its line, when it came from YAML)."""


# Checking a plan: the same rules whether it came from YAML (with lines), the form or the API.


PLAN_KEYS = ("steps", "thresholds", "require_shadow")


@dataclass(frozen=True)
class Plan:
    steps: list[dict]
    thresholds: dict[str, float]
    require_shadow: bool = False


def check_plan(plan: object) -> tuple[Plan, list[tuple[str, str]]]:
    """The plan (thresholds' defaults filled in) and every problem as (where, message), `where` a path
    such as `steps[2].percent`."""
    problems: list[tuple[str, str]] = []
    if not isinstance(plan, dict):
        return Plan([], {}), [("", "a rollout plan must be a mapping with steps (and thresholds)")]
    for key in plan:
        if key not in PLAN_KEYS:
            problems.append((str(key), f"unknown key {key!r} (expected {', '.join(PLAN_KEYS)})"))
    require_shadow = plan.get("require_shadow", False)
    if require_shadow is None:
        require_shadow = False
    if not isinstance(require_shadow, bool):
        problems.append(("require_shadow", f"require_shadow must be true or false, not {require_shadow!r}"))
        require_shadow = False
    raw_steps = plan.get("steps")
    steps: list[dict] = []
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.append(("steps", "a plan needs a list of steps, e.g. [{percent: 10, min_samples: 20}]"))
        raw_steps = []
    elif len(raw_steps) > MAX_STEPS:
        problems.append(("steps", f"a plan has at most {MAX_STEPS} steps"))
    previous = 0
    for i, raw in enumerate(raw_steps):
        where, n = f"steps[{i}]", f"step {i + 1}"
        if not isinstance(raw, dict):
            problems.append((where, f"{n} must be a mapping such as {{percent: 10, min_samples: 20}}"))
            continue
        for key in raw:
            if key not in STEP_KEYS:
                problems.append((f"{where}.{key}", f"{n}: unknown key {key!r} (expected {', '.join(STEP_KEYS)})"))
        percent: Any = raw.get("percent")
        samples: Any = raw.get("min_samples")
        minutes: Any = raw.get("min_minutes")
        if not _is_int(percent) or not 1 <= percent <= 99:
            message = f"percent must be a whole number from 1 to 99, not {percent!r} (100 % follows the last step)"
            problems.append((f"{where}.percent", f"{n}: {message}"))
            percent = None
        elif percent <= previous:
            message = f"percentages must increase ({percent} % comes after {previous} %)"
            problems.append((f"{where}.percent", f"{n}: {message}"))
        if samples is not None and (not _is_int(samples) or not 1 <= samples <= 1_000_000):
            message = f"min_samples must be a whole number from 1 to 1000000, not {samples!r}"
            problems.append((f"{where}.min_samples", f"{n}: {message}"))
        if minutes is not None and (not _is_number(minutes) or not 0 < minutes <= 10_080):
            message = f"min_minutes must be a number above 0 and at most 10080 (a week), not {minutes!r}"
            problems.append((f"{where}.min_minutes", f"{n}: {message}"))
        if samples is None and minutes is None:
            problems.append((where, f"{n} needs a minimum: min_samples, min_minutes or both"))
        if percent is not None:
            previous = max(previous, percent)
        steps.append({"percent": percent, "min_samples": samples, "min_minutes": minutes})
    raw_thresholds = plan.get("thresholds", {})
    thresholds = {name: default for name, (_, _, default, _) in THRESHOLDS.items()}
    if raw_thresholds is None:
        raw_thresholds = {}
    if not isinstance(raw_thresholds, dict):
        problems.append(("thresholds", "thresholds must be a mapping of threshold names to numbers"))
        raw_thresholds = {}
    for name, value in raw_thresholds.items():
        where = f"thresholds.{name}"
        if name not in THRESHOLDS:
            problems.append((where, f"unknown threshold {name!r} (expected {', '.join(THRESHOLDS)})"))
            continue
        low, high, _, what = THRESHOLDS[name]
        if not _is_number(value) or not low <= value <= high:
            problems.append((where, f"{name} ({what}) must be a number from {low:g} to {high:g}, not {value!r}"))
            continue
        thresholds[name] = float(value)
    return Plan(steps, thresholds, require_shadow), problems


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _node_lines(node: yaml.Node, path: str, lines: dict[str, int]) -> None:
    lines[path] = yamlfile.line(node)
    if isinstance(node, yaml.MappingNode):
        for key, child in node.value:
            child_path = f"{path}.{key.value}" if path else str(key.value)
            lines[child_path] = yamlfile.line(key)
            _node_lines(child, child_path, lines)
            lines[child_path] = yamlfile.line(key)
    elif isinstance(node, yaml.SequenceNode):
        for i, child in enumerate(node.value):
            _node_lines(child, f"{path}[{i}]", lines)


def plan_from_node(node: yaml.Node) -> tuple[Plan, list[str]]:
    """A plan from a YAML node (the policy's `rollout:` or a whole plan document): errors with lines."""
    lines: dict[str, int] = {}
    _node_lines(node, "", lines)
    plan, problems = check_plan(yamlfile.value(node))

    def line_of(where: str) -> int:
        while where not in lines and where:  # a key that is missing: its parent's line
            where = where.rsplit(".", 1)[0] if "." in where else where.rsplit("[", 1)[0]
        return lines.get(where, lines[""])

    return plan, [f"line {line_of(where)}: {message}" for where, message in problems]


def plan_from_yaml(text: str) -> Plan:
    """A plan from its YAML text (the lane page's plan box); PlanError with every line-numbered problem."""
    root = yamlfile.compose(text, PlanError)
    if root is None:
        raise PlanError(["line 1: the plan is empty"])
    plan, errors = plan_from_node(root)
    if errors:
        raise PlanError(errors)
    return plan


def plan_document(steps: list[dict], thresholds: dict[str, float], require_shadow: bool = False) -> dict:
    """A plan as the policy file and the plan box write it (require_shadow only when set)."""
    plain = [{k: v for k, v in step.items() if v is not None} for step in steps]
    return {"steps": plain, "thresholds": thresholds, **({"require_shadow": True} if require_shadow else {})}


def plan_yaml(steps: list[dict], thresholds: dict[str, float], require_shadow: bool = False) -> str:
    """A plan as the YAML the plan box and the policy file read back."""
    document = plan_document(steps, thresholds, require_shadow)
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None)


def baseline_problem(lane: Lane) -> str | None:
    """Why the lane has no baseline for a rollout to be compared with (None if it has one)."""
    active = lane.active_version
    if not active.is_deployable:
        return f"lane {lane.name} has no baseline: its active version {active.name} is {active.get_status_display()}"
    return None


def save_plan(lane: Lane, plan_in: Plan, by, expected_revision=None) -> RolloutPlan:
    """Set the lane's plan (already checked by check_plan); a running rollout keeps the plan it started with."""
    steps, thresholds = plan_in.steps, plan_in.thresholds
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        problem = baseline_problem(lane)
        if problem:
            raise ControlError(f"No plan saved: {problem}.", {"plan": problem})
        before = RolloutPlan.objects.filter(lane=lane).first()
        plan, _ = RolloutPlan.objects.update_or_create(
            lane=lane,
            defaults={
                "steps": steps,
                "thresholds": thresholds,
                "require_shadow": plan_in.require_shadow,
                "updated_at": timezone.now(),
                "updated_by": _user(by),
            },  # fmt: skip
        )
        record_change(
            lane, [], by, "rollout.plan",
            before={"plan": before.describe(), "thresholds": before.thresholds} if before else {},
            after={"plan": plan.describe(), "thresholds": thresholds},
        )  # fmt: skip
    return plan


def _user(by):
    return by if by is not None and by.is_authenticated else None


# Transitions


def running(lane: Lane) -> Rollout | None:
    return Rollout.objects.running().filter(lane=lane).select_related("version", "baseline").first()


def start(lane: Lane, version: ModelVersion, by, expected_revision: int | None = None) -> Rollout:
    """Roll `version` out on the lane by its plan: the canary at the first step's share."""
    with transaction.atomic():
        lane = locked_lane(lane, expected_revision)
        plan = RolloutPlan.objects.filter(lane=lane).first()
        if plan is None:
            raise ControlError(f"Lane {lane.name} has no rollout plan: save one first.", {"plan": "No plan."})
        problem = baseline_problem(lane)
        if problem:
            raise ControlError(f"No rollout started: {problem}.")
        version = ModelVersion.objects.get(pk=version.pk)
        _check_deployable(version)
        changed = version.files_changed()
        if changed:
            raise ControlError(f"{version.name} cannot be rolled out: {changed}. Register it again.")
        if running(lane) is not None:
            raise ControlError(f"Lane {lane.name} already has a rollout running: abort it first.")
        if lane.canary_version_id is not None:
            raise ControlError(f"Lane {lane.name} has a canary running already: stop it first.")
        if plan.require_shadow:
            passed, why = shadow.gate(lane, version)
            if not passed:
                raise ControlError(
                    f"No rollout started: the plan needs a passing shadow of {version.name} first: {why}"
                )
        first = plan.steps[0]["percent"]
        lane = start_canary(lane, version, first, by)
        rollout = Rollout.objects.create(
            lane=lane, version=version, baseline=lane.active_version, steps=plan.steps, thresholds=plan.thresholds,
            step=0, step_started_at=timezone.now(), started_by=_user(by),
        )  # fmt: skip
        rollout_change(lane, rollout, by, "started", f"{version.name} by plan {rollout.describe()}")
    return rollout


def _locked_running(lane: Lane, expected_revision: int | None) -> tuple[Lane, Rollout]:
    lane = locked_lane(lane, expected_revision)
    current = running(lane)
    if current is None:
        raise ControlError(f"Lane {lane.name} has no rollout running.")
    return lane, current


def pause(lane: Lane, by, expected_revision: int | None = None, reason: str = "") -> Rollout:
    with transaction.atomic():
        lane, current = _locked_running(lane, expected_revision)
        if current.paused:
            raise ControlError(f"The rollout on {lane.name} is already paused.")
        current.paused, current.paused_at = True, timezone.now()
        rollout_change(lane, current, by, "paused", reason, ["paused", "paused_at"])
    return current


def resume(lane: Lane, by, expected_revision: int | None = None) -> Rollout:
    with transaction.atomic():
        lane, current = _locked_running(lane, expected_revision)
        if not current.paused:
            raise ControlError(f"The rollout on {lane.name} is not paused.")
        current.paused, current.paused_at = False, None
        rollout_change(lane, current, by, "resumed", "", ["paused", "paused_at"])
    return current


def skip(lane: Lane, by, expected_revision: int | None = None) -> Rollout:
    """Go to the next step now without waiting for its analysis (after the last step: promote)."""
    with transaction.atomic():
        lane, current = _locked_running(lane, expected_revision)
        return _advance(lane, current, by, "skipped by hand")


def abort(lane: Lane, by, expected_revision: int | None = None, reason: str = "") -> Rollout:
    """Stop the rollout: the canary ends and its waiting jobs move to the active version."""
    with transaction.atomic():
        lane, current = _locked_running(lane, expected_revision)
        end_canary(lane, by, reason=reason or "the rollout was aborted", rollout_state=Rollout.State.ABORTED)
        current.refresh_from_db()
    return current


def _advance(lane: Lane, current: Rollout, by, why: str) -> Rollout:
    """In the caller's transaction with the lane locked: the next step's share, or the promotion."""
    if current.is_last_step:
        promote(lane, by, reason=f"every step passed; promoted by the plan ({why})")  # ends the rollout
        current.refresh_from_db()
        return current
    current.step += 1
    current.step_started_at = timezone.now()
    current.analysis, current.analysed_at = [], None
    lane = start_canary(lane, current.version, current.steps[current.step]["percent"], by)
    note = f"step {current.step + 1} of {len(current.steps)}: {lane.canary_percent} % ({why})"
    rollout_change(lane, current, by, "advanced", note, ["step", "step_started_at", "analysis", "analysed_at"])
    return current


# Beat


@dataclass(frozen=True)
class StepVerdict:
    decision: str  # advance / roll back / wait
    checks: list[MetricCheck]
    reasons: list[str]  # why it waits or fails

    def describe(self) -> str:
        return f"{self.decision}: {'; '.join(self.reasons) or 'every metric passes'}"


def judge_step(lane: Lane, current: Rollout, now=None) -> StepVerdict:
    """The current step's analysis over the jobs finished since it began."""
    now = now or timezone.now()
    step = current.steps[current.step]
    since = current.step_started_at
    canary = arm_figures(lane, current.version, since)
    baseline = arm_figures(lane, lane.active_version, since)
    needed = step.get("min_samples") or 1
    checks = analyse(canary, baseline, current.thresholds, needed, text_checked=lane.verify)
    failed = [check.sentence() for check in checks if check.status == Status.FAIL]
    if failed:
        return StepVerdict("roll back", checks, failed)
    reasons = []
    if step.get("min_samples") and canary.finished < step["min_samples"]:
        reasons.append(f"step needs {step['min_samples']} canary jobs, has {canary.finished}")
    if step.get("min_minutes"):
        elapsed = (now - since).total_seconds() / 60
        if elapsed < step["min_minutes"]:
            reasons.append(f"step needs {step['min_minutes']:g} min, has run {elapsed:.1f} min")
    reasons += [check.sentence() for check in checks if check.status == Status.WAITING]
    if current.paused:
        reasons.insert(0, "paused")
    return StepVerdict("wait" if reasons else "advance", checks, reasons)


def check_rollouts(now=None) -> dict[str, str]:
    """Beat: analyse each running rollout's step; advance, roll back or wait."""
    outcome: dict[str, str] = {}
    for current in Rollout.objects.running().select_related("lane", "version", "baseline"):
        try:
            outcome[current.lane.name] = step_once(current.lane, now)
        except ControlError as exc:  # changed meanwhile (someone paused, skipped, aborted): next time
            outcome[current.lane.name] = f"not changed: {exc}"
    return outcome


def step_once(lane: Lane, now=None) -> str:
    with transaction.atomic():
        lane = locked_lane(lane, None)
        current = running(lane)
        if current is None:
            return "no rollout"
        verdict = judge_step(lane, current, now)
        current.analysis = [check.as_dict() for check in verdict.checks]
        current.analysed_at = timezone.now()
        if verdict.decision == "roll back":
            reason = "; ".join(verdict.reasons)
            current.save(update_fields=["analysis", "analysed_at"])
            end_canary(lane, None, reason=reason, automatic=True, rollout_state=Rollout.State.ROLLED_BACK)
            return f"rolled back: {reason}"
        if verdict.decision == "advance":
            current.save(update_fields=["analysis", "analysed_at"])
            _advance(lane, current, None, "analysis passed")
            return f"{'promoted' if current.state == Rollout.State.PROMOTED else 'advanced'}: {verdict.describe()}"
        current.save(update_fields=["analysis", "analysed_at"])
        # The figures moved: lane pages re-read the analysis.
        pushed = (lane.name, current.state, current.step, lane.canary_percent)
        transaction.on_commit(lambda: push.lane_rollout(*pushed), robust=True)
    return verdict.describe()
