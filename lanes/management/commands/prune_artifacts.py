from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import filesizeformat

from lanes import retention


class Command(BaseCommand):
    help = (
        "Delete rendered images older than ARTIFACT_RETENTION_DAYS (or --days), keeping those of experiments, "
        "of jobs under review and versions' smoke images. The job rows stay; their pages say the image was pruned."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--days", type=int, help="Prune images older than this (default: ARTIFACT_RETENTION_DAYS).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *, days: int | None, dry_run: bool, **options) -> None:
        if days is not None and days < 1:
            raise CommandError(f"--days must be at least 1 (got {days}).")
        if days is None and settings.ARTIFACT_RETENTION_DAYS == 0:
            self.stdout.write("Retention is off (ARTIFACT_RETENTION_DAYS=0): nothing pruned. Pass --days N to prune.")
            return
        days = days or settings.ARTIFACT_RETENTION_DAYS
        pruned = retention.prune(days, dry_run=dry_run)
        verb = "Would prune" if dry_run else "Pruned"
        self.stdout.write(
            f"{verb} {pruned.artifacts} images of {pruned.jobs} jobs older than {days} days "
            f"({filesizeformat(pruned.bytes)})."
        )
