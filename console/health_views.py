"""/healthz: whether this process can reach the database and the broker (for load balancers and probes)."""

import time

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from lanes.dispatch import BROKER_DOWN


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return str(exc).strip() or type(exc).__name__
    return None


def _check_broker(timeout: float) -> str | None:
    try:
        # connect_timeout bounds the TCP connect (Redis and AMQP alike); one try, no back-off.
        with current_app.connection_for_write(connect_timeout=timeout) as broker:
            broker.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except BROKER_DOWN as exc:
        return str(exc).strip() or type(exc).__name__
    return None


@never_cache
@require_GET
def healthz(request):
    """200 {"status": "ok", ...} when the database and the broker both answer; 503 naming what failed.

    No login: it says nothing but up or down (and the error text of what is down)."""
    checks = {}
    failed = []
    for name, check in (
        ("database", _check_database),
        ("broker", lambda: _check_broker(settings.HEALTHZ_TIMEOUT_SECONDS)),
    ):
        started = time.monotonic()
        error = check()
        checks[name] = {"ok": error is None, "ms": round(1000 * (time.monotonic() - started), 1)}
        if error is not None:
            checks[name]["error"] = error
            failed.append(name)
    if failed:
        return JsonResponse({"status": "failing", "failed": failed, "checks": checks}, status=503)
    return JsonResponse({"status": "ok", "checks": checks})
