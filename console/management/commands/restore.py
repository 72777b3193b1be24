from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from console.backups import BackupError, restore


class Command(BaseCommand):
    help = (
        "Restore an archive written by `backup`: checks it whole first (manifest, checksum, database vendor, "
        "migrations), then replaces the database and MEDIA_ROOT. Stop the console and its workers first."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("archive", type=Path, help="A .tar.gz written by `manage.py backup`.")
        parser.add_argument(
            "--yes", action="store_true", help="Replace a database that already holds data (and MEDIA_ROOT)."
        )

    def handle(self, *, archive: Path, yes: bool, **options) -> None:
        try:
            restored = restore(archive, replace=yes)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(f"The database failed: {exc}") from None
        manifest = restored.manifest
        self.stdout.write(
            self.style.SUCCESS(
                f"Restored {archive}: the {manifest['database']['vendor']} database of {manifest['created_at']} "
                f"(Laneway {manifest['laneway_version']})"
            )
        )
        if manifest["media"]["included"]:
            self.stdout.write(f"  media: {restored.media_files} files in MEDIA_ROOT")
        else:
            self.stdout.write("  media: not in the archive; MEDIA_ROOT is as it was")
        if restored.unapplied_migrations:
            self.stdout.write(
                self.style.WARNING(
                    f"  The archive predates {len(restored.unapplied_migrations)} migrations of this Laneway: "
                    "run `manage.py migrate`."
                )
            )
        self.stdout.write("  MODELS_ROOT was not touched: restore checkpoints separately if they were lost.")
