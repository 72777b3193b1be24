from channels.generic.websocket import WebsocketConsumer
from django.urls import path, re_path

from lanes.consumers import JobsConsumer
from telemetry.consumers import TelemetryConsumer


class UnknownPath(WebsocketConsumer):
    """Any other websocket path: the handshake is refused (a 403), not a server error."""

    def connect(self) -> None:
        self.close()


websocket_urlpatterns = [
    path("ws/jobs/", JobsConsumer.as_asgi()),
    path("ws/telemetry/", TelemetryConsumer.as_asgi()),
    re_path(r"", UnknownPath.as_asgi()),
]
