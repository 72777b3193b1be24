from django.core.management.base import BaseCommand

from lanes.demo import seed_demo_lanes, seed_demo_v2
from lanes.models import Lane, ModelVersion, Route
from lanes.registry import record_smoke, run_validation


class Command(BaseCommand):
    help = (
        "Build the demo checkpoints if missing and create the default lanes and routes (keeps existing ones); "
        "smoke-render the demo versions, and validate a second demo version to canary."
    )

    def handle(self, **options) -> None:
        version = seed_demo_lanes()
        # A hosted engine is smoke-tested by validation on a hosted worker, once its API is up.
        unsmoked = ModelVersion.objects.filter(smoke_image="", status=ModelVersion.Status.ACTIVE)
        for serving in unsmoked.exclude(family=ModelVersion.Family.HTTP):
            error = record_smoke(serving)
            if error:
                self.stderr.write(f"Smoke render of {serving.name} failed: {error}")
        second = seed_demo_v2()
        if second.status in (ModelVersion.Status.STAGED, ModelVersion.Status.INVALID):
            run_validation(second, "seed_demo")
            second.refresh_from_db()
        self.stdout.write(
            f"Model version {version.name} (and {second.name}, {second.status}); {Lane.objects.count()} lanes; "
            f"intents: {', '.join(Route.objects.values_list('intent', flat=True))}"
        )
