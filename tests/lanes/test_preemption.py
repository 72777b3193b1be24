"""Step-boundary preemption on a real in-process Celery worker with the tiny checkpoints of every family.

To make "a critical job arrives while a background job runs" deterministic, the background job's
progress callback (lanes.lifecycle._progress_recorder, wrapped by tests.gates) holds it at a chosen step until the
critical job is waiting in the lane's line; everything after that (the preemption decision, the pause,
the hand-over, the resume) is the product's own code.
"""

import threading
import time

import pytest
from django.urls import reverse
from PIL import Image

from lanes import control, engines
from lanes.actions import submit_brief
from lanes.models import Job, Lane, ModelVersion
from lanes.slots import FIRST, slots
from tests.conftest import make_user, wait_for_job, wait_until
from tests.gates import Gates

pytestmark = pytest.mark.django_db(transaction=True)


def digest(job: Job) -> str:
    return job.artifacts.get(stage="final").sha256


def paused(job: Job) -> Job:
    return wait_until(
        lambda: Job.objects.filter(pk=job.pk, paused_at__isnull=False).first(), timeout=60, what="the job paused"
    )


@pytest.fixture
def casey(db):
    return make_user("casey")


@pytest.mark.parametrize("intent", ["draft", "sdxl", "sd3", "flux"])
def test_a_background_job_pauses_for_a_critical_one_and_resumes_bit_identical(worker, casey, monkeypatch, intent):
    lane = Lane.objects.get(routes__intent=intent)
    Lane.objects.filter(pk=lane.pk).update(max_concurrency=1)
    gates = Gates(monkeypatch)
    brief = dict(prompt="A lighthouse at dusk", intent=intent, seed=11, steps=4)
    held = gates.until_waiting(brief["prompt"], 1)
    background = submit_brief(casey, **brief, priority="background")
    assert held.wait(60)
    critical = submit_brief(casey, prompt="Launch poster", intent=intent, seed=5, priority="critical")

    critical, background = wait_for_job(critical.pk), wait_for_job(background.pk)
    assert critical.state == background.state == Job.State.SUCCEEDED, (critical.error, background.error)
    assert background.preemptions == 1 and background.paused_for == "critical" and background.paused_at is None
    # The critical job ran inside the background job's pause, in its slot.
    assert background.started_at < critical.started_at and critical.finished_at < background.finished_at
    assert background.paused_seconds > 0 and background.progress_step == background.steps
    assert background.run_only_seconds < (background.finished_at - background.started_at).total_seconds()

    alone = wait_for_job(submit_brief(casey, **brief, priority="background").pk)
    assert alone.preemptions == 0 and digest(alone) == digest(background)


def critical_rendering() -> bool:
    return any(s.rendering and s.cls == 0 for s in slots._held)


def test_a_background_job_stands_aside_while_a_critical_one_renders_beside_it_and_ends_bit_identical(
    worker, casey, monkeypatch
):
    """Two slots: the critical job takes the one kept for it, and the background job keeps its own but stops
    stepping while the critical one renders (they would share the device's compute)."""
    Lane.objects.filter(name="fast-draft").update(max_concurrency=2)
    gates = Gates(monkeypatch)
    brief = dict(prompt="Harbour at noon", intent="draft", seed=12, steps=4)
    held = gates.hold(brief["prompt"], 1, lambda job: critical_rendering())
    background = submit_brief(casey, **brief, priority="background")
    assert held.wait(60)
    # The critical job goes on only once the background job has stood aside for it.
    gates.hold("Launch poster", 1, lambda job: Job.objects.filter(pk=background.pk, paused_at__isnull=False).exists())
    critical = submit_brief(casey, prompt="Launch poster", intent="draft", seed=5, priority="critical")
    critical, background = wait_for_job(critical.pk), wait_for_job(background.pk)
    assert critical.state == background.state == Job.State.SUCCEEDED, (critical.error, background.error)
    assert background.preemptions == 1 and background.paused_for == "critical" and background.paused_seconds > 0
    assert critical.preemptions == 0
    alone = wait_for_job(submit_brief(casey, **brief, priority="background").pk)
    assert digest(alone) == digest(background)


def test_a_job_that_starts_while_a_critical_one_renders_stands_aside_before_its_first_step(worker, casey, monkeypatch):
    """Its prompt encoding and first step would otherwise share the device with the critical render."""
    Lane.objects.filter(name="fast-draft").update(max_concurrency=3)  # a slot for each, and one kept for critical
    gates = Gates(monkeypatch)
    background: list[Job] = []
    steps_before_pause: list[int] = []

    def background_paused(job: Job) -> bool:
        if background and Job.objects.filter(pk=background[0].pk, paused_at__isnull=False).exists():
            steps_before_pause.append(sum(1 for prompt, _ in gates.seen if prompt == "aside"))
            return True
        return False

    held = gates.hold("Launch poster", 1, background_paused)  # the critical job renders until then
    # and a while longer: the background job's pause before its call is longer than its whole render
    gates.hold("Launch poster", 2, lambda job: time.monotonic() - paused_since[0] > 2.0)
    paused_since = [float("inf")]
    critical = submit_brief(casey, prompt="Launch poster", intent="draft", seed=5, steps=4, priority="critical")
    assert held.wait(60)
    paused_since[0] = time.monotonic()
    background.append(submit_brief(casey, prompt="aside", intent="draft", seed=1, steps=4, priority="background"))
    critical, after = wait_for_job(critical.pk), wait_for_job(background[0].pk)
    assert critical.state == after.state == Job.State.SUCCEEDED, (critical.error, after.error)
    assert steps_before_pause == [0]
    assert after.preemptions == 1 and after.paused_for == "critical" and after.started_at < critical.finished_at
    # The pause came before the call, which its clock does not count: nothing is taken off the run time.
    assert after.paused_seconds > 1.0 and after.run_seconds > 0 and after.gpu_seconds == after.run_seconds
    alone = wait_for_job(submit_brief(casey, prompt="aside", intent="draft", seed=1, steps=4, priority="background").pk)
    assert digest(alone) == digest(after)


def test_a_job_standing_aside_hands_its_slot_to_a_second_critical_job_that_comes_to_wait(worker, casey, monkeypatch):
    """Both slots taken (a critical job renders, a background job stands aside in the other): a second
    critical job gets the background job's slot at once, not after the first critical job ends."""
    Lane.objects.filter(name="fast-draft").update(max_concurrency=2)
    gates = Gates(monkeypatch)
    held = gates.hold("aside", 1, lambda job: critical_rendering())
    background = submit_brief(casey, prompt="aside", intent="draft", seed=1, steps=4, priority="background")
    assert held.wait(60)
    second: list[Job] = []
    # The first critical job renders until the second one runs beside it.
    gates.hold("first", 1, lambda job: bool(second) and Job.objects.get(pk=second[0].pk).started_at is not None)
    first = submit_brief(casey, prompt="first", intent="draft", seed=2, priority="critical")
    paused(background)
    second.append(submit_brief(casey, prompt="second", intent="draft", seed=3, priority="critical"))
    first, after = wait_for_job(first.pk), wait_for_job(second[0].pk)
    background = wait_for_job(background.pk)
    assert first.state == after.state == background.state == Job.State.SUCCEEDED
    assert after.started_at < first.finished_at  # it did not wait for the first one to end
    assert background.preemptions == 2  # stood aside, then handed its slot over


def test_standing_aside_ends_at_the_time_limit_and_is_off_on_an_opted_out_lane(worker, casey, monkeypatch, settings):
    settings.PREEMPT_MAX_PAUSED_SECONDS = 0.5
    Lane.objects.filter(name="fast-draft").update(max_concurrency=2)
    gates = Gates(monkeypatch)
    held = gates.hold("patient", 1, lambda job: critical_rendering())
    background = submit_brief(casey, prompt="patient", intent="draft", seed=1, priority="background")
    assert held.wait(60)
    critical_held, release = gates.until_set("critical", 1)  # renders (held) until the background job is done
    critical = submit_brief(casey, prompt="critical", intent="draft", seed=2, priority="critical")
    assert critical_held.wait(60)
    background = wait_for_job(background.pk, timeout=30)
    assert background.state == Job.State.SUCCEEDED and background.preemptions == 1
    assert 0.5 <= background.paused_seconds < 5
    release.set()
    assert wait_for_job(critical.pk).state == Job.State.SUCCEEDED

    Lane.objects.filter(name="fast-draft").update(preemptible=False)
    held = gates.hold("opted out", 1, lambda job: critical_rendering())
    background = submit_brief(casey, prompt="opted out", intent="draft", seed=3, priority="background")
    assert held.wait(60)
    critical_held, release = gates.until_set("critical 2", 1)
    critical = submit_brief(casey, prompt="critical 2", intent="draft", seed=4, priority="critical")
    assert critical_held.wait(60)
    background = wait_for_job(background.pk, timeout=30)
    assert background.preemptions == 0
    release.set()
    assert wait_for_job(critical.pk).state == Job.State.SUCCEEDED


def test_a_standard_job_pauses_for_a_critical_one_but_never_for_its_own_class_or_on_an_opted_out_lane(
    worker, casey, monkeypatch
):
    Lane.objects.filter(name="fast-draft").update(max_concurrency=1)
    gates = Gates(monkeypatch)
    held = gates.until_waiting("first", 1)
    first = submit_brief(casey, prompt="first", intent="draft", seed=1)
    assert held.wait(60)
    second = submit_brief(casey, prompt="second", intent="draft", seed=2)  # standard too: waits its turn
    first, second = wait_for_job(first.pk), wait_for_job(second.pk)
    assert first.preemptions == 0 and first.finished_at <= second.started_at

    Lane.objects.filter(name="fast-draft").update(preemptible=False)
    reached = gates.until_waiting("held", 1)
    held = submit_brief(casey, prompt="held", intent="draft", seed=3)
    assert reached.wait(60)
    critical = submit_brief(casey, prompt="critical", intent="draft", seed=4, priority="critical")
    held, critical = wait_for_job(held.pk), wait_for_job(critical.pk)
    assert held.preemptions == 0 and held.finished_at <= critical.started_at


def test_a_job_paused_max_times_is_not_paused_again(worker, casey, monkeypatch, settings):
    settings.PREEMPT_MAX_PAUSES = 1
    Lane.objects.filter(name="fast-draft").update(max_concurrency=1)
    gates = Gates(monkeypatch)
    held = gates.until_waiting("long", 1)
    gates.until_waiting("long", 2)
    background = submit_brief(casey, prompt="long", intent="draft", seed=3, steps=4, priority="background")
    assert held.wait(60)
    first = submit_brief(casey, prompt="first critical", intent="draft", seed=1, priority="critical")
    paused(background)
    first = wait_for_job(first.pk)
    second = submit_brief(casey, prompt="second critical", intent="draft", seed=2, priority="critical")
    background, second = wait_for_job(background.pk), wait_for_job(second.pk)
    assert first.state == second.state == background.state == Job.State.SUCCEEDED
    assert background.preemptions == 1
    assert background.finished_at <= second.started_at  # the second critical job waited: no second pause


def test_a_paused_job_past_its_time_limit_takes_the_next_slot_before_critical_work(demo_lanes):
    lane = Lane.objects.get(name="fast-draft")
    Lane.objects.filter(pk=lane.pk).update(max_concurrency=1)
    slots._limits.clear()
    order: list[str] = []

    def critical(name: str, hold: threading.Event | None) -> None:
        with slots.acquire(lane.pk, "critical"):
            order.append(name)
            if hold is not None:
                hold.wait(30)

    with slots.acquire(lane.pk, "background") as slot:
        hold = threading.Event()
        first = threading.Thread(target=critical, args=("critical 1", hold), daemon=True)
        first.start()
        wait_until(lambda: slots.outranking(slot) is not None, what="a critical job outranking the running one")

        def pause() -> None:
            slots.pause(slot, first_after=time.monotonic() + 0.5)  # its time is up half a second into the pause
            order.append("paused job")

        pauser = threading.Thread(target=pause, daemon=True)
        pauser.start()
        wait_until(lambda: order == ["critical 1"], what="the critical job in the handed-over slot")
        second = threading.Thread(target=critical, args=("critical 2", None), daemon=True)
        second.start()
        wait_until(lambda: slots.waiting(lane.pk) == 2, what="a second critical job waiting")
        wait_until(lambda: slot.rank == FIRST, what="the paused job moved to the front")
        hold.set()
        pauser.join(30)
        assert order == ["critical 1", "paused job"] and slot.held
    second.join(30)
    first.join(30)
    assert order == ["critical 1", "paused job", "critical 2"] and slots.running(lane.pk) == 0


def test_cancelling_a_paused_job_stops_it_and_frees_its_memory(worker, casey, monkeypatch, client):
    Lane.objects.filter(name="fast-draft").update(max_concurrency=1)
    gates = Gates(monkeypatch)
    held = gates.until_waiting("to cancel", 1)
    critical_held, release = gates.until_set("critical", 1)
    background = submit_brief(casey, prompt="to cancel", intent="draft", seed=3, priority="background")
    assert held.wait(60)
    critical = submit_brief(casey, prompt="critical", intent="draft", seed=4, priority="critical")
    paused(background)
    assert critical_held.wait(60)
    both = engines.engine_cache._reserved
    assert both == 2 * 64 * 64 * 3000 * 4  # the paused job's activations stay counted beside the critical one's

    client.force_login(casey)
    page = client.get(reverse("job-detail", args=[background.pk]))
    assert "paused for a critical render" in page.text and "Cancel job" in page.text
    assert client.post(reverse("job-cancel", args=[background.pk])).status_code == 302
    # Its thread notices within a second or so, unwinds the pipeline call and gives its memory back.
    wait_until(lambda: engines.engine_cache._reserved == both // 2, timeout=30, what="the paused job's memory freed")
    release.set()
    critical, background = wait_for_job(critical.pk), Job.objects.get(pk=background.pk)
    assert critical.state == Job.State.SUCCEEDED and background.state == Job.State.CANCELLED
    assert not background.artifacts.exists() and background.paused_at is None
    wait_until(lambda: engines.engine_cache._reserved == 0, what="every reservation released")


def test_raising_the_lane_cap_resumes_a_paused_job_beside_the_critical_one(worker, casey, monkeypatch, settings):
    settings.PREEMPT_STAND_ASIDE = False  # it would stand aside again for the critical job, held rendering here
    lane = Lane.objects.get(name="fast-draft")
    Lane.objects.filter(pk=lane.pk).update(max_concurrency=1)
    gates = Gates(monkeypatch)
    brief = dict(prompt="cap change", intent="draft", seed=21, steps=4)
    held = gates.until_waiting(brief["prompt"], 1)
    critical_held, release = gates.until_set("critical", 1)
    background = submit_brief(casey, **brief, priority="background")
    assert held.wait(60)
    critical = submit_brief(casey, prompt="critical", intent="draft", seed=4, priority="critical")
    paused(background)
    assert critical_held.wait(60)

    # Three slots: with two or more one is kept for critical work, so a background job may use two.
    control.update_limits(Lane.objects.get(pk=lane.pk), {"max_concurrency": 3}, make_user("olive", "ops"))
    # Re-read within a second: the paused job takes a new slot while the critical job still runs.
    background = wait_for_job(background.pk, timeout=30)
    assert background.state == Job.State.SUCCEEDED and background.preemptions == 1
    assert Job.objects.get(pk=critical.pk).state == Job.State.RUNNING
    release.set()
    assert wait_for_job(critical.pk).state == Job.State.SUCCEEDED
    alone = wait_for_job(submit_brief(casey, **brief, priority="background").pk)
    assert digest(alone) == digest(background)


def test_a_critical_job_that_would_not_fit_the_memory_budget_is_not_preempted_for(worker, casey, monkeypatch):
    Lane.objects.filter(name="fast-draft").update(max_concurrency=1)
    gates = Gates(monkeypatch)
    running, release = gates.until_set("big", 1)
    background = submit_brief(casey, prompt="big", intent="draft", seed=3, priority="background")
    assert running.wait(60)
    # Room for what runs now and half of a second 64x64 job's activations: the critical job cannot fit beside it.
    cache = engines.engine_cache
    in_use = sum(e.weights_bytes for e in cache._engines.values() if e.in_use) + cache._reserved
    monkeypatch.setattr(cache, "_budget", in_use + cache._reserved // 2)
    gates.until_waiting("big", 2)
    critical = submit_brief(casey, prompt="critical", intent="draft", seed=4, priority="critical")
    wait_until(lambda: slots.waiting(background.lane_id) == 1, what="the critical job waiting")
    release.set()
    background, critical = wait_for_job(background.pk), wait_for_job(critical.pk)
    assert background.state == critical.state == Job.State.SUCCEEDED, (background.error, critical.error)
    assert background.preemptions == 0 and background.finished_at <= critical.started_at


def test_a_paused_refine_batch_resumes_bit_identical_while_the_engine_serves_another_call(demo_lanes, tmp_path):
    """The engine property preemption rests on, for a batched img2img call (a cascade's refine stage): a call
    held at a step boundary while another call runs on the same loaded pipeline ends with the same images."""
    refiner = ModelVersion.objects.get(name="demo-tiny-sdxl-refiner-v1")
    drafts = [Image.new("RGB", (64, 64), color) for color in ("red", "navy")]
    batch = dict(prompts=["a", "b"], images=drafts, seeds=[1, 2], steps=4, strength=0.6, guidance=5.0)
    with engines.engine_cache.use(refiner, width=64, height=64, batch=2) as engine:
        reference = engine.refine(**batch).images
        held, go = threading.Event(), threading.Event()

        def hold(step: int) -> None:
            if step == 1:
                held.set()
                assert go.wait(60)

        out: list = []
        thread = threading.Thread(target=lambda: out.append(engine.refine(**batch, on_step=hold)))
        thread.start()
        assert held.wait(60)
        other = dict(batch, prompts=["c", "d"], seeds=[8, 9])
        engine.refine(**other)  # another batch runs on the pipeline meanwhile
        go.set()
        thread.join(60)
    assert [img.tobytes() for img in out[0].images] == [img.tobytes() for img in reference]


def test_preemptions_show_on_the_dashboard_and_in_metrics(demo_lanes, casey, client, settings):
    job = submit_brief(casey, prompt="counted", intent="draft", seed=1, priority="background")
    Job.objects.filter(pk=job.pk).update(
        state=Job.State.SUCCEEDED, preemptions=2, paused_seconds=1.5, started_at=job.submitted_at,
        finished_at=job.submitted_at, run_seconds=0.1,
    )  # fmt: skip
    client.force_login(make_user("olive", "ops"))
    page = client.get(reverse("dashboard"))
    assert "Preempted" in page.text and "<td data-preemptions>2</td>" in page.text
    metrics = client.get("/metrics")
    assert 'laneway_preemptions{lane="fast-draft"} 2.0' in metrics.text
    page = client.get(reverse("job-detail", args=[job.pk]))
    assert "2× for higher-class renders, 1.5 s in all" in page.text
    assert settings.PREEMPTION


def test_a_hosted_engines_job_neither_stands_aside_for_this_gpus_work_nor_holds_it_up(demo_lanes, casey):
    """It renders elsewhere: pausing it would gain the GPU nothing, and lower classes need not wait for it."""
    from lanes.preemption import Preemptor

    job = submit_brief(casey, prompt="A hosted poster", intent="hosted", seed=3, priority="background")
    assert job.model_version.is_hosted
    local = Lane.objects.get(name="fast-draft")
    with slots.acquire(local.pk, "critical") as critical, slots.acquire(job.lane_id, "background") as slot:
        slots.rendering(critical, True)  # a critical render on this GPU
        preemptor = Preemptor(job, slot)
        with preemptor.rendering():
            assert not slot.rendering
            preemptor(0)
            preemptor(1)
        slots.rendering(critical, False)
    job.refresh_from_db()
    assert preemptor.pauses == 0 and preemptor.paused_seconds == 0 and job.paused_at is None and job.preemptions == 0
