"""The routing policy: which lane a brief goes to, and whether its parameters fit that lane."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

from . import adapters as lora
from .models import Job, Lane, Route
from .rollout import pick_version


class RoutingError(Exception):
    """A brief that no lane can take; `field` names the form field to blame."""

    def __init__(self, message: str, field: str = "intent") -> None:
        super().__init__(message)
        self.field = field


class Parameters(TypedDict):
    """A brief's render parameters, as check_parameters and clamp_to take them."""

    steps: int
    guidance: float
    width: int
    height: int


@dataclass(frozen=True)
class Routed:
    route: Route
    lane: Lane


def route_intent(intent: str) -> Routed:
    try:
        route = Route.objects.select_related("lane__active_version", "lane__canary_version", "lane__fallback").get(
            intent=intent
        )
    except Route.DoesNotExist:
        raise RoutingError(f"Unknown intent {intent!r}.") from None
    # A disabled lane is not an error here: admission sends the brief down its fallback chain.
    return Routed(route=route, lane=route.lane)


def size_multiple(lane: Lane) -> int:
    """Width and height steps on the lane: 8, or the family's grid (16 for SD3 and Flux), times a
    cascade's scale (its draft is 1/scale of the size)."""
    versions = [lane.active_version, lane.canary_version if lane.canary_version_id else None]
    grid = max([8, *(v.spec.size_multiple for v in versions if v is not None)])
    return grid * (lane.refine_scale if lane.cascade else 1)


def clamp_to(lane: Lane, *, steps: int, guidance: float, width: int, height: int) -> Parameters:
    """Parameters moved inside another lane's bounds (for a brief rerouted to a fallback)."""

    def clamp(value, low, high):
        return min(max(value, low), high)

    multiple = size_multiple(lane)

    def size(value: int) -> int:
        value = clamp(value, lane.min_size, lane.max_size)
        return max(multiple, value - value % multiple)

    return {
        "steps": clamp(steps, lane.min_steps, lane.max_steps),
        "guidance": clamp(guidance, lane.min_guidance, lane.max_guidance),
        "width": size(width),
        "height": size(height),
    }


def cascade_fields(lane: Lane) -> dict:
    """A job's refine stage, pinned from its lane at submission (none unless the lane cascades)."""
    cascade = lane.cascade
    return {
        "refine_steps": lane.refine_steps if cascade else 0,
        "refine_strength": lane.refine_strength if cascade else 0.0,
        "refine_scale": lane.refine_scale if cascade else 1,
        "refine_version": lane.refine_version if cascade else None,
    }


def rerouted_fields(job, lane: Lane, reason: str) -> dict:
    """The fields that send a job to another lane: the lane, a version routed there, its cascade, the job's
    LoRA adapters where that lane serves them for that version, and its parameters inside the lane's bounds."""
    version = pick_version(lane)
    adapters, missing = lora.for_job(lane, version, [entry["name"] for entry in job.adapters])
    if missing:
        reason = f"{reason} (without LoRA {', '.join(missing)}: not on lane {lane.name})"
    return {
        "lane": lane,
        "model_version": version,
        "adapters": adapters,
        "admission": Job.Admission.REROUTED,
        "admission_reason": reason[:300],
        **cascade_fields(lane),
        **clamp_to(lane, steps=job.steps, guidance=job.guidance, width=job.width, height=job.height),
    }


def check_parameters(lane: Lane, *, steps: int, guidance: float, width: int, height: int) -> dict[str, str]:
    """Errors per field for parameters outside the lane's bounds (empty when all fit)."""
    errors: dict[str, str] = {}
    if not lane.min_steps <= steps <= lane.max_steps:
        errors["steps"] = f"Steps must be between {lane.min_steps} and {lane.max_steps} on lane {lane.name}."
    if not lane.min_guidance <= guidance <= lane.max_guidance:
        errors["guidance"] = (
            f"Guidance must be between {lane.min_guidance:g} and {lane.max_guidance:g} on lane {lane.name}."
        )
    multiple = size_multiple(lane)
    for field, value in (("width", width), ("height", height)):
        if value % multiple:
            errors[field] = f"{field.capitalize()} must be a multiple of {multiple} (got {value})."
        elif not lane.min_size <= value <= lane.max_size:
            errors[field] = (
                f"{field.capitalize()} must be between {lane.min_size} and {lane.max_size} on lane {lane.name}."
            )
    return errors
