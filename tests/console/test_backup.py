import hashlib
import json
import sqlite3
import tarfile
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from console import backups
from lanes.models import Artifact, Job
from tests.lanes.finished import finished_job

pytestmark = pytest.mark.django_db(transaction=True)


def media_files() -> dict[str, bytes]:
    root = Path(settings.MEDIA_ROOT)
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def jobs() -> list[tuple[int, str, str]]:
    return list(Job.objects.order_by("pk").values_list("pk", "prompt", "state"))


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}


def skip_without_postgres_tools():
    if connection.vendor == "postgresql":
        try:
            backups.postgres_tools(connection)
        except backups.BackupError as exc:
            pytest.skip(f"PostgreSQL client tools: {exc}")


@pytest.fixture
def rendered(creative, demo_lanes, media_root):
    return [finished_job(creative, seed=seed, prompt=f"Poster {seed}") for seed in (1, 2, 3)]


def test_an_archive_holds_the_database_the_media_and_a_manifest_but_not_the_models(rendered, settings, tmp_path):
    skip_without_postgres_tools()
    # Checkpoints stay out, even where MODELS_ROOT sits inside MEDIA_ROOT; so do half-written images.
    settings.MODELS_ROOT = Path(settings.MEDIA_ROOT) / "models"
    (settings.MODELS_ROOT / "sdxl").mkdir(parents=True)
    (settings.MODELS_ROOT / "sdxl" / "unet.safetensors").write_bytes(b"weights")
    (Path(settings.MEDIA_ROOT) / "artifacts" / "half.part").write_bytes(b"partial")
    images = {name: data for name, data in media_files().items() if name.endswith(".png")}
    archive = tmp_path / "laneway.tar.gz"
    call_command("backup", "--output", str(archive), stdout=StringIO())

    held = members(archive)
    manifest = json.loads(held["manifest.json"])
    database = backups.DATABASE_MEMBERS[connection.vendor]
    assert set(held) == {"manifest.json", database} | {f"media/{name}" for name in images}
    assert (
        manifest["format"] == "laneway-backup" and manifest["laneway_version"] == backups.laneway_version() != "unknown"
    )
    assert manifest["database"]["vendor"] == connection.vendor
    assert manifest["database"]["sha256"] == hashlib.sha256(held[database]).hexdigest()
    assert manifest["media"] == {"included": True, "files": 3, "bytes": sum(map(len, images.values()))}
    assert "lanes.0009_artifact_pruned_at" in manifest["migrations"]
    assert "MODELS_ROOT" in manifest["not_included"]
    for artifact in Artifact.objects.all():
        assert hashlib.sha256(held[f"media/{artifact.path}"]).hexdigest() == artifact.sha256

    only_database = tmp_path / "db-only.tar.gz"
    call_command("backup", "--output", str(only_database), "--no-media", stdout=StringIO())
    assert set(members(only_database)) == {"manifest.json", database}
    with pytest.raises(CommandError, match="exists already; not overwriting it"):
        call_command("backup", "--output", str(only_database))


def test_the_default_archive_is_named_for_its_time_under_backup_dir(rendered, settings, tmp_path):
    skip_without_postgres_tools()
    settings.BACKUP_DIR = tmp_path / "backups"
    path, _ = backups.backup()
    assert path.parent == settings.BACKUP_DIR and path.name.startswith("laneway-backup-")
    assert path.name.endswith(".tar.gz") and [p.name for p in settings.BACKUP_DIR.iterdir()] == [path.name]


def test_backup_then_restore_brings_back_every_row_and_png_byte(rendered, creative, settings, tmp_path):
    skip_without_postgres_tools()
    archive = tmp_path / "laneway.tar.gz"
    call_command("backup", "--output", str(archive), stdout=StringIO())
    before_jobs, before_media = jobs(), media_files()

    # Things go wrong: a job deleted, one edited, images lost, a new job that the archive does not know.
    Job.objects.filter(pk=rendered[0].pk).delete()
    Job.objects.filter(pk=rendered[1].pk).update(prompt="changed", state=Job.State.FAILED)
    for path in Path(settings.MEDIA_ROOT).rglob("*.png"):
        path.unlink()
    newer = finished_job(creative, seed=9, prompt="After the backup")
    assert jobs() != before_jobs
    # Checkpoints are not in the archive; a MODELS_ROOT inside MEDIA_ROOT is left as it is.
    settings.MODELS_ROOT = Path(settings.MEDIA_ROOT) / "models"
    (settings.MODELS_ROOT / "sdxl").mkdir(parents=True)
    (settings.MODELS_ROOT / "sdxl" / "unet.safetensors").write_bytes(b"weights")

    out = tmp_path / "out.txt"
    with out.open("w") as stream:
        call_command("restore", str(archive), "--yes", stdout=stream)

    assert jobs() == before_jobs and not Job.objects.filter(pk=newer.pk).exists()
    assert media_files() == {**before_media, "models/sdxl/unet.safetensors": b"weights"}
    for artifact in Artifact.objects.all():
        assert hashlib.sha256(artifact.absolute_path.read_bytes()).hexdigest() == artifact.sha256
    assert not list(Path(settings.MEDIA_ROOT).glob(".laneway-restore-*"))  # no working folder left behind
    assert "Restored" in out.read_text() and "3 files in MEDIA_ROOT" in out.read_text()
    # The database works on: a new job gets a fresh id.
    assert finished_job(creative, seed=10).pk > max(pk for pk, _, _ in before_jobs)


@pytest.mark.skipif(connection.vendor != "sqlite", reason="SQLite's online backup")
def test_a_sqlite_backup_does_not_wait_for_a_writer_and_takes_only_what_is_committed(rendered, tmp_path):
    writer = sqlite3.connect(connection.settings_dict["NAME"], timeout=1)
    try:
        writer.execute("BEGIN IMMEDIATE")  # the console's write transaction, open during the backup
        writer.execute("UPDATE lanes_job SET prompt = 'uncommitted'")
        path, manifest = backups.backup(tmp_path / "laneway.tar.gz")
    finally:
        writer.rollback()
        writer.close()
    dump = tmp_path / "dump.sqlite3"
    dump.write_bytes(members(path)["database/laneway.sqlite3"])
    with sqlite3.connect(dump) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one file, no -wal beside it
        prompts = sorted(row[0] for row in db.execute("SELECT prompt FROM lanes_job"))
    assert prompts == ["Poster 1", "Poster 2", "Poster 3"]
    assert manifest["database"]["made_with"].startswith("SQLite")


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the PostgreSQL path (pg_dump, pg_restore)")
def test_a_postgresql_restore_is_one_transaction_over_the_whole_schema(rendered, creative, tmp_path):
    skip_without_postgres_tools()
    path, manifest = backups.backup(tmp_path / "laneway.tar.gz")
    assert manifest["database"]["made_with"].startswith("pg_dump (PostgreSQL)")
    with tarfile.open(path, "r:gz") as tar:
        assert tar.extractfile("database/laneway.pgdump").read(5) == b"PGDMP"  # pg_dump's custom format
    before = jobs()
    with connection.cursor() as cursor:
        # A table of a migration newer than the archive: dropped with the restore, not left in migrate's way.
        cursor.execute("CREATE TABLE lanes_newer (id integer PRIMARY KEY, job_id bigint REFERENCES lanes_job (id))")
    Job.objects.filter(pk=rendered[0].pk).update(prompt="changed")

    backups.restore(path, replace=True)

    assert jobs() == before
    assert "lanes_newer" not in connection.introspection.table_names()
    assert finished_job(creative, seed=10).pk > max(pk for pk, _, _ in before)  # sequences restored
