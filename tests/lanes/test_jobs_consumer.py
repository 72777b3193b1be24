import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from console.asgi import application
from lanes.actions import submit_brief
from lanes.models import Job
from tests.conftest import session_headers, wait_for_job

pytestmark = pytest.mark.django_db(transaction=True)


async def receive_until(communicator, predicate, timeout: float = 30.0) -> list[dict]:
    """Every event received until one satisfies predicate (which is included)."""
    received = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        event = await communicator.receive_json_from(timeout=max(0.1, deadline - loop.time()))
        received.append(event)
        if predicate(event):
            return received


def test_an_anonymous_socket_is_refused(db):
    async def scenario():
        communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=[(b"origin", b"http://localhost")])
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert async_to_sync(scenario)() is False


def test_a_socket_from_a_foreign_origin_is_refused(client, creative):
    headers = [(b"origin", b"http://evil.example")] + session_headers(client, creative)[1:]

    async def scenario():
        communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=headers)
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert async_to_sync(scenario)() is False


def test_the_owner_gets_a_snapshot_then_progress_per_step_and_completion(worker, client, creative, other_creative):
    queued = submit_brief(creative, prompt="Snapshot me", intent="final")
    wait_for_job(queued.pk)
    owner_headers = session_headers(client, creative)
    other_headers = session_headers(client.__class__(), other_creative)

    async def scenario():
        owner = WebsocketCommunicator(application, "/ws/jobs/", headers=owner_headers)
        other = WebsocketCommunicator(application, "/ws/jobs/", headers=other_headers)
        assert (await owner.connect())[0] and (await other.connect())[0]
        snapshot = await owner.receive_json_from(timeout=5)
        assert (await other.receive_json_from(timeout=5)) == {"type": "jobs.snapshot", "jobs": []}
        job = await asyncio.to_thread(submit_brief, creative, prompt="Live please", intent="final", seed=9)
        events = await receive_until(owner, lambda e: e.get("type") == "job.state" and e["state"] == "succeeded")
        other_got_nothing = await other.receive_nothing(timeout=0.3)
        await owner.disconnect()
        await other.disconnect()
        return snapshot, job, events, other_got_nothing

    snapshot, job, events, other_got_nothing = async_to_sync(scenario)()
    assert snapshot == {"type": "jobs.snapshot", "jobs": []}  # the earlier job had finished
    mine = [e for e in events if e.get("job_id") == job.pk]
    states = [e["state"] for e in mine if e["type"] == "job.state"]
    assert states == ["queued", "running", "succeeded"]
    steps = [e["step"] for e in mine if e["type"] == "job.progress"]
    assert steps == list(range(1, job.steps + 1))
    assert mine[-1]["percent"] == 100
    assert other_got_nothing


def test_the_snapshot_holds_unfinished_jobs(client, creative, demo_lanes):
    job = submit_brief(creative, prompt="Waiting", intent="draft")  # no worker: stays queued
    headers = session_headers(client, creative)

    async def scenario():
        communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=headers)
        await communicator.connect()
        snapshot = await communicator.receive_json_from(timeout=5)
        await communicator.send_json_to({"type": "jobs.snapshot"})
        again = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return snapshot, again

    snapshot, again = async_to_sync(scenario)()
    assert [(j["job_id"], j["state"]) for j in snapshot["jobs"]] == [(job.pk, Job.State.QUEUED)]
    assert again == snapshot


def test_an_idle_socket_outlives_the_channel_layers_blocking_read(client, creative, demo_lanes):
    from channels_redis.core import RedisChannelLayer

    headers = session_headers(client, creative)

    async def scenario():
        communicator = WebsocketCommunicator(application, "/ws/jobs/", headers=headers)
        await communicator.connect()
        await communicator.receive_json_from(timeout=5)
        # This idle spell is what is under test: past the 5 s read timeouts, the consumer must still listen.
        await asyncio.sleep(RedisChannelLayer.brpop_timeout + 1.5)
        job = await asyncio.to_thread(submit_brief, creative, prompt="After a quiet spell", intent="draft")
        event = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return job, event

    job, event = async_to_sync(scenario)()
    assert event["job_id"] == job.pk and event["state"] == "queued"


def test_teammates_get_a_teams_job_events_and_another_team_gets_none(worker, client):
    from accounts.models import Team
    from telemetry import push
    from tests.conftest import make_user

    studio, agency = Team.objects.create(name="studio"), Team.objects.create(name="agency")
    owner, mate, stranger = (
        make_user("casey", team=studio),
        make_user("robin", team=studio),
        make_user("sam", team=agency),
    )
    mate_headers = session_headers(client, mate)
    stranger_headers = session_headers(client.__class__(), stranger)

    async def scenario():
        mate_socket = WebsocketCommunicator(application, "/ws/jobs/", headers=mate_headers)
        stranger_socket = WebsocketCommunicator(application, "/ws/jobs/", headers=stranger_headers)
        assert (await mate_socket.connect())[0] and (await stranger_socket.connect())[0]
        await mate_socket.receive_json_from(timeout=5)  # snapshots
        await stranger_socket.receive_json_from(timeout=5)
        from asgiref.sync import sync_to_async

        job = await sync_to_async(submit_brief)(owner, prompt="Team poster", intent="draft")
        events = await receive_until(mate_socket, lambda e: e["type"] == "job.state" and e["state"] == "succeeded")
        await sync_to_async(push.flush)()
        stranger_heard = await stranger_socket.receive_nothing(timeout=0.5)
        await mate_socket.disconnect()
        await stranger_socket.disconnect()
        return job, events, stranger_heard

    job, events, stranger_heard = async_to_sync(scenario)()
    assert {e["job_id"] for e in events} == {job.pk} and all(e["team_id"] == studio.pk for e in events)
    assert len([e for e in events if e["type"] == "job.state" and e["state"] == "succeeded"]) == 1  # one copy
    assert stranger_heard is True
