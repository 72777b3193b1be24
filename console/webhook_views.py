"""Webhook endpoints of a team (ops and admins): register, rotate the secret, enable, delete, and the delivery log."""

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Count, Q
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.access import ops_required, team_of
from accounts.models import Team
from lanes.models import AuditEvent
from webhooks import endpoints
from webhooks.models import Delivery, Endpoint, WebhookError

from .access import get_delivery_for_user, get_endpoint_for_user
from .forms import EndpointForm

DELIVERIES_PER_PAGE = 25


def audit_webhook(request, action: str, endpoint: Endpoint, **fields) -> None:
    """The audit row of a change to an endpoint (the console's pages and the API write the same)."""
    # The host alone: a webhook URL's path or query often holds a secret, and ops of every team read the audit log.
    target = f"{endpoint.team.name}: webhook {endpoint.pk} ({endpoint.host})"
    AuditEvent.record(request.user, action, target=target[:200], **fields)


@ops_required
@require_GET
def webhook_list(request):
    failed = Count("deliveries", filter=Q(deliveries__state=Delivery.State.FAILED))
    pending = Count("deliveries", filter=Q(deliveries__state=Delivery.State.PENDING))
    listed = Endpoint.objects.visible_to(request.user).select_related("team").annotate(failed=failed, pending=pending)
    return render(request, "console/webhooks.html", {"endpoints": listed})


def _endpoint_page(request, endpoint: Endpoint, secret: str = "", status: int = 200):
    deliveries = Delivery.objects.filter(endpoint=endpoint).prefetch_related("attempt_log")
    page = Paginator(deliveries, DELIVERIES_PER_PAGE).get_page(request.GET.get("page"))
    context = {"endpoint": endpoint, "page": page, "deliveries": page.object_list, "secret": secret}
    return render(request, "console/webhook.html", context, status=status)


@ops_required
@require_http_methods(["GET", "POST"])
def webhook_new(request):
    form = EndpointForm(request.POST or None, user=request.user)
    if request.method == "POST" and form.is_valid():
        team = form.cleaned_data.get("team") or Team.objects.filter(pk=team_of(request.user)).first()
        if team is None:
            form.add_error(None, "You belong to no team: an admin must add you to one first.")
        else:
            try:
                with transaction.atomic():
                    endpoint, secret = endpoints.create_endpoint(
                        team, form.cleaned_data["url"], form.cleaned_data["events"], request.user,
                        form.cleaned_data["description"],
                    )  # fmt: skip
                    audit_webhook(request, "webhook.create", endpoint, after={"events": endpoint.events})
            except WebhookError as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, "Endpoint registered. Copy its secret now: it is shown only once.")
                return _endpoint_page(request, endpoint, secret=secret, status=201)
    status = 400 if request.method == "POST" else 200
    return render(request, "console/webhook_new.html", {"form": form}, status=status)


@ops_required
@require_GET
def webhook_detail(request, endpoint_id: int):
    return _endpoint_page(request, get_endpoint_for_user(request, endpoint_id))


@ops_required
@require_POST
def webhook_rotate(request, endpoint_id: int):
    endpoint = get_endpoint_for_user(request, endpoint_id)
    with transaction.atomic():
        secret = endpoints.rotate_secret(endpoint, request.user)
        audit_webhook(request, "webhook.rotate-secret", endpoint)
    messages.success(request, "New secret in use from the next attempt on. Copy it now: it is shown only once.")
    return _endpoint_page(request, endpoint, secret=secret)


@ops_required
@require_POST
def webhook_enabled(request, endpoint_id: int):
    endpoint = get_endpoint_for_user(request, endpoint_id)
    enabled = request.POST.get("enabled") == "on"
    with transaction.atomic():
        endpoints.set_enabled(endpoint, enabled, request.user)
        audit_webhook(request, "webhook.enable" if enabled else "webhook.disable", endpoint)
    messages.success(request, f"Endpoint {'enabled' if enabled else 'disabled'}.")
    return redirect("webhook-detail", endpoint_id=endpoint.pk)


@ops_required
@require_POST
def webhook_delete(request, endpoint_id: int):
    endpoint = get_endpoint_for_user(request, endpoint_id)
    with transaction.atomic():
        audit_webhook(request, "webhook.delete", endpoint, before={"events": endpoint.events})
        endpoints.delete_endpoint(endpoint, request.user)
    messages.success(request, f"Endpoint {endpoint.url} deleted, with its delivery log.")
    return redirect("webhook-list")


@ops_required
@require_POST
def webhook_redeliver(request, delivery_id: int):
    delivery = get_delivery_for_user(request, delivery_id)
    try:
        with transaction.atomic():
            endpoints.redeliver(delivery, request.user)
            audit_webhook(request, "webhook.redeliver", delivery.endpoint, note=delivery.msg_id)
    except WebhookError as exc:
        messages.error(request, str(exc))
        return _endpoint_page(request, delivery.endpoint, status=409)
    messages.success(request, f"{delivery.event} {delivery.msg_id} is being sent again.")
    return redirect("webhook-detail", endpoint_id=delivery.endpoint_id)
