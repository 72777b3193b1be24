"""The ASGI application uvicorn serves: websockets through channels, plain HTTP through Django.

Plain HTTP goes through Django's WSGI handler, wrapped for ASGI by a2wsgi: the whole request
(middleware, view, template) runs in one call on one of HTTP_THREADS threads. Laneway's middleware
and views are all synchronous, and under Django's ASGI handler every middleware method of the chain
hops to its single sync thread and back; `bench/profile_submit.py` measures both in one run.
LANEWAY_HTTP_HANDLER=asgi serves HTTP through Django's ASGI handler instead.
"""

import os

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
# Django must be set up before the consumers (and their models) are imported.
django_asgi_app = get_asgi_application()

from a2wsgi import WSGIMiddleware  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

from console.routing import websocket_urlpatterns  # noqa: E402

if settings.HTTP_HANDLER == "asgi":
    http_app = django_asgi_app
else:
    http_app = WSGIMiddleware(get_wsgi_application(), workers=settings.HTTP_THREADS)

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
