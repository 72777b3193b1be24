"""What every endpoint of /api/v1/ shares: who is calling (a bearer token or the browser's
session), rate limits through the shared cache, and errors as RFC 9457 problem documents."""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated, Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from ninja import Field, NinjaAPI, Path, Schema
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.security import HttpBearer, SessionAuth
from ninja.throttling import BaseThrottle
from pydantic import StringConstraints, field_validator

from accounts.models import ApiToken

PROBLEM = "application/problem+json"
# Text the API accepts never holds NUL (no database stores it); the pattern puts that in the document.
NO_NUL = r"^[^\x00]*$"
SLUG = r"^[-a-zA-Z0-9_]+$"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


class Problem(Schema):
    """An RFC 9457 problem document: every 4xx of the API has this body."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = ""
    errors: dict[str, str] | list[dict[str, Any]] | None = None


class Input(Schema):
    """A request body or query: text fields refuse NUL characters (no database stores them)."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        if isinstance(value, list) and any(isinstance(v, str) and "\x00" in v for v in value):
            raise ValueError("must not contain NUL characters")
        return value


Name = Annotated[str, StringConstraints(pattern=NO_NUL, min_length=1, max_length=100)]


def text(default: Any = ..., *, max_length: int, **kwargs: Any) -> Any:
    """A text field: bounded, and without NUL characters."""
    return Field(default, max_length=max_length, **{"pattern": NO_NUL, **kwargs})


# A name in the URL (lane, version, experiment) and an object id in the URL.
SlugPath = Annotated[str, Path(pattern=SLUG, max_length=100)]
IdPath = Annotated[int, Path(ge=1, le=2**63 - 1)]


class BodyIn(Input):
    """A JSON body: unknown fields are refused, and no value changes type (`false` is not 0.0)."""

    model_config = {"extra": "forbid", "strict": True}


class ProblemError(Exception):
    """Raised by an endpoint for a 4xx with a title, a detail and optional per-field errors."""

    def __init__(self, status: int, detail: str, errors: dict[str, str] | None = None, headers=None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.errors, self.headers = status, detail, errors, headers or {}


# The 4xx answers every operation may give, documented on each with the problem body.
COMMON_ERRORS = {400: Problem, 401: Problem, 403: Problem, 404: Problem, 413: Problem, 422: Problem, 429: Problem}


def errors(*extra: int) -> dict[int, type[Problem]]:
    return {**COMMON_ERRORS, **dict.fromkeys(extra, Problem)}


class BearerToken(HttpBearer):
    """`Authorization: Bearer lw_…`: the token's user, as that user (role and team), never more."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        found = ApiToken.find(token.strip())
        if found is None or not found.user.is_active:
            raise AuthenticationError(401, "The token is unknown, revoked or expired.")
        if found.read_only and request.method not in SAFE_METHODS:
            raise PermissionDenied("This token is read-only.")
        found.touch()
        request.user = found.user
        request.api_token = found  # type: ignore[attr-defined]
        return found.user


class Session(SessionAuth):
    """The console's own session (the docs page, scripts in the browser); CSRF-checked on writes."""

    def __call__(self, request: HttpRequest) -> Any:
        if request.headers.get("Authorization"):
            return None  # a bearer credential was given: only it may decide
        return super().__call__(request)


class RateLimit(BaseThrottle):
    """Fixed windows per token and per user (all their tokens and their session together), counted
    with the shared cache's atomic increment, so every web process sees one count."""

    def __init__(self) -> None:
        self._local = threading.local()  # one instance serves every request thread

    @staticmethod
    def _count(key: str, window: int) -> int:
        cache.add(key, 0, timeout=window + 5)
        try:
            return cache.incr(key)
        except ValueError:  # expired between add and incr: this request opens the window
            cache.add(key, 1, timeout=window + 5)
            return 1

    def allow_request(self, request: HttpRequest) -> bool:
        window = settings.API_RATE_WINDOW_SECONDS
        now = time.time()
        start = int(now // window * window)
        limits = [(f"user:{request.user.pk}", settings.API_RATE_LIMIT_PER_USER)]
        token = getattr(request, "api_token", None)
        if token is not None:
            limits.append((f"token:{token.pk}", settings.API_RATE_LIMIT))
        # The tightest of the counts is the one the client is told about.
        limit, used = min(
            ((limit, self._count(f"api-rate:{who}:{start}", window)) for who, limit in limits),
            key=lambda pair: pair[0] - pair[1],
        )
        reset = max(1, math.ceil(start + window - now))
        request.rate_limit = (limit, max(0, limit - used), reset)  # type: ignore[attr-defined]
        self._local.wait = reset
        return used <= limit

    def wait(self) -> float | None:
        return getattr(self._local, "wait", None)


class LanewayAPI(NinjaAPI):
    def create_response(self, request: HttpRequest, data: Any, *, status=None, temporal_response=None) -> HttpResponse:
        response = super().create_response(request, data, status=status, temporal_response=temporal_response)
        rate = getattr(request, "rate_limit", None)
        if rate:
            limit, remaining, reset = rate
            response["RateLimit-Limit"], response["RateLimit-Remaining"] = str(limit), str(remaining)
            response["RateLimit-Reset"] = str(reset)
            response["RateLimit-Policy"] = f"{limit};w={settings.API_RATE_WINDOW_SECONDS}"
        return response

    def get_openapi_schema(self, *, path_prefix=None, path_params=None):
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        # Errors are problem documents (RFC 9457): say so, so clients and validators expect that type.
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content", {})
                    if str(status)[0] in "45" and "application/json" in content:
                        content[PROBLEM] = content.pop("application/json")
        return schema


def problem(api: NinjaAPI, request, status: int, title: str, detail: str = "", errors=None, headers=None):
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    response = api.create_response(request, body, status=status)
    response["Content-Type"] = PROBLEM
    for name, value in (headers or {}).items():
        response[name] = value
    return response


TITLES = {
    400: "Bad request", 401: "Not signed in", 403: "Forbidden", 404: "Not found", 409: "Conflict", 410: "Gone",
    412: "Precondition failed", 413: "Request body too large", 422: "Invalid request", 429: "Too many requests",
    503: "Queueing is down",
}  # fmt: skip


def not_found(request, path: str = "") -> HttpResponse:
    """Any other URL under /api/v1/: a problem document, not the site's HTML 404."""
    body = {"type": "about:blank", "title": TITLES[404], "status": 404, "detail": "No such API endpoint."}
    return JsonResponse(body, status=404, content_type=PROBLEM)


def install_error_handlers(api: NinjaAPI) -> None:
    def on_problem(request, exc: ProblemError):
        return problem(api, request, exc.status, TITLES.get(exc.status, "Error"), exc.detail, exc.errors, exc.headers)

    def on_http_error(request, exc: HttpError):
        headers = {"WWW-Authenticate": 'Bearer realm="laneway"'} if exc.status_code == 401 else None
        detail = (
            exc.message
            if exc.status_code != 401 or exc.message != "Unauthorized"
            else "Send a token: Authorization: Bearer lw_…"
        )
        return problem(api, request, exc.status_code, TITLES.get(exc.status_code, "Error"), detail, headers=headers)

    def on_validation(request, exc: ValidationError):
        fields = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors
        ]
        return problem(api, request, 422, TITLES[422], "The request does not match the schema.", fields)

    def on_denied(request, exc: PermissionDenied):
        return problem(api, request, 403, TITLES[403], str(exc) or "You may not do this.")

    def on_missing(request, exc: Http404):
        return problem(api, request, 404, TITLES[404], "No such object, or not one you may see.")

    def on_too_big(request, exc: RequestDataTooBig):
        return problem(
            api, request, 413, TITLES[413], f"The body is over {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        )

    api.add_exception_handler(ProblemError, on_problem)
    api.add_exception_handler(HttpError, on_http_error)
    api.add_exception_handler(ValidationError, on_validation)
    api.add_exception_handler(PermissionDenied, on_denied)
    api.add_exception_handler(Http404, on_missing)
    api.add_exception_handler(RequestDataTooBig, on_too_big)
