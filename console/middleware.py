"""Refuse a NUL character in any query or form parameter before a view sees it: no database stores
one (PostgreSQL raises), so it can only be a mistake or a probe, and it gets a 400, never a 500."""

from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponseBadRequest, JsonResponse

from .api.core import PROBLEM


def _has_nul(querydict) -> bool:
    return any("\x00" in key or any("\x00" in value for value in values) for key, values in querydict.lists())


class RefuseNulMiddleware:
    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        try:
            bad = "\x00" in request.path or _has_nul(request.GET) or (
                request.method == "POST" and request.content_type != "application/json" and _has_nul(request.POST)
            )  # fmt: skip
        except RequestDataTooBig:
            bad = False  # the view answers that (413 from the API, 400 from a page)
        if not bad:
            return self.get_response(request)
        detail = "A parameter holds a NUL character."
        if request.path.startswith("/api/"):
            body = {"type": "about:blank", "title": "Bad request", "status": 400, "detail": detail}
            return JsonResponse(body, status=400, content_type=PROBLEM)
        return HttpResponseBadRequest(detail + "\n", content_type="text/plain; charset=utf-8")
