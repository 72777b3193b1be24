"""Review: flagged images of the caller's team, and the decisions on them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.http import HttpResponse
from ninja import Field, Query, Router, Schema

from lanes.actions import BriefRejected
from lanes.models import Verification
from lanes.review import ReviewError, approve, autofix, reject, rerender

from ..access import get_verification_for_user
from . import idempotency
from .core import BodyIn, IdPath, Input, ProblemError, errors, text
from .jobs import PAGE_MAX

router = Router(tags=["review"])


class FlaggedOut(Schema):
    id: int
    job: int
    job_url: str
    lane: str | None
    version: str | None
    status: str
    reason: str
    expected: list
    read: list[str]
    created_at: datetime


class FlaggedFilters(Input):
    lane: str | None = text(None, max_length=50)
    version: str | None = text(None, max_length=100)
    limit: int = Field(50, ge=1, le=PAGE_MAX)


class DecisionIn(BodyIn):
    intent: str | None = text(None, max_length=50, description="rerender only: the intent to render with.")


class DecisionOut(Schema):
    verification: int
    decision: str
    followup_verification: int | None = None
    new_job: int | None = None


def flagged_out(item: Verification) -> dict:
    return {
        "id": item.pk,
        "job": item.job_id,
        "job_url": f"/api/v1/jobs/{item.job_id}",
        "lane": item.lane.name if item.lane_id else None,
        "version": item.model_version.name if item.model_version_id else None,
        "status": item.status,
        "reason": item.reason,
        "expected": item.expected,
        "read": [line.get("text", "") for line in item.details.get("lines", [])],
        "created_at": item.created_at,
    }


@router.get("/review", response={200: list[FlaggedOut], **errors()})
def list_flagged(request, filters: Query[FlaggedFilters]):
    """Flagged images awaiting a decision: your team's (ops and admins: everyone's), oldest first."""
    items = (
        Verification.objects.visible_to(request.user)
        .awaiting_review()
        .select_related("lane", "model_version")
        .order_by("created_at", "id")
    )
    if filters.lane:
        items = items.filter(lane__name=filters.lane)
    if filters.version:
        items = items.filter(model_version__name=filters.version)
    return [flagged_out(item) for item in items[: filters.limit]]


@router.post(
    "/review/{verification_id}/{action}",
    response={200: DecisionOut, 202: DecisionOut, **errors(409)},
)
def decide(
    request, verification_id: IdPath, action: Literal["approve", "reject", "autofix", "rerender"],
    response: HttpResponse, body: DecisionIn | None = None,
):  # fmt: skip
    """Approve, reject, auto-fix (overlay the expected text, then verify again) or re-render a flagged image."""
    verification = get_verification_for_user(request, verification_id)
    try:
        if action == "approve":
            approve(verification, request.user)
        elif action == "reject":
            reject(verification, request.user)
        elif action == "autofix":
            followup = autofix(verification, request.user)
            return 202, {"verification": verification.pk, "decision": "fixed",
                         "followup_verification": followup.pk if followup else None}  # fmt: skip
        else:
            intent = (body.intent if body else None) or verification.job.intent

            def make() -> tuple[int, dict]:
                new = rerender(verification, request.user, intent)
                return 202, {"verification": verification.pk, "decision": "rerendered", "new_job": new.pk}

            return idempotency.once(request, make, response)
    except (ReviewError, BriefRejected) as exc:
        raise ProblemError(409, str(exc)) from None
    verification.refresh_from_db()
    return 200, {"verification": verification.pk, "decision": verification.decision}
