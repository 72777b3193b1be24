from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from console.celery import app
from lanes import control
from lanes.actions import submit_brief
from lanes.changes import ConflictError, ControlError, describe_errors
from lanes.engines import engine_cache
from lanes.models import AuditEvent, Job, Lane, Worker
from tests.conftest import make_user, running_worker, wait_for_job, wait_until, waiting_tasks

pytestmark = pytest.mark.django_db


def lane(name: str) -> Lane:
    return Lane.objects.get(name=name)


def sent(job: Job) -> tuple[str, tuple]:
    """The broker message that dispatching a job sends, as waiting_tasks lists it."""
    return ("lanes.tasks.run_job", (job.pk,))


@pytest.fixture
def ops(db):
    return make_user("olive", "ops")


@pytest.mark.django_db(transaction=True)
def test_a_draining_lane_finishes_its_queue_on_a_real_worker_and_admits_nothing(demo_lanes, creative, ops, settings):
    settings.ADMISSION_CONTROL = False
    waiting = [submit_brief(creative, prompt=f"queued {i}", intent="draft") for i in range(3)]
    control.set_mode(lane("fast-draft"), "draining", ops)
    late = submit_brief(creative, prompt="after the drain", intent="draft")
    assert late.lane.name == "fallback" and late.admission == Job.Admission.REROUTED
    assert "fast-draft disabled → fallback fallback" in late.admission_reason
    with running_worker():
        done = [wait_for_job(job.pk) for job in [*waiting, late]]
    assert [(job.state, job.lane.name) for job in done] == [("succeeded", "fast-draft")] * 3 + [
        ("succeeded", "fallback")
    ]
    assert lane("fast-draft").mode == "draining"
    event = AuditEvent.objects.get(action="lane.drain")
    assert (event.actor, event.before, event.after["mode"]) == (ops, {"mode": "enabled"}, "draining")


def test_disabling_moves_waiting_jobs_down_the_fallback_chain(demo_lanes, creative, ops, settings):
    settings.ADMISSION_CONTROL = False
    queued = submit_brief(creative, prompt="queued", intent="draft", steps=12)
    _, moved = control.set_mode(lane("fast-draft"), "disabled", ops)
    queued.refresh_from_db()
    assert moved == 1 and queued.lane.name == "fallback" and queued.state == Job.State.QUEUED
    assert queued.steps == 8  # clamped to the fallback lane's bounds
    assert "fast-draft disabled → moved to fallback" in queued.admission_reason


def test_closing_the_last_lane_an_intent_can_reach_is_refused(demo_lanes, ops):
    revision = lane("fallback").revision
    with pytest.raises(ControlError, match="intent draft, fallback, preview would reach|would leave intent"):
        control.set_mode(lane("fallback"), "disabled", ops)
    # fast-draft falls back to `fallback`, so it may close; then `fallback` is the last lane for draft too.
    control.set_mode(lane("fast-draft"), "draining", ops)
    with pytest.raises(ControlError, match="draft"):
        control.set_mode(lane("fallback"), "draining", ops)
    assert lane("fallback").mode == "enabled" and lane("fallback").revision == revision
    assert list(AuditEvent.objects.values_list("action", flat=True)) == ["lane.drain"]


def test_limits_are_validated_as_a_whole_and_audited(demo_lanes, ops):
    target = lane("fast-draft")
    with pytest.raises(ControlError, match="hard cap"):
        control.update_limits(target, {"defer_depth": 50, "hard_cap": 10}, ops, target.revision)
    with pytest.raises(ControlError, match="max_concurrency"):
        control.update_limits(target, {"max_concurrency": 0}, ops, target.revision)
    with pytest.raises(ControlError, match="Not a lane limit"):
        control.update_limits(target, {"active_version": 1}, ops, target.revision)
    control.update_limits(target, {"max_concurrency": 3, "defer_depth": 9}, ops, target.revision)
    with pytest.raises(ConflictError, match="changed by olive"):
        control.update_limits(target, {"max_concurrency": 4}, ops, target.revision)  # a stale revision
    assert (lane("fast-draft").max_concurrency, lane("fast-draft").defer_depth) == (3, 9)
    event = AuditEvent.objects.get(action="lane.limits")
    assert event.before == {"max_concurrency": 2, "defer_depth": 8} and event.after == {
        "max_concurrency": 3, "defer_depth": 9,
    }  # fmt: skip


@pytest.mark.django_db(transaction=True)
def test_a_worker_starts_and_stops_consuming_a_lane_live(demo_lanes, creative, ops, settings):
    settings.ADMISSION_CONTROL = False
    from django.conf import settings as conf

    with running_worker(queues=[conf.CELERY_TASK_DEFAULT_QUEUE]):
        worker = Worker.objects.get(stopped_at__isnull=True)
        assert worker.node and "lane.fast-draft" not in worker.queue_list
        job = submit_brief(creative, prompt="waits for a consumer", intent="draft")
        wait_until(lambda: sent(job) in waiting_tasks(job.lane.queue), what="the job's message waiting in its queue")
        assert Job.objects.get(pk=job.pk).state == Job.State.QUEUED  # nobody consumes its queue
        replies = control.set_consuming(worker, lane("fast-draft"), True, ops)
        assert "add consumer" in replies[0] or "already consuming" in replies[0]
        assert wait_for_job(job.pk).state == Job.State.SUCCEEDED
        worker.refresh_from_db()
        assert "lane.fast-draft" in worker.queue_list
        control.set_consuming(worker, lane("fast-draft"), False, ops)
        stranded = submit_brief(creative, prompt="nobody takes this", intent="draft")
        wait_until(lambda: sent(stranded) in waiting_tasks(stranded.lane.queue), what="the stranded job's message")
        assert Job.objects.get(pk=stranded.pk).state == Job.State.QUEUED
        from lanes.heartbeat import heartbeat

        heartbeat.beat()  # the next heartbeat reports the live queue list
        assert "lane.fast-draft" not in Worker.objects.get(pk=worker.pk).queue_list
    actions = list(AuditEvent.objects.order_by("at").values_list("action", flat=True))
    assert actions == ["worker.consume", "worker.cancel-consume"]


@pytest.mark.django_db(transaction=True)
def test_reload_drops_cached_pipelines_without_dropping_a_job(demo_lanes, creative, ops, settings):
    settings.ADMISSION_CONTROL = False
    engine_cache.clear()
    with running_worker():
        first = submit_brief(creative, prompt="loads the pipeline", intent="draft")
        assert wait_for_job(first.pk).state == Job.State.SUCCEEDED
        assert engine_cache.loaded()
        replies = control.reload_workers(ops)
        assert replies and "dropped 1 idle pipelines" in replies[0]
        assert engine_cache.loaded() == []
        second = submit_brief(creative, prompt="loads it again", intent="draft")
        assert wait_for_job(second.pk).state == Job.State.SUCCEEDED
    assert AuditEvent.objects.get(action="workers.reload").actor == ops


def test_a_pipeline_in_use_during_a_reload_goes_when_its_job_ends(demo_lanes):
    version = lane("fast-draft").active_version
    engine_cache.clear()
    with engine_cache.use(version, width=64, height=64):
        assert engine_cache.reload() == (0, 1)
        assert engine_cache.retiring() == 1 and engine_cache.loaded() == []
    assert engine_cache.retiring() == 0


def test_audit_events_are_append_only(demo_lanes, ops):
    control.set_mode(lane("fast-draft"), "draining", ops)
    event = AuditEvent.objects.get()
    event.note = "rewritten"
    with pytest.raises(PermissionError):
        event.save()
    with pytest.raises(PermissionError):
        event.delete()
    with pytest.raises(PermissionError):
        AuditEvent.objects.update(note="x")
    with pytest.raises(PermissionError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get().note == ""


def test_a_control_command_to_a_worker_that_stopped_heartbeating_is_refused(demo_lanes, ops, settings):
    stale = timezone.now() - timedelta(
        seconds=settings.WORKER_HEARTBEAT_SECONDS * (settings.WORKER_LOST_AFTER_BEATS + 1)
    )
    dead = Worker.objects.create(ident="vm:1", node="cpu-1@vm", hostname="vm", pid=1, last_seen=stale)
    with pytest.raises(ControlError, match="not heartbeating"):
        control.set_consuming(dead, lane("fast-draft"), False, ops)
    assert not AuditEvent.objects.filter(action__startswith="worker.").exists()


def test_beats_bookkeeping_goes_to_the_housekeeping_queue_any_worker_consumes(settings):
    for task in ("lanes.tasks.reconcile_jobs", "lanes.tasks.release_deferred_jobs", "experiments.tasks.pump_experiments",
                 "lanes.tasks.check_canaries", "telemetry.tasks.prune_samples"):  # fmt: skip
        assert app.amqp.router.route({}, task)["queue"].name == settings.HOUSEKEEPING_QUEUE, task
    procfile = (Path(settings.BASE_DIR) / "Procfile").read_text()
    consumers = [line for line in procfile.splitlines() if "housekeeping" in line and not line.startswith("#")]
    assert {line.split(":")[0] for line in consumers} == {"verifier", "hosted"}  # and every gpu_worker


def test_errors_about_the_whole_object_read_as_plain_sentences():
    errors = {"__all__": ["The hard cap must be at least the defer depth."], "steps": "Too many."}
    assert describe_errors(errors) == "The hard cap must be at least the defer depth.; steps: Too many."
