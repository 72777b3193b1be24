"""Changing a lane: the one way control, rollout and policy make a change.

Each change runs in a transaction holding the lane's row lock (`locked_lane`), against the
revision of the lane the user saw: a change made from a stale page is refused with a
ConflictError that names the change that came first. `record_change` saves the change as
the lane's next revision and writes its AuditEvent in the same transaction, so a change
and its audit row commit together or not at all.
"""

from __future__ import annotations

from collections.abc import Mapping

from django.contrib.auth.models import User
from django.core.exceptions import NON_FIELD_ERRORS

from webhooks import outbox

from .models import AuditEvent, Lane, ModelVersion


def describe_errors(errors: Mapping[str, str | list[str]]) -> str:
    """'field: message; …' for people to read; errors about the whole object (Django's
    `__all__`) are plain sentences, never prefixed with that key."""
    parts = []
    for field, message in errors.items():
        text = message if isinstance(message, str) else " ".join(message)
        parts.append(text if field == NON_FIELD_ERRORS else f"{field}: {text}")
    return "; ".join(parts)


class ControlError(Exception):
    """A control action that cannot be applied; nothing was changed. `errors` maps form fields to messages."""

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or {}


class ConflictError(ControlError):
    """The lane changed since the user loaded it."""


def locked_lane(lane: Lane, expected_revision: int | None) -> Lane:
    """The lane, locked for this transaction, refusing a change made against an old revision."""
    fresh = (
        Lane.objects.select_for_update(of=("self",)).select_related("active_version", "canary_version").get(pk=lane.pk)
    )
    if expected_revision is not None and fresh.revision != expected_revision:
        last = AuditEvent.objects.filter(lane=fresh).first()
        who = f" by {last.actor_name} ({last.action}, {last.at:%H:%M:%S})" if last else ""
        raise ConflictError(
            f"Lane {fresh.name} was changed{who} after you loaded it (revision {fresh.revision}, "
            f"yours {expected_revision}). Nothing was applied: reload and try again."
        )
    return fresh


def save_lane(lane: Lane, fields: list[str] | None = None) -> None:
    """Save the change (only `fields`, or a whole new or replaced lane) as the lane's next revision."""
    lane.revision += 1
    lane.save(update_fields=None if fields is None else [*fields, "revision"])


def record_change(
    lane: Lane, fields: list[str], by, action: str, *, version: ModelVersion | None = None,
    before: dict | None = None, after: dict | None = None, note: str = "",
) -> AuditEvent:  # fmt: skip
    """Save a locked lane's change as its next revision and write the change's audit row with it."""
    save_lane(lane, fields)
    event = AuditEvent.record(by, action, lane=lane, version=version, before=before, after=after, note=note)
    outbox.emit_fleet("lane.changed", lane_change_data(event, lane))
    return event


def lane_change_data(event: AuditEvent, lane: Lane) -> dict:
    """A lane change as the lane.changed webhook describes it (sent to every team's endpoints that want it)."""
    return {
        "action": event.action,
        "lane": lane.name,
        "revision": lane.revision,
        "version": event.model_version.name if event.model_version else None,
        "by": event.actor_name,
        "before": event.before,
        "after": event.after,
        "note": event.note,
    }


def acting_user(by) -> User | None:
    """The user to record as the actor: None for an automatic action (or an anonymous caller)."""
    return by if by is not None and by.is_authenticated else None
