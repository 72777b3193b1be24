"""Personal API tokens: created (the secret shown once), listed and revoked; admins see everyone's."""

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from accounts.access import has_role
from accounts.models import ApiToken, Role
from lanes.models import AuditEvent

from .forms import TokenForm


def _tokens(user):
    tokens = ApiToken.objects.select_related("user")
    return tokens if has_role(user, Role.ADMIN) else tokens.filter(user=user)


@login_required
@require_http_methods(["GET", "POST"])
def token_list(request):
    form = TokenForm(request.POST or None)
    secret, status = None, 200
    if request.method == "POST":
        if form.is_valid():
            days = form.cleaned_data["expires_in_days"]
            with transaction.atomic():
                token, secret = ApiToken.issue(
                    request.user, form.cleaned_data["name"], read_only=form.cleaned_data["read_only"],
                    expires_at=timezone.now() + timedelta(days=days) if days else None,
                )  # fmt: skip
                AuditEvent.record(
                    request.user, "token.create", target=f"token {token.prefix}… of {request.user.get_username()}",
                    after={"name": token.name, "read_only": token.read_only, "expires_at": str(token.expires_at or "")},
                )  # fmt: skip
            form = TokenForm()
        else:
            status = 400
    context = {
        "form": form,
        "secret": secret,
        "tokens": _tokens(request.user),
        "all_users": has_role(request.user, Role.ADMIN),
    }
    return render(request, "console/tokens.html", context, status=status)


@login_required
@require_POST
def token_revoke(request, token_id: int):
    token = get_object_or_404(_tokens(request.user), pk=token_id)
    with transaction.atomic():
        if token.revoke():
            AuditEvent.record(
                request.user, "token.revoke", target=f"token {token.prefix}… of {token.user.get_username()}",
                before={"name": token.name},
            )  # fmt: skip
            messages.success(request, f"Token {token.name} ({token.prefix}…) revoked: it no longer works.")
        else:
            messages.error(request, f"Token {token.name} was already revoked.")
    return redirect("token-list")
