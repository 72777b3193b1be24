import io
import json
import tarfile
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import connection

from console import backups
from lanes.models import Job
from tests.console.test_backup import jobs, media_files, skip_without_postgres_tools
from tests.lanes.finished import finished_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def archive(creative, demo_lanes, media_root, tmp_path):
    """An archive of two finished jobs; then the installation moves on (a third job, with its image)."""
    skip_without_postgres_tools()
    for seed in (1, 2):
        finished_job(creative, seed=seed, prompt=f"Poster {seed}")
    path, _ = backups.backup(tmp_path / "laneway.tar.gz")
    finished_job(creative, seed=3, prompt="After the backup")
    return path


def state() -> tuple:
    leftovers = list(Path(settings.MEDIA_ROOT).glob(".laneway-restore-*"))
    return jobs(), media_files(), leftovers


def refused(archive: Path, message: str, *args: str) -> None:
    """The restore fails with a clear message, and nothing changed."""
    before = state()
    with pytest.raises(CommandError, match=message):
        call_command("restore", str(archive), *args, stdout=StringIO())
    assert state() == before
    assert len(before[0]) == 3 and before[2] == []


def rewrite(source: Path, target: Path, *, manifest=None, drop: str = "", replace: dict | None = None) -> Path:
    """A copy of an archive with its manifest edited, a member dropped, or members' bytes replaced."""
    with tarfile.open(source, "r:gz") as old, tarfile.open(target, "w:gz") as new:
        for member in old:
            data = old.extractfile(member).read()
            if member.name == drop:
                continue
            if member.name == "manifest.json" and manifest:
                edited = json.loads(data)
                manifest(edited)
                data = json.dumps(edited).encode()
            data = (replace or {}).get(member.name, data)
            member.size = len(data)
            new.addfile(member, io.BytesIO(data))
    return target


def test_a_truncated_archive_is_refused(archive, tmp_path):
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    refused(cut, r"cut.tar.gz is damaged or not a Laneway backup \((EOFError|ReadError)", "--yes")


def test_a_corrupted_archive_is_refused(archive, tmp_path):
    data = bytearray(archive.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(bytes(data))
    refused(bad, "bad.tar.gz is damaged or not a Laneway backup", "--yes")


def test_a_database_dump_that_does_not_match_its_checksum_is_refused(archive, tmp_path):
    member = backups.DATABASE_MEMBERS[connection.vendor]
    swapped = rewrite(archive, tmp_path / "swapped.tar.gz", replace={member: b"not the database"})
    refused(swapped, "the database dump does not match its checksum", "--yes")


def test_an_archive_missing_an_image_is_refused(archive, tmp_path):
    with tarfile.open(archive, "r:gz") as tar:
        image = next(name for name in tar.getnames() if name.startswith("media/"))
    short = rewrite(archive, tmp_path / "short.tar.gz", drop=image)
    refused(short, "it holds 1 media files, its manifest lists 2", "--yes")


def test_an_archive_of_another_database_vendor_is_refused(archive, tmp_path):
    other = "postgresql" if connection.vendor == "sqlite" else "sqlite"

    def vendor(manifest):
        manifest["database"]["vendor"] = other

    foreign = rewrite(archive, tmp_path / "foreign.tar.gz", manifest=vendor)
    refused(foreign, f"holds a {other} database; this Laneway uses {connection.vendor}", "--yes")


def test_an_archive_from_a_newer_laneway_is_refused(archive, tmp_path):
    def future(manifest):
        manifest["migrations"].append("lanes.9999_from_the_future")
        manifest["laneway_version"] = "9.0.0"

    newer = rewrite(archive, tmp_path / "newer.tar.gz", manifest=future)
    refused(newer, r"made by a newer Laneway \(9.0.0\).*lanes.9999_from_the_future", "--yes")


def test_other_files_are_not_laneway_backups(archive, tmp_path):
    refused(tmp_path / "nowhere.tar.gz", "No archive at", "--yes")
    plain = tmp_path / "plain.tar.gz"
    plain.write_text("just text")
    refused(plain, "plain.tar.gz is damaged or not a Laneway backup", "--yes")
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as tar:
        tar.add(Path(settings.BASE_DIR) / "README.md", "README.md")
    refused(other, "other.tar.gz is not a Laneway backup: it holds 'README.md'", "--yes")
    with tarfile.open(tmp_path / "escape.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("media/../../outside.png")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    refused(tmp_path / "escape.tar.gz", "is not a Laneway backup: it holds 'media/../../outside.png'", "--yes")
    assert not (Path(settings.MEDIA_ROOT).parent / "outside.png").exists()

    def unmarked(manifest):
        manifest["format"] = "something-else"

    refused(
        rewrite(archive, tmp_path / "unmarked.tar.gz", manifest=unmarked),
        "its manifest.json is not one of ours",
        "--yes",
    )

    def incomplete(manifest):
        del manifest["database"]["sha256"]

    refused(
        rewrite(archive, tmp_path / "incomplete.tar.gz", manifest=incomplete), "lacks fields a restore needs", "--yes"
    )
    no_manifest = rewrite(archive, tmp_path / "no-manifest.tar.gz", drop="manifest.json")
    refused(no_manifest, "it has no manifest.json", "--yes")


def test_a_database_in_use_is_replaced_only_with_yes(archive):
    refused(archive, "already holds data: pass --yes to replace it")
    call_command("restore", str(archive), "--yes", stdout=StringIO())
    assert [prompt for _, prompt, _ in jobs()] == ["Poster 1", "Poster 2"]


def test_an_empty_database_is_restored_without_yes(archive):
    call_command("flush", interactive=False)
    assert not Job.objects.exists()
    call_command("restore", str(archive), stdout=StringIO())
    assert [prompt for _, prompt, _ in jobs()] == ["Poster 1", "Poster 2"]
    assert len([name for name in media_files() if name.endswith(".png")]) == 2


def test_media_move_back_when_the_database_cannot_be_restored(archive, monkeypatch):
    before = state()

    def fails(*args):
        raise backups.BackupError("the database is locked")

    monkeypatch.setattr(backups, "restore_sqlite", fails)
    monkeypatch.setattr(backups, "restore_postgres", fails)
    with pytest.raises(CommandError, match="the database is locked"):
        call_command("restore", str(archive), "--yes", stdout=StringIO())
    assert state() == before
