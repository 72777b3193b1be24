import json

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from lanes.scaling import lane_signals


class Command(BaseCommand):
    help = (
        "Print each lane's autoscaling signals as JSON: queue depth by class, arrival and service rates, "
        "and desired workers (the same figures as /metrics)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--lane", action="append", default=[], help="Only this lane (repeatable).")

    def handle(self, lane, **options) -> None:
        signals = [s.as_dict() for s in lane_signals() if not lane or s.lane in lane]
        missing = set(lane) - {s["lane"] for s in signals}
        if missing:
            raise CommandError(f"Unknown lanes: {', '.join(sorted(missing))}")
        formula = {
            "window_seconds": settings.SCALE_WINDOW_SECONDS,
            "headroom": settings.SCALE_HEADROOM,
            "max_workers": settings.SCALE_MAX_WORKERS,
        }
        self.stdout.write(json.dumps({**formula, "lanes": signals}, indent=2))
