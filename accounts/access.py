"""Who may do what: roles, teams and the row scoping that views, websockets and the HTTP API share.

Roles nest: a creative submits, sees and reviews their team's jobs; ops also run lanes,
telemetry and cost; admins also manage model versions, rollouts, the routing policy, users
and teams. The per-object helpers of the console (console/access.py) are built on these.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Q, QuerySet

from .models import ROLE_RANK, Member, Role

# The caller's own QuerySet subclass comes back, so its methods stay chainable.
_QS = TypeVar("_QS", bound=QuerySet[Any])


def _membership(user: Any) -> tuple[str, int | None]:
    """(role, team id) of a signed-in user, read once per user object."""
    cached = getattr(user, "_laneway_member", None)
    if cached is None:
        row = Member.objects.filter(user_id=user.pk).values_list("role", "team_id").first()
        role, team = row or (Role.CREATIVE, None)
        cached = user._laneway_member = (Role.ADMIN if user.is_superuser else role, team)
    return cached


def role_of(user: Any) -> str:
    if user is None or not user.is_authenticated:
        return ""
    return _membership(user)[0]


def team_of(user: Any) -> int | None:
    if user is None or not user.is_authenticated:
        return None
    return _membership(user)[1]


def has_role(user: Any, role: str) -> bool:
    current = role_of(user)
    return bool(current) and ROLE_RANK[Role(current)] >= ROLE_RANK[Role(role)]


def visible_rows(queryset: _QS, user: Any, owner: str, team: str) -> _QS:
    """Rows a user may see: every one for ops and admins; a creative's own (by `owner`) and their team's."""
    if has_role(user, Role.OPS):
        return queryset
    team_id = team_of(user)
    mine = Q(**{owner: user})
    return queryset.filter(mine | Q(**{team: team_id}) if team_id else mine)


def require_role(user: Any, role: str, message: str = "") -> None:
    """PermissionDenied unless the user has at least `role`."""
    if not has_role(user, role):
        raise PermissionDenied(message or f"This page is for {'ops and admins' if role == Role.OPS else 'admins'}.")


def role_required(role: str) -> Callable:
    """Signed-in users with at least `role`; anyone else signed in gets 403, anonymous users the login page."""

    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            require_role(request.user, role)
            return view(request, *args, **kwargs)

        return login_required(wrapped)

    return decorator


ops_required = role_required(Role.OPS)
admin_required = role_required(Role.ADMIN)
