from django.urls import path

from .consumers import JobsConsumer, TelemetryConsumer

websocket_urlpatterns = [
    path("ws/jobs/", JobsConsumer.as_asgi()),
    path("ws/telemetry/", TelemetryConsumer.as_asgi()),
]
