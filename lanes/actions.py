"""A brief becomes a job: validated, routed, admitted, stored, and dispatched once committed."""

from __future__ import annotations

import secrets

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.access import team_of
from telemetry import push

from . import adapters as lora
from . import admission, quotas
from .changes import describe_errors
from .dispatch import dispatch
from .models import Job, Priority, Route
from .rollout import pick_version
from .router import Parameters, RoutingError, cascade_fields, check_parameters, clamp_to, route_intent


class BriefRejected(Exception):
    """A brief that cannot become a job; `errors` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(describe_errors(errors))
        self.errors = errors


def submit_brief(
    owner,
    *,
    prompt: str,
    intent: str,
    expected_text: str = "",
    seed: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
    priority: str | None = None,
    model_version=None,
    lane=None,
    adapters: list[str] | None = None,
    route: Route | None = None,
) -> Job:
    """Validate a brief, run admission, store the job and dispatch it once the row is committed.

    `route` is the intent's route when the caller has just read it (the brief form, from its choices),
    so it is not read again.

    A brief refused by admission (hard cap) is stored too, as a REJECTED job saying why;
    invalid input raises BriefRejected and stores nothing.
    """
    prompt = (prompt or "").strip()
    errors: dict[str, str] = {}
    if not prompt:
        errors["prompt"] = "Describe the image: the prompt is empty."
    elif len(prompt) > settings.PROMPT_MAX_LENGTH:
        errors["prompt"] = f"The prompt is {len(prompt)} characters; the limit is {settings.PROMPT_MAX_LENGTH}."
    expected_text = (expected_text or "").strip()
    if len(expected_text) > settings.EXPECTED_TEXT_MAX_LENGTH:
        errors["expected_text"] = f"At most {settings.EXPECTED_TEXT_MAX_LENGTH} characters."
    if seed is not None and not 0 <= seed < 2**63:
        errors["seed"] = "The seed must be between 0 and 2^63 - 1."
    if priority is not None and priority not in Priority.values:
        errors["priority"] = f"Unknown priority {priority!r}."
    # A version chosen by the submitter (an experiment arm) is not drawn by the canary split.
    by_policy = model_version is None
    if lane is None:
        if route is None or route.intent != intent:
            try:
                route = route_intent(intent).route
            except RoutingError as exc:
                errors[exc.field] = str(exc)
                raise BriefRejected(errors) from None
        lane, default_priority = route.lane, route.priority
    else:  # sent to a lane by name (an experiment arm), not by intent
        default_priority = lane.default_priority
    params: Parameters = {
        "steps": lane.default_steps if steps is None else steps,
        "guidance": lane.default_guidance if guidance is None else guidance,
        "width": lane.default_width if width is None else width,
        "height": lane.default_height if height is None else height,
    }
    errors.update(check_parameters(lane, **params))
    requested = [name.strip() for name in adapters or [] if name.strip()]
    if requested:
        _, missing = lora.for_job(lane, model_version or lane.active_version, requested)
        if missing:
            errors["adapters"] = f"Lane {lane.name} does not offer the LoRA adapter(s) {', '.join(missing)}."
    if errors:
        raise BriefRejected(errors)
    priority = priority or default_priority
    team_id = team_of(owner)
    if quotas.denied(team_id, lane):
        raise BriefRejected({"intent": f"Your team may not use lane {lane.name} (its quota denies it)."})

    with transaction.atomic():
        try:
            decision = admission.decide(lane, priority, team_id)
        except admission.NoLaneAvailable as exc:
            raise BriefRejected({"intent": str(exc)}) from None
        if decision.lane != lane and quotas.denied(team_id, decision.lane):
            raise BriefRejected(
                {"intent": f"Lane {lane.name} cannot take the brief now and your team may not use its fallback "
                 f"{decision.lane.name} (its quota denies it)."}
            )  # fmt: skip
        if decision.lane != lane:
            params = clamp_to(decision.lane, **params)
        version = model_version or pick_version(decision.lane)
        chosen, missing = lora.for_job(decision.lane, version, requested)
        reason = decision.reason
        if missing and decision.lane == lane and version != lane.active_version:
            # A brief that asks for adapters the canary version lacks stays on the active version.
            version = lane.active_version
            chosen, missing = lora.for_job(lane, version, requested)
        if missing:  # rerouted to a lane that does not offer them: rendered without, and said so
            reason = f"{reason} (without LoRA {', '.join(missing)}: not on lane {decision.lane.name})".strip()
        now = timezone.now()  # admission decided at submission: one instant for all three
        job = Job.objects.create(
            submitted_at=now,
            owner=owner,
            prompt=prompt,
            expected_text=expected_text,
            intent=intent,
            priority=priority,
            requested_lane=lane,
            lane=decision.lane,
            team_id=team_id,
            model_version=version,
            adapters=chosen,
            routed=by_policy,
            state=decision.state,
            deferred_at=now if decision.state == Job.State.DEFERRED else None,
            # Sent once this commits: stamped here rather than by an UPDATE after the send (dispatch).
            dispatched_at=now if decision.state == Job.State.QUEUED else None,
            deferral=decision.deferral,
            admission=decision.admission,
            admission_reason=reason[:300],
            seed=secrets.randbelow(2**31) if seed is None else seed,
            **cascade_fields(decision.lane),
            finished_at=now if decision.state == Job.State.REJECTED else None,
            **params,
        )
        job.retry_after = decision.retry_after
        if job.state == Job.State.QUEUED:
            transaction.on_commit(lambda: dispatch(job, stamped=True))
        transaction.on_commit(lambda: push.job_state(job))
    return job


def cancel_job(job: Job) -> bool:
    """Cancel a job that has not started; False if it already had."""
    cancelled = job.cancel()
    if cancelled:
        transaction.on_commit(lambda: push.job_state(job))
    return cancelled


def rerender_job(job: Job, by, intent: str | None = None) -> Job:
    """A new job for the same brief with a new seed, on the lane `intent` (default: the job's own) routes to.

    It is the caller's job (their team's, on their bill), linked to the original by `rerender_of`;
    with no caller (an automatic re-render) it stays the original owner's."""
    with transaction.atomic():
        owner = by if by is not None and by.is_authenticated else job.owner
        new = submit_brief(
            owner, prompt=job.prompt, expected_text=job.expected_text, intent=intent or job.intent,
            adapters=[entry["name"] for entry in job.adapters],
        )  # fmt: skip
        Job.objects.filter(pk=new.pk).update(rerender_of=job)
        new.rerender_of = job
    return new
