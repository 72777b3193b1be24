from django.apps import AppConfig

from lanes.signals import job_finished, retention_holds, shadow_gate, verification_finished


class ExperimentsConfig(AppConfig):
    name = "experiments"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, once the app registry is ready: the runner uses models.
        from .retention import held_jobs
        from .runner import on_job_finished, on_verification_finished
        from .shadow import on_shadow_gate

        # A finished job of an experiment makes room for its next cell; lanes never imports experiments.
        job_finished.connect(on_job_finished, dispatch_uid="experiments.on_job_finished")
        # It is finished once its images' text checks are in too.
        verification_finished.connect(on_verification_finished, dispatch_uid="experiments.on_verification_finished")
        # Its images outlive the artifact retention.
        retention_holds.connect(held_jobs, dispatch_uid="experiments.held_jobs")
        # lanes.shadow.gate asks whether a shadow passes; the paired statistics live here.
        shadow_gate.connect(on_shadow_gate, dispatch_uid="experiments.on_shadow_gate")
