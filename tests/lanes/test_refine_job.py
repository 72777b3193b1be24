import time
from collections import Counter

import pytest
from PIL import Image

from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane
from tests.conftest import wait_for_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def cascade_lane(demo_lanes):
    lane = Lane.objects.get(name="fast-draft")
    lane.cascade, lane.refine_scale, lane.refine_steps, lane.refine_strength = True, 2, 4, 0.5
    lane.refine_batch_size, lane.refine_max_wait_ms = 4, 400
    lane.defer_depth, lane.hard_cap, lane.latency_slo_ms, lane.max_concurrency = 50, 100, 600_000, 4
    lane.save()
    return lane


def test_a_cascade_job_keeps_its_draft_and_its_refined_final(worker, creative, cascade_lane, media_root):
    job = wait_for_job(submit_brief(creative, prompt="Cascade", intent="draft", width=64, height=48).pk)
    assert job.state == Job.State.SUCCEEDED, job.error
    draft, final = job.artifacts.get(stage="draft"), job.artifacts.get(stage="final")
    assert (draft.width, draft.height) == (32, 24)
    assert (final.width, final.height) == (64, 48)
    assert Image.open(final.absolute_path).size == (64, 48)
    assert draft.created_at < final.created_at  # the draft existed (and was shown) first
    assert job.refine_batch_size == 1  # alone: not held past the max wait
    assert job.progress_step == job.total_steps == 4 + 2


def test_refine_batches_bundle_waiting_jobs_and_record_their_sizes(worker, creative, cascade_lane):
    jobs = [submit_brief(creative, prompt=f"Batch {i}", intent="draft", seed=i) for i in range(8)]
    done = [wait_for_job(job.pk) for job in jobs]
    assert {job.state for job in done} == {Job.State.SUCCEEDED}
    assert Artifact.objects.filter(job__in=done).count() == 16
    sizes = Counter(job.refine_batch_size for job in done)
    # Every recorded size k belongs to whole batches of k jobs, and bundling did happen.
    assert all(count % size == 0 for size, count in sizes.items()), sizes
    assert max(sizes) > 1 and max(sizes) <= cascade_lane.refine_batch_size


def test_a_lone_job_is_not_held_longer_than_the_max_wait(worker, creative, cascade_lane):
    Lane.objects.filter(pk=cascade_lane.pk).update(refine_max_wait_ms=100)
    wait_for_job(submit_brief(creative, prompt="warm-up", intent="draft").pk)
    started = time.monotonic()
    job = wait_for_job(submit_brief(creative, prompt="Alone", intent="draft").pk)
    assert job.state == Job.State.SUCCEEDED and job.refine_batch_size == 1
    assert time.monotonic() - started < 5


def test_a_cascade_size_must_halve_to_a_multiple_of_8(creative, cascade_lane):
    from lanes.actions import BriefRejected

    with pytest.raises(BriefRejected, match="Width must be a multiple of 16 \\(got 40\\)"):
        submit_brief(creative, prompt="Odd", intent="draft", width=40)


def test_the_hires_lane_drafts_then_batches_a_latent_x2_upscale(worker, creative, demo_lanes):
    jobs = [submit_brief(creative, prompt=f"Hires {i}", intent="hires", seed=i) for i in range(4)]
    done = [wait_for_job(job.pk) for job in jobs]
    assert {job.state for job in done} == {Job.State.SUCCEEDED}, [j.error for j in done]
    for job in done:
        assert job.refine_version.family == "latent-upscaler-x2"
        draft, final = job.artifacts.get(stage="draft"), job.artifacts.get(stage="final")
        assert (draft.width, draft.height, final.width, final.height) == (64, 64, 128, 128)
        assert Image.open(final.absolute_path).size == (128, 128)
        assert job.progress_step == job.total_steps == 4 + 4  # the upscaler runs all its steps
    sizes = Counter(job.refine_batch_size for job in done)
    assert all(count % size == 0 for size, count in sizes.items()), sizes
