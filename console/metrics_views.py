import hmac

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from accounts.access import has_role
from accounts.models import Role
from lanes.prometheus import LanewayCollector


def _authorized(request) -> bool:
    if has_role(request.user, Role.OPS):
        return True
    header = request.headers.get("Authorization", "")
    token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
    # Bytes: compare_digest refuses str with non-ASCII characters, which a header may hold.
    return bool(settings.METRICS_TOKEN) and hmac.compare_digest(token.encode(), settings.METRICS_TOKEN.encode())


@require_GET
def metrics(request):
    """Prometheus text format; for a scraper with METRICS_TOKEN as bearer token, or for ops and admins."""
    if not _authorized(request):
        response = HttpResponse("Metrics need a bearer token (METRICS_TOKEN) or an ops login.\n", status=401)
        response["WWW-Authenticate"] = 'Bearer realm="laneway"'
        return response
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LanewayCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
