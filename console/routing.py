from django.urls import path

from lanes.consumers import JobsConsumer
from telemetry.consumers import TelemetryConsumer

websocket_urlpatterns = [
    path("ws/jobs/", JobsConsumer.as_asgi()),
    path("ws/telemetry/", TelemetryConsumer.as_asgi()),
]
