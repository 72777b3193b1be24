from accounts.access import has_role
from accounts.models import Role
from lanes.models import Lane


def control_plane(request) -> dict:
    """The signed-in user's role for the navigation, and lane notices (automatic rollbacks) for ops."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {}
    is_ops = has_role(user, Role.OPS)
    notices = list(Lane.objects.exclude(notice="").values("name", "notice", "notice_at")) if is_ops else []
    return {"is_ops": is_ops, "is_admin": has_role(user, Role.ADMIN), "lane_notices": notices}
