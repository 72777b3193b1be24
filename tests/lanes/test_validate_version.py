"""The validation task hashes a checkpoint's files (registration does not), storing its progress as it reads."""

import os
import shutil
from pathlib import Path

import pytest
from django.conf import settings

from lanes import registry, rollout
from lanes.changes import ControlError
from lanes.demo import DEMO_CHECKPOINT
from lanes.models import HASH_CHUNK_BYTES, AuditEvent, Lane, ModelVersion, hash_checkpoint
from tests.conftest import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(db):
    return make_user("ada", "admin")


@pytest.fixture
def big_checkpoint(demo_checkpoint) -> Path:
    """The demo checkpoint plus a few MiB of other files: several files, many chunks each."""
    target = Path(settings.MODELS_ROOT) / "hashing-progress"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT, target)
    (target / "notes").mkdir()
    for name, size in (("a.bin", 3 * HASH_CHUNK_BYTES + 17), ("b.bin", 2 * HASH_CHUNK_BYTES)):
        (target / "notes" / name).write_bytes(os.urandom(size))
    return target


def folder_bytes(folder: Path) -> int:
    return sum(file.stat().st_size for file in folder.rglob("*") if file.is_file())


@pytest.fixture
def stored_progress(monkeypatch):
    """(status, bytes done, bytes total) as stored in the database after each progress write."""
    seen: list[tuple[str, int, int]] = []
    record = ModelVersion.record_hash_progress

    def observed(version, done, total):
        record(version, done, total)
        seen.append(
            ModelVersion.objects.values_list("status", "hash_bytes_done", "hash_bytes_total").get(pk=version.pk)
        )

    monkeypatch.setattr(ModelVersion, "record_hash_progress", observed)
    return seen


def test_validation_stores_hashing_progress_as_it_reads_a_multi_file_checkpoint(
    demo_lanes, admin, big_checkpoint, stored_progress, settings
):
    settings.PROGRESS_DB_EVERY_SECONDS = 0  # every chunk: the steps between start and end are visible
    version = registry.register_version(admin, name="big", location=big_checkpoint.name, validate=False)
    assert (version.content_hash, version.hash_bytes_done, version.hash_bytes_total) == ("", 0, 0)

    assert registry.run_validation(version, "test") is True, version.validation_error
    total = folder_bytes(big_checkpoint)
    assert total > 5 * HASH_CHUNK_BYTES
    assert stored_progress[0] == ("validating", 0, total) and stored_progress[-1] == ("validating", total, total)
    done = [d for _, d, _ in stored_progress]
    assert len(done) > 5 and done == sorted(done) and len(set(done)) == len(done)  # steps forward, never back
    assert all(status == "validating" and t == total for status, _, t in stored_progress)
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.VALIDATED
    assert version.content_hash == hash_checkpoint(big_checkpoint)
    assert (version.hash_bytes_done, version.hash_bytes_total) == (total, total) and not version.hashing


def test_hashing_progress_is_stored_at_most_every_interval_not_per_chunk(
    demo_lanes, admin, big_checkpoint, stored_progress, settings
):
    settings.PROGRESS_DB_EVERY_SECONDS = 3600
    version = registry.register_version(admin, name="big-slow", location=big_checkpoint.name, validate=False)
    assert registry.run_validation(version, "test") is True, version.validation_error
    total = folder_bytes(big_checkpoint)
    assert stored_progress == [("validating", 0, total), ("validating", total, total)]  # its start and its end


def test_a_version_not_hashed_yet_matches_nothing_and_cannot_serve(demo_lanes, admin):
    first = registry.register_version(admin, name="unhashed-1", location=DEMO_CHECKPOINT, validate=False)
    second = registry.register_version(admin, name="unhashed-2", location=DEMO_CHECKPOINT, validate=False)
    assert first.content_hash == second.content_hash == ""
    assert not first.same_files().exists()  # two empty hashes are not the same files
    lane = Lane.objects.get(name="fast-draft")
    with pytest.raises(ControlError, match="has not been validated"):
        rollout.activate(lane, first, admin)
    with pytest.raises(ControlError, match="has not been validated"):
        rollout.start_canary(lane, first, 10, admin)

    assert registry.run_validation(first, "test") is True
    # Hashed now: the demo version holds the same files; the other unhashed registration still matches nothing.
    assert [v.name for v in first.same_files()] == ["demo-tiny-sd-v1"]
    assert not second.same_files().exists()
    rollout.start_canary(Lane.objects.get(name="fast-draft"), first, 10, admin)
    assert Lane.objects.get(name="fast-draft").canary_version == first


def test_a_file_gone_while_hashing_fails_validation_not_the_worker(demo_lanes, admin, big_checkpoint, monkeypatch):
    version = registry.register_version(admin, name="vanishing", location=big_checkpoint.name, validate=False)
    record = ModelVersion.record_hash_progress

    def delete_a_file_once_hashing_starts(version, done, total):
        record(version, done, total)
        (big_checkpoint / "notes" / "b.bin").unlink(missing_ok=True)  # listed already, not yet read

    monkeypatch.setattr(ModelVersion, "record_hash_progress", delete_a_file_once_hashing_starts)
    assert registry.run_validation(version, "test") is False
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.INVALID
    assert "cannot be read: FileNotFoundError" in version.validation_error
    assert version.content_hash == "" and not AuditEvent.objects.filter(action="version.hashed").exists()


@pytest.mark.django_db(transaction=True)
def test_a_validation_whose_worker_died_is_sent_again_by_reconcile(demo_lanes, admin, big_checkpoint, settings):
    from django.utils import timezone

    from lanes import dispatch
    from lanes.models import Worker
    from tests.conftest import waiting_tasks

    version = registry.register_version(admin, name="lost-midway", location="hashing-progress", validate=False)
    now = timezone.now()
    Worker.objects.create(ident="vm:1", hostname="vm", pid=1, started_at=now, last_seen=now)
    # A worker claimed it (as run_validation does), then was killed mid-hash.
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.VALIDATING, validated_on="vm:1")
    assert dispatch.reconcile()["revalidated"] == 0  # its worker is still alive
    Worker.objects.filter(ident="vm:1").update(last_seen=now - timezone.timedelta(hours=1))

    assert dispatch.reconcile()["revalidated"] == 1
    version.refresh_from_db()
    assert version.status == ModelVersion.Status.STAGED
    assert ("lanes.rollout.validate_version", (version.pk,)) in waiting_tasks(settings.CELERY_TASK_DEFAULT_QUEUE)
    assert dispatch.reconcile()["revalidated"] == 0  # sent once

    assert registry.validate(version.pk, "vm:2") == "validated"
    assert ModelVersion.objects.get(pk=version.pk).content_hash
