from django.apps import AppConfig


class LanesConfig(AppConfig):
    name = "lanes"

    def ready(self) -> None:
        # Imported once the app registry is ready (the hooks reach models): connects the
        # worker's heartbeat and registers its reload command.
        from . import worker  # noqa: F401
