from django.core.management.base import BaseCommand

from lanes.policy import export


class Command(BaseCommand):
    help = "Print the routing policy (lanes and intents) as YAML, in the form apply_policy takes."

    def handle(self, **options) -> None:
        self.stdout.write(export(), ending="")
