"""Laneway's HTTP API, /api/v1/: the same action functions and access helpers as the console's views,
described by an OpenAPI 3.1 document at /api/v1/openapi.json and browsable at /api/v1/docs."""

from . import experiments, fleet, jobs, lanes, review, shadows, teams, versions, webhooks
from .core import BearerToken, LanewayAPI, RateLimit, Session, install_error_handlers

api = LanewayAPI(
    title="Laneway API",
    version="1",
    description=(
        "Submit briefs, follow jobs, review flagged images, run lanes, roll out model versions, read "
        "experiments and teams' usage against their quotas. Authenticate with a personal token "
        "(`Authorization: Bearer lw_…`, created on the console's Tokens page) or the console's session. "
        "Errors are RFC 9457 problem documents. Create requests accept `Idempotency-Key`."
    ),
    urls_namespace="api-v1",
    auth=[BearerToken(), Session()],
    throttle=[RateLimit()],
    docs_url="/docs",
    openapi_url="/openapi.json",
)
install_error_handlers(api)
for module in (jobs, review, lanes, shadows, versions, experiments, teams, fleet, webhooks):
    api.add_router("", module.router)
