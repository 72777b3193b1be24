from accounts.access import has_role, team_of
from accounts.models import Role
from lanes.models import Lane
from webhooks.models import Endpoint


def control_plane(request) -> dict:
    """The signed-in user's role for the navigation; for ops, lane notices (automatic rollbacks) and their
    team's webhook endpoints that Laneway disabled."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    is_ops = has_role(user, Role.OPS)
    notices = list(Lane.objects.exclude(notice="").values("name", "notice", "notice_at")) if is_ops else []
    team_id = team_of(user) if is_ops else None
    disabled = Endpoint.objects.filter(team_id=team_id, enabled=False).exclude(disabled_reason="") if team_id else None
    return {
        "is_ops": is_ops,
        "is_admin": has_role(user, Role.ADMIN),
        "lane_notices": notices,
        "disabled_webhooks": list(disabled.values("pk", "url", "disabled_reason")[:5]) if disabled is not None else [],
    }
