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

import re
from dataclasses import dataclass, field

import yaml
from django.conf import settings
from django.core.validators import validate_slug

from lanes import yamlfile
from lanes.models import Lane, ModelVersion
from lanes.router import check_parameters
from lanes.yamlfile import YamlError

from .models import Arm, Experiment

OVERRIDES = ("steps", "guidance", "width", "height")
ARM_KEYS = {"name", "lane", "version", *OVERRIDES}
TOP_KEYS = {"name", "samples", "seed", "prompts", "arms"}
SEED_MAX = 2**63 - 1  # the seed column is a signed 64-bit integer
SLUG = re.compile(r"[-a-zA-Z0-9_]+")


class ExperimentError(YamlError):
    pass


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
    root = yamlfile.compose(text, ExperimentError)
    if not isinstance(root, yaml.MappingNode):
        raise ExperimentError(["line 1: an experiment is a mapping with name, prompts and arms"])
    nodes = {key.value: (key, value) for key, value in root.value}
    for key, (key_node, _) in nodes.items():
        if key not in TOP_KEYS:
            errors.append(
                f"line {yamlfile.line(key_node)}: unknown key {key!r} (expected one of {', '.join(sorted(TOP_KEYS))})"
            )

    name = str(yamlfile.value(nodes["name"][1]) or "") if "name" in nodes else ""
    name_line = yamlfile.line(nodes["name"][1]) if "name" in nodes else 1
    name_limit = Experiment._meta.get_field("name").max_length or 100
    try:
        validate_slug(name)
    except Exception:
        errors.append(f"line {name_line}: name {name[:60]!r} must be letters, digits, - and _ (and not empty)")
    if len(name) > name_limit:
        errors.append(f"line {name_line}: name is {len(name)} characters; the limit is {name_limit}")
        name = ""
    if name and Experiment.objects.filter(name=name).exists():
        errors.append(f"line {name_line}: an experiment named {name!r} already exists")

    def integer(key: str, default: int, low: int) -> int:
        if key not in nodes:
            return default
        value = yamlfile.value(nodes[key][1])
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            errors.append(f"line {yamlfile.line(nodes[key][1])}: {key} must be a whole number ≥ {low}")
            return default
        return value

    samples = integer("samples", 1, 1)
    first_seed = integer("seed", 1, 0)
    if first_seed + samples - 1 > SEED_MAX:
        errors.append(f"line {yamlfile.line(nodes['seed'][1])}: seeds run from seed to seed + samples - 1, "
                      f"all at most {SEED_MAX}")  # fmt: skip
        first_seed = 1

    prompts = _parse_prompts(nodes.get("prompts", (None, None))[1], list(extra_prompts or []), errors)
    arms: list[ArmSpec] = []
    arm_nodes = nodes.get("arms", (None, None))[1]
    if arm_nodes is None or not isinstance(arm_nodes, yaml.SequenceNode):
        errors.append(
            f"line {yamlfile.line(arm_nodes) if arm_nodes is not None else 1}: arms must be a list of two or more"
        )
    else:
        lanes = {lane.name: lane for lane in Lane.objects.select_related("active_version", "canary_version")}
        versions = {v.name: v for v in ModelVersion.objects.all()}
        seen: set[str] = set()
        for item in arm_nodes.value:
            arm = _parse_arm(item, lanes, versions, seen, errors)
            if arm is not None:
                arms.append(arm)
        if len(arm_nodes.value) < 2:
            errors.append(f"line {yamlfile.line(nodes['arms'][0])}: an experiment compares two or more arms")

    # Counted before the seed list is built: ten million samples must not cost ten million integers.
    jobs = len(prompts) * samples * max(len(arms), 2)
    if jobs > settings.EXPERIMENT_MAX_JOBS:
        errors.append(
            f"{len(prompts)} prompts × {samples} seeds × {len(arms)} arms is {jobs} jobs; "
            f"the limit is {settings.EXPERIMENT_MAX_JOBS} (EXPERIMENT_MAX_JOBS)"
        )
    if errors:
        raise ExperimentError(errors)
    seeds = [first_seed + i for i in range(samples)]
    return Definition(name=name, prompts=prompts, seeds=seeds, arms=arms, text=text)


def _parse_prompts(node, prompts: list[dict], errors: list[str]) -> list[dict]:
    """The prompt list (after any pasted or uploaded ones), each {prompt, expected_text}."""
    if node is not None and not isinstance(node, yaml.SequenceNode):
        errors.append(f"line {yamlfile.line(node)}: prompts must be a list")
    elif node is not None:
        for item in node.value:
            value = yamlfile.value(item)
            if isinstance(value, str):
                value = {"prompt": value}
            if not isinstance(value, dict) or not set(value) <= {"prompt", "expected_text"}:
                errors.append(f"line {yamlfile.line(item)}: a prompt is text, or {{prompt, expected_text}}")
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
        if len(prompt["expected_text"]) > settings.EXPECTED_TEXT_MAX_LENGTH:
            errors.append(
                f"prompt {index + 1}: the expected text is longer than {settings.EXPECTED_TEXT_MAX_LENGTH} characters"
            )
        if "\x00" in prompt["prompt"] + prompt["expected_text"]:
            errors.append(f"prompt {index + 1} holds a NUL character")
    if not prompts:
        errors.append("the prompt set is empty: give at least one prompt")
    return prompts


def _parse_arm(item, lanes: dict, versions: dict, seen: set[str], errors: list[str]) -> ArmSpec | None:
    line = yamlfile.line(item)
    value = yamlfile.value(item)
    if not isinstance(value, dict):
        errors.append(f"line {line}: an arm is a mapping with name and lane")
        return None
    unknown = set(value) - ARM_KEYS
    if unknown:
        errors.append(f"line {line}: unknown arm key {', '.join(sorted(unknown))}")
    name = str(value.get("name") or "")
    arm_limit = Arm._meta.get_field("name").max_length or 50
    if not name:
        errors.append(f"line {line}: an arm needs a name")
    elif not SLUG.fullmatch(name) or len(name) > arm_limit:
        errors.append(f"line {line}: arm name {name[:60]!r} must be up to {arm_limit} letters, digits, - and _")
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
    elif not version.spec.text2img:
        errors.append(f"{where}: {version.name} cannot render from a prompt")
    overrides = {}
    for key in OVERRIDES:
        if value.get(key) is None:
            continue
        if not isinstance(value[key], int | float) or isinstance(value[key], bool):
            errors.append(f"{where}: {key} must be a number")
            continue
        if key != "guidance" and not isinstance(value[key], int):
            errors.append(f"{where}: {key} must be a whole number, not {value[key]}")
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
