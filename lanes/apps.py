from django.apps import AppConfig


class LanesConfig(AppConfig):
    name = "lanes"

    def ready(self) -> None:
        from . import signals  # noqa: F401  (worker heartbeat hooks)
