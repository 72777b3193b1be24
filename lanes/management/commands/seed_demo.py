from django.core.management.base import BaseCommand

from lanes.demo import seed_demo_lanes
from lanes.models import Lane, Route


class Command(BaseCommand):
    help = "Build the demo checkpoint if missing and create the default lanes and routes (keeps existing ones)."

    def handle(self, **options) -> None:
        version = seed_demo_lanes()
        self.stdout.write(
            f"Model version {version.name}; {Lane.objects.count()} lanes; "
            f"intents: {', '.join(Route.objects.values_list('intent', flat=True))}"
        )
