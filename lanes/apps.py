from django.apps import AppConfig


class LanesConfig(AppConfig):
    name = "lanes"

    def ready(self) -> None:
        # Imported once the app registry is ready (the hooks reach models): connects the
        # worker's heartbeat and registers its reload command.
        from . import worker  # noqa: F401
        from .shadow import on_job_finished
        from .signals import job_finished

        # A finished job of a shadowed lane may be rendered again on the shadow version.
        job_finished.connect(on_job_finished, dispatch_uid="lanes.shadow.on_job_finished")
