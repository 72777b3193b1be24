from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.template.defaultfilters import filesizeformat

from console.backups import BackupError, backup


class Command(BaseCommand):
    help = (
        "Write one archive (.tar.gz) of the database and MEDIA_ROOT with a manifest, safe while the console "
        "runs: SQLite through its online backup API, PostgreSQL through pg_dump. MODELS_ROOT is not included."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--output", type=Path, help="The archive to write (default: BACKUP_DIR/laneway-backup-<time>.tar.gz)."
        )
        parser.add_argument("--no-media", action="store_true", help="Only the database, not MEDIA_ROOT's images.")

    def handle(self, *, output: Path | None, no_media: bool, **options) -> None:
        try:
            path, manifest = backup(output, media=not no_media)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        except DatabaseError as exc:
            raise CommandError(f"The database failed: {exc}") from None
        database, media = manifest["database"], manifest["media"]
        self.stdout.write(self.style.SUCCESS(f"Wrote {path} ({filesizeformat(path.stat().st_size)})"))
        self.stdout.write(
            f"  database: {database['vendor']}, {filesizeformat(database['size_bytes'])}, sha256 {database['sha256']}"
        )
        if media["included"]:
            self.stdout.write(f"  media: {media['files']} files, {filesizeformat(media['bytes'])}")
        else:
            self.stdout.write("  media: not included (--no-media)")
        self.stdout.write(f"  not included: {manifest['not_included']}")
