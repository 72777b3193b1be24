"""The routing policy as YAML: lanes ("routes") and the intents that map onto them.

    routes:
      - name: fast_draft
        model: demo-tiny-sd-v1
        max_concurrency: 2
        sample_steps: 12
        ...
        windows:                        # off-peak windows (lanes.windows), optional
          - {cron: "0 22 * * *", minutes: 480, mode: release, timezone: Europe/Paris}
    intents:
      draft: {lane: fast_draft, priority: standard}
    teams:                              # fair-share weights and quotas (lanes.quotas), optional
      studio:
        weight: 2
        max_concurrent_jobs: 8          # a number is the hard limit
        gpu_seconds_per_day: {soft: 3000, hard: 3600}
        spend_per_month: {soft: 80, hard: 100}
        denied_lanes: [final_render]

Mind the words: the file's `routes:` list *lanes* (Lane rows; the file format has always
called them so, and files in use say it), while the Route model is an *intent* → lane
mapping, which the file calls `intents:`.

Applying is validated first and atomic: a file with any error changes nothing and gets
every error with its line number. Lanes missing from an applied file are disabled (jobs
still point at them), never deleted. The file replaces the whole policy, so `apply` answers
with what it changed (a PolicyDiff), and `apply(..., dry_run=True)` answers the same without
changing anything: the console shows it and asks to confirm before applying.
A team the file leaves out of `teams:` has no quota row (weight 1, no limits), and a lane
without `windows:` has none.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import yaml
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import transaction
from django.db.models import Count, F

from accounts.models import Team

from . import families, progressive, windows, yamlfile
from .changes import acting_user, describe_errors, save_lane
from .control import unreachable_intents
from .models import (
    AuditEvent,
    Job,
    Lane,
    LaneWindow,
    ModelVersion,
    Priority,
    RolloutPlan,
    Route,
    TeamQuota,
    Worker,
)
from .rollout import record_release
from .yamlfile import YamlError

# YAML key -> (Lane field, type, minimum)
LANE_KEYS: dict[str, tuple[str, type, float | None]] = {
    "description": ("description", str, None),
    "enabled": ("enabled", bool, None),
    "model": ("active_version", str, None),
    "queue": ("queue", str, None),
    "fallback": ("fallback", str, None),
    "priority": ("default_priority", str, None),
    "sample_steps": ("default_steps", int, 1),
    "min_steps": ("min_steps", int, 1),
    "max_steps": ("max_steps", int, 1),
    "guidance": ("default_guidance", float, 0),
    "min_guidance": ("min_guidance", float, 0),
    "max_guidance": ("max_guidance", float, 0),
    "width": ("default_width", int, 8),
    "height": ("default_height", int, 8),
    "min_size": ("min_size", int, 8),
    "max_size": ("max_size", int, 8),
    "max_concurrency": ("max_concurrency", int, 1),
    "latency_slo_ms": ("latency_slo_ms", int, 1),
    "defer_depth": ("defer_depth", int, 1),
    "hard_cap": ("hard_cap", int, 1),
    "preemptible": ("preemptible", bool, None),
    "verify": ("verify", bool, None),
    "verify_threshold": ("verify_threshold", float, 0),
    "verify_case_sensitive": ("verify_case_sensitive", bool, None),
    "verify_ignore_punctuation": ("verify_ignore_punctuation", bool, None),
    "autofix": ("autofix", bool, None),
}
CASCADE_KEYS: dict[str, tuple[str, type, float | None]] = {
    "scale": ("refine_scale", int, 1),
    "steps": ("refine_steps", int, 1),
    "strength": ("refine_strength", float, 0),
    "batch_size": ("refine_batch_size", int, 1),
    "max_wait_ms": ("refine_max_wait_ms", int, 0),
    "upscaler": ("refine_version", str, None),
}
INTENT_KEYS = ("lane", "priority", "label")
WINDOW_KEYS = ("cron", "minutes", "mode", "timezone")
# YAML key -> (TeamQuota fields: soft, hard; type). A plain number is the hard limit.
TEAM_LIMITS: dict[str, tuple[str, str, type]] = {
    "max_concurrent_jobs": ("max_concurrent_soft", "max_concurrent_hard", int),
    "gpu_seconds_per_day": ("gpu_seconds_day_soft", "gpu_seconds_day_hard", float),
    "spend_per_month": ("spend_month_soft", "spend_month_hard", float),
}
TEAM_KEYS = ("weight", "denied_lanes", *TEAM_LIMITS)


class PolicyError(YamlError):
    pass


class PolicyConflict(PolicyError):
    """The policy changed after the editor loaded it: applying would undo someone's change."""


@dataclass
class PolicyDiff:
    """What applying a policy changes (or would change, on a dry run)."""

    lanes: int = 0  # lanes the file describes
    intents: int = 0  # intents the file describes
    added_lanes: list[str] = dataclasses.field(default_factory=list)
    changed_lanes: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # lane -> the policy keys that change
    disabled_lanes: list[str] = dataclasses.field(default_factory=list)  # enabled before, disabled after
    added_intents: list[str] = dataclasses.field(default_factory=list)
    changed_intents: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # intent -> lane/priority/label
    removed_intents: list[str] = dataclasses.field(default_factory=list)
    changed_teams: list[str] = dataclasses.field(default_factory=list)  # teams whose quota is added, changed or removed
    affected_jobs: dict[str, int] = dataclasses.field(
        default_factory=dict
    )  # changed or disabled lane -> jobs waiting there
    unconsumed_lanes: list[str] = dataclasses.field(
        default_factory=list
    )  # enabled after, but no live worker consumes them
    applied: bool = False

    @property
    def is_empty(self) -> bool:
        return not (
            self.added_lanes or self.changed_lanes or self.disabled_lanes
            or self.added_intents or self.changed_intents or self.removed_intents or self.changed_teams
        )  # fmt: skip

    def lines(self) -> list[str]:
        """The changes in words, one line per kind (none: nothing changes)."""
        out = []
        for kind, names in (
            ("added lanes", self.added_lanes), ("changed lanes", self.changed_lanes),
            ("disabled lanes", self.disabled_lanes), ("added intents", self.added_intents),
            ("changed intents", self.changed_intents), ("removed intents", self.removed_intents),
            ("changed team quotas", self.changed_teams),
        ):  # fmt: skip
            if isinstance(names, dict):  # name -> the keys that change
                names = [f"{name} ({', '.join(keys)})" for name, keys in names.items()]
            if names:
                out.append(f"{kind}: {('; ' if kind in ('changed lanes', 'changed intents') else ', ').join(names)}")
        if self.affected_jobs:
            total = sum(self.affected_jobs.values())
            where = ", ".join(f"{n} on {lane}" for lane, n in self.affected_jobs.items())
            out.append(f"{total} queued job{'s' if total != 1 else ''} on changed or disabled lanes ({where})")
        if self.unconsumed_lanes:
            out.append(f"no live worker consumes lanes: {', '.join(self.unconsumed_lanes)}")
        return out

    def summary(self) -> str:
        if self.is_empty:
            return "nothing changed"
        return "; ".join(self.lines())

    def as_dict(self) -> dict:
        return {
            "added_lanes": self.added_lanes,
            "changed_lanes": self.changed_lanes,
            "disabled_lanes": self.disabled_lanes,
            "added_intents": self.added_intents,
            "changed_intents": self.changed_intents,
            "removed_intents": self.removed_intents,
            "changed_teams": self.changed_teams,
            "affected_jobs": self.affected_jobs,
            "unconsumed_lanes": self.unconsumed_lanes,
        }


@dataclass
class LaneSpec:
    line: int
    values: dict  # Lane field -> value (active_version/fallback still names)
    rollout: progressive.Plan | None = None  # the lane's rollout plan
    windows: list[dict] = dataclasses.field(default_factory=list)  # WINDOW_KEYS -> value, and "line"


@dataclass
class TeamSpec:
    line: int
    name: str
    values: dict  # TeamQuota field -> value
    denied: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # lane name, line


def _scalar(node, kind: type, key: str, minimum, errors: list[str]):
    if not isinstance(node, yaml.ScalarNode):
        errors.append(f"line {yamlfile.line(node)}: {key} must be a single value")
        return None
    value = yamlfile.value(node)
    if key == "fallback" and value is None:
        return None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        errors.append(f"line {yamlfile.line(node)}: {key} must be {kind.__name__}, not {value!r}")
        return None
    if minimum is not None and value < minimum:
        errors.append(f"line {yamlfile.line(node)}: {key} must be at least {minimum:g}, not {value}")
        return None
    if key == "priority" and value not in Priority.values:
        errors.append(
            f"line {yamlfile.line(node)}: priority must be one of {', '.join(Priority.values)}, not {value!r}"
        )
        return None
    return value


def _windows(node, errors: list[str]) -> list[dict]:
    if not isinstance(node, yaml.SequenceNode):
        errors.append(f"line {yamlfile.line(node)}: windows must be a list")
        return []
    found = []
    for item in node.value:
        entry: dict = {"line": yamlfile.line(item)}
        for key, value, kline in yamlfile.mapping(item, "a window", errors):
            if key not in WINDOW_KEYS:
                errors.append(f"line {kline}: unknown window key {key!r} (expected {', '.join(WINDOW_KEYS)})")
            elif key == "minutes":
                entry[key] = _scalar(value, int, "minutes", None, errors)
            else:
                entry[key] = _scalar(value, str, key, None, errors)
        if "cron" not in entry or "minutes" not in entry or "mode" not in entry:
            errors.append(f"line {entry['line']}: a window needs cron, minutes and mode")
        elif entry.get("mode") is not None and entry["mode"] not in LaneWindow.Mode.values:
            errors.append(
                f"line {entry['line']}: window mode must be one of {', '.join(LaneWindow.Mode.values)}, "
                f"not {entry['mode']!r}"
            )
        found.append(entry)
    return found


def _teams(node, errors: list[str]) -> list[TeamSpec]:
    teams = []
    for name, value, line in yamlfile.mapping(node, "teams", errors):
        spec = TeamSpec(line=line, name=name, values={})
        for key, item, kline in yamlfile.mapping(value, f"team {name!r}", errors):
            if key == "weight":
                weight = _scalar(item, float, "weight", None, errors)
                if weight is not None and weight <= 0:
                    errors.append(f"line {kline}: team {name!r}: weight must be above 0, not {weight:g}")
                elif weight is not None:
                    spec.values["weight"] = weight
            elif key == "denied_lanes":
                if not isinstance(item, yaml.SequenceNode):
                    errors.append(f"line {kline}: team {name!r}: denied_lanes must be a list of lanes")
                    continue
                for lane in item.value:
                    lane_name = _scalar(lane, str, "denied_lanes", None, errors)
                    if lane_name is not None:
                        spec.denied.append((lane_name, yamlfile.line(lane)))
            elif key in TEAM_LIMITS:
                soft_field, hard_field, kind = TEAM_LIMITS[key]
                if isinstance(item, yaml.MappingNode):
                    for level, limit, lline in yamlfile.mapping(item, key, errors):
                        if level not in ("soft", "hard"):
                            errors.append(f"line {lline}: {key} takes soft and hard, not {level!r}")
                            continue
                        field = soft_field if level == "soft" else hard_field
                        spec.values[field] = _scalar(limit, kind, f"{key}.{level}", 0, errors)
                else:
                    spec.values[hard_field] = _scalar(item, kind, key, 0, errors)
                soft, hard = spec.values.get(soft_field), spec.values.get(hard_field)
                if soft is not None and hard is not None and soft > hard:
                    errors.append(f"line {kline}: team {name!r}: {key} soft limit {soft:g} is above its hard {hard:g}")
            else:
                errors.append(f"line {kline}: unknown team key {key!r} (expected {', '.join(TEAM_KEYS)})")
        teams.append(spec)
    return teams


def parse(text: str) -> tuple[list[LaneSpec], dict[str, dict], list[TeamSpec], list[str]]:
    """Lane specs, intents and team quotas from YAML, with every error found (line-numbered)."""
    errors: list[str] = []
    root = yamlfile.compose(text, PolicyError)
    if root is None:
        raise PolicyError(["line 1: the policy is empty"])
    lanes: list[LaneSpec] = []
    intents: dict[str, dict] = {}
    teams: list[TeamSpec] = []
    seen_top = set()
    for key, value, line in yamlfile.mapping(root, "the policy", errors):
        seen_top.add(key)
        if key == "routes":
            if not isinstance(value, yaml.SequenceNode):
                errors.append(f"line {line}: routes must be a list")
                continue
            for item in value.value:
                spec = LaneSpec(line=yamlfile.line(item), values={})
                for k, v, kline in yamlfile.mapping(item, "a route", errors):
                    if k == "name":
                        spec.values["name"] = _scalar(v, str, k, None, errors)
                    elif k == "windows":
                        spec.windows = _windows(v, errors)
                    elif k == "cascade":
                        spec.values["cascade"] = True
                        for ck, cv, ckline in yamlfile.mapping(v, "cascade", errors):
                            if ck not in CASCADE_KEYS:
                                errors.append(f"line {ckline}: unknown cascade key {ck!r}")
                                continue
                            field, kind, minimum = CASCADE_KEYS[ck]
                            spec.values[field] = _scalar(cv, kind, f"cascade.{ck}", minimum, errors)
                    elif k == "rollout":
                        plan, plan_errors = progressive.plan_from_node(v)
                        errors.extend(e.replace(": ", ": rollout: ", 1) for e in plan_errors)
                        spec.rollout = plan
                    elif k in LANE_KEYS:
                        field, kind, minimum = LANE_KEYS[k]
                        spec.values[field] = _scalar(v, kind, k, minimum, errors)
                    else:
                        errors.append(f"line {kline}: unknown route key {k!r}")
                if not spec.values.get("name"):
                    errors.append(f"line {spec.line}: a route needs a name")
                    continue
                if "active_version" not in spec.values:
                    errors.append(f"line {spec.line}: route {spec.values['name']!r} needs a model")
                lanes.append(spec)
        elif key == "intents":
            for intent, v, iline in yamlfile.mapping(value, "intents", errors):
                entry = {"line": iline}
                if isinstance(v, yaml.ScalarNode):
                    entry["lane"] = v.value
                else:
                    for ik, iv, ikline in yamlfile.mapping(v, f"intent {intent!r}", errors):
                        if ik not in INTENT_KEYS:
                            errors.append(f"line {ikline}: unknown intent key {ik!r}")
                        else:
                            entry[ik] = _scalar(iv, str, ik, None, errors)
                if not entry.get("lane"):
                    errors.append(f"line {iline}: intent {intent!r} needs a lane")
                intents[intent] = entry
        elif key == "teams":
            teams = _teams(value, errors)
        else:
            errors.append(f"line {line}: unknown key {key!r} (expected routes, intents, teams)")
    for required in ("routes", "intents"):
        if required not in seen_top:
            errors.append(f"line 1: the policy needs {required}")
    return lanes, intents, teams, errors


def _is_slug(value: str) -> bool:
    try:
        validate_slug(value)
    except ValidationError:
        return False
    return True


def validate_teams(teams: list[TeamSpec], lane_names: set[str], errors: list[str]) -> dict[str, Team]:
    known = {team.name: team for team in Team.objects.filter(name__in=[spec.name for spec in teams])}
    seen: dict[str, int] = {}
    for spec in teams:
        if spec.name in seen:
            errors.append(f"line {spec.line}: team {spec.name!r} is listed twice (first on line {seen[spec.name]})")
        seen[spec.name] = spec.line
        if spec.name not in known:
            errors.append(f"line {spec.line}: unknown team {spec.name!r} (teams are created in the admin)")
        for lane, line in spec.denied:
            if lane not in lane_names:
                errors.append(f"line {line}: team {spec.name!r}: denied lane {lane!r} is not a route in this policy")
    return known


def validate_windows(lanes: list[LaneSpec], errors: list[str]) -> None:
    for spec in lanes:
        usable = [w for w in spec.windows if w.get("cron") is not None and w.get("minutes") is not None]
        found = windows.check([(w["cron"], w["minutes"], w.get("timezone") or settings.TIME_ZONE) for w in usable])
        for index, message, other in found:
            where = f" (the window on line {usable[other]['line']})" if other is not None else ""
            errors.append(f"line {usable[index]['line']}: route {spec.values.get('name')!r}: {message}{where}")


def validate(lanes: list[LaneSpec], intents: dict[str, dict], errors: list[str]) -> dict[str, ModelVersion]:
    names: dict[str, LaneSpec] = {}
    for spec in lanes:
        name = spec.values["name"]
        if name in names:
            errors.append(f"line {spec.line}: route {name!r} is defined twice (first on line {names[name].line})")
        names[name] = spec
        if name and not _is_slug(name):
            errors.append(f"line {spec.line}: route name {name!r} may hold only letters, digits, - and _")
    wanted = [s.values.get(k) for s in lanes for k in ("active_version", "refine_version")]
    models = {m.name: m for m in ModelVersion.objects.filter(name__in=[w for w in wanted if w])}
    for spec in lanes:
        v = spec.values
        model = v.get("active_version")
        if model is not None and model not in models:
            errors.append(f"line {spec.line}: route {v['name']!r}: unknown model {model!r}")
        elif model is not None and not models[model].is_deployable:
            status = models[model].get_status_display().lower()
            errors.append(
                f"line {spec.line}: route {v['name']!r}: model {model!r} is {status}; "
                "only a validated version can serve"
            )
        upscaler = v.get("refine_version")
        if upscaler is not None and upscaler not in models:
            errors.append(f"line {spec.line}: route {v['name']!r}: unknown upscaler {upscaler!r}")
        fallback = v.get("fallback")
        if fallback is not None and fallback not in names:
            errors.append(f"line {spec.line}: route {v['name']!r}: fallback {fallback!r} is not a route in this policy")
        for low, high in (("min_steps", "max_steps"), ("min_guidance", "max_guidance"), ("min_size", "max_size")):
            if v.get(low) is not None and v.get(high) is not None and v[low] > v[high]:
                errors.append(f"line {spec.line}: route {v['name']!r}: {low} is above {high}")
        if v.get("defer_depth") and v.get("hard_cap") and v["hard_cap"] < v["defer_depth"]:
            errors.append(f"line {spec.line}: route {v['name']!r}: hard_cap is below defer_depth")
    # Fallback cycles: follow each chain; a name seen twice closes a loop.
    for spec in lanes:
        chain, current = [spec.values["name"]], spec.values.get("fallback")
        while current is not None and current in names:
            if current in chain:
                if current == chain[0]:
                    errors.append(f"line {spec.line}: fallback cycle {' → '.join([*chain, current])}")
                break
            chain.append(current)
            current = names[current].values.get("fallback")
    for intent, entry in intents.items():
        if entry.get("lane") and entry["lane"] not in names:
            errors.append(f"line {entry['line']}: intent {intent!r}: unknown lane {entry['lane']!r}")
        if entry.get("priority") and entry["priority"] not in Priority.values:
            errors.append(f"line {entry['line']}: intent {intent!r}: unknown priority {entry['priority']!r}")
        if not _is_slug(intent):
            errors.append(f"line {entry['line']}: intent name {intent!r} may hold only letters, digits, - and _")
    return models


# Control-plane state that the policy file does not describe: applying it leaves these alone.
NOT_IN_POLICY = {
    "id", "name", "fallback", "refine_version", "draining", "canary_version", "canary_percent",
    "canary_started_at", "canary_window_minutes", "canary_min_samples", "canary_max_error_rate_increase",
    "canary_max_p95_ratio", "canary_max_flag_rate_increase", "notice", "notice_at", "revision",
}  # fmt: skip


def digest(text: str | None = None) -> str:
    """A fingerprint of a policy text (of the current policy by default): what an editor's page is based on."""
    return hashlib.sha256((export() if text is None else text).encode()).hexdigest()


def apply(text: str, by=None, based_on: str | None = None, dry_run: bool = False) -> PolicyDiff:
    """Validate and apply a policy atomically; raises PolicyError listing every problem.

    `based_on` is the digest of the policy the editor started from: if lanes or intents
    changed since, PolicyConflict is raised and nothing is applied. A dry run does all the
    work (so it finds every error applying would) in a transaction it then rolls back.
    """
    with transaction.atomic():
        diff = _apply(text, by, based_on)
        if dry_run:
            transaction.set_rollback(True)
        diff.applied = not dry_run
    return diff


def _apply(text: str, by, based_on: str | None) -> PolicyDiff:
    existing = {lane.name: lane for lane in Lane.objects.select_for_update()}
    if based_on is not None and based_on != digest():
        last = AuditEvent.objects.first()
        who = f" (last: {last.actor_name}, {last.action} on {last.target or 'the fleet'})" if last else ""
        raise PolicyConflict([f"The policy changed since you loaded it{who}. Nothing was applied: reload."])
    lanes, intents, teams, errors = parse(text)
    models = validate(lanes, intents, errors)
    known_teams = validate_teams(teams, {str(spec.values.get("name")) for spec in lanes}, errors)
    validate_windows(lanes, errors)
    if errors:
        raise PolicyError(sorted(set(errors), key=lambda e: (int(e.split(":")[0].split()[1]), e)))
    saved: dict[str, Lane] = {}
    before: dict[str, dict | None] = {}
    routes_before = {
        r.intent: {"lane": r.lane.name, "priority": r.priority, "label": r.label}
        for r in Route.objects.select_related("lane")
    }
    waiting = Job.objects.filter(state__in=(Job.State.QUEUED, Job.State.DEFERRED))
    waiting_by_lane = {row["lane__name"]: row["n"] for row in waiting.values("lane__name").annotate(n=Count("pk"))}
    defaults = {f.name: f.get_default() for f in Lane._meta.concrete_fields if f.has_default()}
    for spec in lanes:
        values = dict(spec.values)
        name = values.pop("name")
        values["active_version"] = models[values["active_version"]]
        values["refine_version"] = models[values["refine_version"]] if values.get("refine_version") else None
        values.pop("fallback", None)
        values.setdefault("cascade", False)
        lane = existing.get(name) or Lane(name=name)
        before[name] = export_lane(lane) if lane.pk else None
        # Keys left out of the file take their defaults, so the file alone describes the lane:
        # the model family's (steps, guidance, sizes) where it has them, else Laneway's.
        version = values["active_version"]
        family_defaults = families.lane_defaults(version.family, version.distilled)
        lane_defaults = {**defaults, **(family_defaults.as_lane_fields() if family_defaults else {})}
        for field, default in lane_defaults.items():
            if field not in NOT_IN_POLICY and field not in values:
                setattr(lane, field, default)
        for field, value in values.items():
            setattr(lane, field, value)
        if "queue" not in values:
            lane.queue = ""
        if lane.enabled:
            lane.draining = False
        try:
            lane.full_clean(exclude=["fallback"], validate_unique=False)
        except ValidationError as exc:
            problems = describe_errors(exc.message_dict)
            raise PolicyError([f"line {spec.line}: route {name!r}: {problems}"]) from None
        save_lane(lane)
        _replace_windows(lane, spec.windows)
        saved[name] = lane
        # The file describes the lane whole: its plan is the file's, and a route without one has none.
        if spec.rollout is None:
            RolloutPlan.objects.filter(lane=lane).delete()
        else:
            plan = spec.rollout
            RolloutPlan.objects.update_or_create(
                lane=lane,
                defaults={
                    "steps": plan.steps, "thresholds": plan.thresholds, "require_shadow": plan.require_shadow,
                    "updated_by": acting_user(by),
                },
            )  # fmt: skip
    for spec in lanes:
        lane = saved[spec.values["name"]]
        fallback = spec.values.get("fallback")
        lane.fallback = saved[fallback] if fallback else None
        lane.save(update_fields=["fallback"])
    diff = PolicyDiff(lanes=len(saved), intents=len(intents))
    for name, lane in saved.items():
        after = export_lane(lane)
        if after != before[name]:
            AuditEvent.record(by, "policy.lane", lane=lane, before=before[name] or {}, after=after)
        old = before[name]
        if old is None:
            diff.added_lanes.append(name)
        elif old.get("enabled") and not lane.enabled:
            diff.disabled_lanes.append(name)
        elif after != old:
            diff.changed_lanes[name] = [key for key in after if key != "name" and after.get(key) != old.get(key)]
        record_release(lane, by, "policy")
    dropped = list(Lane.objects.exclude(name__in=saved).filter(enabled=True))
    for lane in dropped:
        AuditEvent.record(by, "policy.lane", lane=lane, before={"enabled": True}, after={"enabled": False})
    Lane.objects.filter(pk__in=[lane.pk for lane in dropped]).update(
        enabled=False, draining=False, revision=F("revision") + 1
    )
    diff.disabled_lanes = sorted([*diff.disabled_lanes, *(lane.name for lane in dropped)])
    diff.changed_teams = _apply_teams(teams, known_teams, saved, by)
    diff.removed_intents = sorted(set(routes_before) - set(intents))
    Route.objects.exclude(intent__in=intents).delete()
    for intent, entry in intents.items():
        Route.objects.update_or_create(
            intent=intent,
            defaults={
                "lane": saved[entry["lane"]],
                "priority": entry.get("priority") or Priority.STANDARD,
                "label": entry.get("label") or "",
            },
        )
    # A version a lane now serves is active; one no lane serves any more is merely validated.
    for version in ModelVersion.objects.filter(status__in=ModelVersion.DEPLOYABLE):
        version.sync_status()
    stranded = unreachable_intents(set(Lane.objects.filter(enabled=True).values_list("pk", flat=True)))
    if stranded:
        raise PolicyError([f"intent {intent!r} would reach no enabled lane" for intent in stranded])
    for intent in sorted(intents):
        now = {
            "lane": intents[intent]["lane"],
            "priority": intents[intent].get("priority") or Priority.STANDARD,
            "label": intents[intent].get("label") or "",
        }
        if intent not in routes_before:
            diff.added_intents.append(intent)
        elif now != routes_before[intent]:
            diff.changed_intents[intent] = [k for k in now if now[k] != routes_before[intent][k]]
    touched = [*diff.changed_lanes, *diff.disabled_lanes]
    diff.affected_jobs = {name: waiting_by_lane[name] for name in sorted(touched) if waiting_by_lane.get(name)}
    consumed = Worker.objects.consumed_queues()
    diff.unconsumed_lanes = sorted(lane.name for lane in saved.values() if lane.enabled and lane.unconsumed(consumed))
    diff.changed_lanes = dict(sorted(diff.changed_lanes.items()))
    diff.added_lanes.sort()

    return diff


def _replace_windows(lane: Lane, specs: list[dict]) -> None:
    wanted = [(w["mode"], w["cron"], w["minutes"], w.get("timezone") or "") for w in specs]
    have = [(w.mode, w.cron, w.minutes, w.timezone) for w in lane.windows.all()]
    if sorted(wanted) != sorted(have):
        lane.windows.all().delete()
        LaneWindow.objects.bulk_create(
            LaneWindow(lane=lane, mode=mode, cron=cron, minutes=minutes, timezone=tz)
            for mode, cron, minutes, tz in wanted
        )


def export_team(quota: TeamQuota | None) -> dict:
    if quota is None:
        return {}
    item: dict = {"weight": quota.weight}
    for key, (soft_field, hard_field, _) in TEAM_LIMITS.items():
        soft, hard = getattr(quota, soft_field), getattr(quota, hard_field)
        if soft is not None:
            item[key] = {"soft": soft, **({"hard": hard} if hard is not None else {})}
        elif hard is not None:
            item[key] = hard
    denied = sorted(lane.name for lane in quota.denied_lanes.all())
    if denied:
        item["denied_lanes"] = denied
    return item


def _apply_teams(teams: list[TeamSpec], known: dict[str, Team], lanes: dict[str, Lane], by) -> list[str]:
    """Make the quota rows what the file says (a team left out has none); the teams whose quota changed."""
    before = {quota.team.name: quota for quota in TeamQuota.objects.select_related("team")}
    changed = []
    fields = ["weight", *(field for soft, hard, _ in TEAM_LIMITS.values() for field in (soft, hard))]
    for spec in teams:
        old = export_team(before.get(spec.name))
        quota = before.get(spec.name) or TeamQuota(team=known[spec.name])
        for field in fields:
            setattr(quota, field, spec.values.get(field, 1.0 if field == "weight" else None))
        quota.save()
        quota.denied_lanes.set([lanes[name] for name, _ in spec.denied])
        new = export_team(quota)
        if new != old:
            changed.append(spec.name)
            AuditEvent.record(by, "policy.team", target=spec.name, before=old, after=new)
    for name, quota in before.items():
        if name not in {spec.name for spec in teams}:
            AuditEvent.record(by, "policy.team", target=name, before=export_team(quota), after={})
            quota.delete()
            changed.append(name)
    return sorted(changed)


def export_lane(lane: Lane) -> dict:
    item: dict = {"name": lane.name}
    for key, (field, _, _) in LANE_KEYS.items():
        if key == "model":
            item[key] = lane.active_version.name
        elif key == "fallback":
            item[key] = lane.fallback.name if lane.fallback else None
        else:
            item[key] = getattr(lane, field)
    if lane.cascade:
        item["cascade"] = {
            key: getattr(lane, field) for key, (field, _, _) in CASCADE_KEYS.items() if key != "upscaler"
        }
        if lane.refine_version:
            item["cascade"]["upscaler"] = lane.refine_version.name
    plan = RolloutPlan.objects.filter(lane=lane).first() if lane.pk else None
    if plan is not None:
        item["rollout"] = progressive.plan_document(plan.steps, plan.thresholds, plan.require_shadow)
    if lane.pk:
        found = [
            {"cron": w.cron, "minutes": w.minutes, "mode": w.mode, **({"timezone": w.timezone} if w.timezone else {})}
            for w in lane.windows.all()
        ]
        if found:
            item["windows"] = found
    return item


def export() -> str:
    routes = [
        export_lane(lane)
        for lane in Lane.objects.select_related("active_version", "fallback", "refine_version")
        .prefetch_related("windows")
        .order_by("name")
    ]
    intents = {
        route.intent: {"lane": route.lane.name, "priority": route.priority, "label": route.label}
        for route in Route.objects.select_related("lane").order_by("intent")
    }
    document: dict = {"routes": routes, "intents": intents}
    teams = {
        quota.team.name: export_team(quota)
        for quota in TeamQuota.objects.select_related("team").prefetch_related("denied_lanes").order_by("team__name")
    }
    if teams:
        document["teams"] = teams
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
