"""Webhook endpoints of a team (ops and admins), as the console's Webhooks pages manage them."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from django.db import transaction
from django.db.models import Count, Q
from django.http import HttpResponse
from ninja import Field, Router, Schema

from accounts.access import has_role, require_role, team_of
from accounts.models import Role, Team
from webhooks import endpoints
from webhooks.models import Delivery, Endpoint, WebhookError
from webhooks.outbox import EVENT_NAMES

from ..access import get_delivery_for_user, get_endpoint_for_user
from ..webhook_views import audit_webhook
from . import idempotency
from .core import BodyIn, IdPath, ProblemError, errors, text

router = Router(tags=["webhooks"])

Event = Literal[tuple(sorted(EVENT_NAMES))]  # type: ignore[valid-type]


class EndpointOut(Schema):
    id: int
    team: str
    url: str
    description: str
    events: list[str]
    enabled: bool
    disabled_reason: str
    failing_since: datetime | None
    created_at: datetime
    pending: int
    failed: int


class EndpointCreated(EndpointOut):
    secret: str = Field(..., description="Shown once: verify each delivery's webhook-signature with it.")


class SecretOut(Schema):
    secret: str


class AttemptOut(Schema):
    number: int
    at: datetime
    succeeded: bool
    status_code: int | None
    error: str
    duration_ms: int


class DeliveryOut(Schema):
    id: int
    msg_id: str
    event: str
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut]


class EndpointDetail(EndpointOut):
    deliveries: list[DeliveryOut]


class EndpointIn(BodyIn):
    url: str = text(..., min_length=1, max_length=500)
    events: list[Event] = Field(..., min_length=1, max_length=len(EVENT_NAMES))
    description: str = text("", max_length=200)
    team: str | None = text(None, max_length=100, description="Admins: the team it serves (by name).")


class EnabledIn(BodyIn):
    enabled: bool


def _counted():
    return Endpoint.objects.annotate(
        pending=Count("deliveries", filter=Q(deliveries__state=Delivery.State.PENDING)),
        failed=Count("deliveries", filter=Q(deliveries__state=Delivery.State.FAILED)),
    ).select_related("team")


def endpoint_out(endpoint: Endpoint) -> dict:
    if not hasattr(endpoint, "pending"):
        endpoint = _counted().get(pk=endpoint.pk)
    return {
        "id": endpoint.pk, "team": endpoint.team.name, "url": endpoint.url, "description": endpoint.description,
        "events": endpoint.events, "enabled": endpoint.enabled, "disabled_reason": endpoint.disabled_reason,
        "failing_since": endpoint.failing_since, "created_at": endpoint.created_at,
        "pending": endpoint.pending, "failed": endpoint.failed,
    }  # fmt: skip


@router.get("/webhooks", response={200: list[EndpointOut], **errors()})
def list_endpoints(request):
    """Your team's endpoints (admins: every team's), with their pending and failed deliveries."""
    require_role(request.user, Role.OPS, "Webhooks are managed by ops and admins.")
    return [endpoint_out(e) for e in _counted().filter(pk__in=Endpoint.objects.visible_to(request.user))]


@router.post("/webhooks", response={201: EndpointCreated, **errors(409)})
def create(request, body: EndpointIn, response: HttpResponse):
    """Register an endpoint for events; the answer holds its secret, which is never shown again."""
    require_role(request.user, Role.OPS, "Webhooks are managed by ops and admins.")
    if body.team and not has_role(request.user, Role.ADMIN):
        raise ProblemError(403, "Only admins register endpoints for another team.")
    team = (
        Team.objects.filter(name=body.team).first()
        if body.team
        else Team.objects.filter(pk=team_of(request.user)).first()
    )
    if team is None:
        raise ProblemError(
            422, "No such team." if body.team else "You belong to no team: an admin must add you to one."
        )

    def make() -> tuple[int, dict]:
        try:
            with transaction.atomic():
                endpoint, secret = endpoints.create_endpoint(
                    team, body.url, body.events, request.user, body.description
                )
                audit_webhook(request, "webhook.create", endpoint, after={"events": endpoint.events})
        except WebhookError as exc:
            raise ProblemError(422, str(exc), {"url": str(exc)}) from None
        return 201, EndpointCreated.model_validate({**endpoint_out(endpoint), "secret": secret}).model_dump(mode="json")

    return idempotency.once(request, make, response)


@router.get("/webhooks/{endpoint_id}", response={200: EndpointDetail, **errors()})
def get_endpoint(request, endpoint_id: IdPath):
    """An endpoint and its latest 50 deliveries, each with its attempts."""
    endpoint = get_endpoint_for_user(request, endpoint_id)
    deliveries = Delivery.objects.filter(endpoint=endpoint).prefetch_related("attempt_log")[:50]
    return {**endpoint_out(endpoint), "deliveries": list(deliveries)}


@router.post("/webhooks/{endpoint_id}/rotate", response={200: SecretOut, **errors()})
def rotate(request, endpoint_id: IdPath):
    """A new secret, used from the next attempt on; shown only in this answer."""
    endpoint = get_endpoint_for_user(request, endpoint_id)
    with transaction.atomic():
        secret = endpoints.rotate_secret(endpoint, request.user)
        audit_webhook(request, "webhook.rotate-secret", endpoint)
    return {"secret": secret}


@router.post("/webhooks/{endpoint_id}/enabled", response={200: EndpointOut, **errors()})
def set_enabled(request, endpoint_id: IdPath, body: EnabledIn):
    endpoint = get_endpoint_for_user(request, endpoint_id)
    with transaction.atomic():
        endpoints.set_enabled(endpoint, body.enabled, request.user)
        audit_webhook(request, "webhook.enable" if body.enabled else "webhook.disable", endpoint)
    return endpoint_out(get_endpoint_for_user(request, endpoint_id))


@router.delete("/webhooks/{endpoint_id}", response={204: None, **errors()})
def delete(request, endpoint_id: IdPath):
    endpoint = get_endpoint_for_user(request, endpoint_id)
    with transaction.atomic():
        audit_webhook(request, "webhook.delete", endpoint, before={"events": endpoint.events})
        endpoints.delete_endpoint(endpoint, request.user)
    return 204, None


@router.post("/webhooks/deliveries/{delivery_id}/redeliver", response={202: DeliveryOut, **errors(409)})
def redeliver(request, delivery_id: IdPath):
    """Send a delivery again now (a new attempt with the same webhook-id)."""
    delivery = get_delivery_for_user(request, delivery_id)
    try:
        with transaction.atomic():
            endpoints.redeliver(delivery, request.user)
            audit_webhook(request, "webhook.redeliver", delivery.endpoint, note=delivery.msg_id)
    except WebhookError as exc:
        raise ProblemError(409, str(exc)) from None
    return 202, Delivery.objects.prefetch_related("attempt_log").get(pk=delivery.pk)
