"""RabbitMQ as CELERY_BROKER_URL (the README offers it): a web process, a GPU worker and beat, all on
amqp://, with the database and the cache/channel layer as in the rest of the suite. A brief submitted
over HTTP is rendered and finished; a worker SIGKILLed mid-render has its job requeued by beat and
finished by a new worker, once.

Marked `faults` (real processes, killed): skipped with the reason when nothing listens on RabbitMQ's
port (RABBITMQ_TEST_URL, default amqp://guest:guest@127.0.0.1:5672//)."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from django.conf import settings
from kombu import Connection

from accounts.models import ApiToken
from lanes.models import Artifact, Job, Lane
from tests.conftest import make_user, wait_for_job, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[2]
AMQP_URL = os.environ.get("RABBITMQ_TEST_URL", "amqp://guest:guest@127.0.0.1:5672//")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def rabbitmq():
    try:
        with Connection(AMQP_URL, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, timeout=3)
            # Messages an earlier run left name job ids of another database: drop them.
            for queue in ("lane.fast-draft", settings.HOUSEKEEPING_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE):
                with connection.channel() as channel:
                    try:
                        channel.queue_purge(queue)
                    except Exception:  # a queue that does not exist yet: nothing to purge
                        pass
    except Exception as exc:  # kombu's, amqp's and the socket's connection errors alike
        host = urlsplit(AMQP_URL).netloc.rsplit("@", 1)[-1]
        pytest.skip(f"no RabbitMQ at {host} ({exc}); set RABBITMQ_TEST_URL to test the AMQP broker")
    return AMQP_URL


class Processes:
    def __init__(self, tmp_path: Path, broker: str) -> None:
        self.tmp_path, self.started = tmp_path, []
        self.env = {
            **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "LANEWAY_USE_TEST_DATABASE": "1",
            "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": broker, "MEDIA_ROOT": str(settings.MEDIA_ROOT),
            "RECONCILE_EVERY": "1", "ADMISSION_CONTROL": "false",
            # tests.settings beats every 0.5 s: a worker busy importing diffusers on a loaded machine can
            # miss 3 beats and be taken for lost. 10 missed beats (5 s) still find a killed one quickly.
            "WORKER_LOST_AFTER_BEATS": "10",
        }  # fmt: skip

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.tmp_path / f"{name}.log", "w")  # noqa: SIM115 (the process owns it)
        process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.started.append((name, process))
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp_path.glob("*.log"))

    def stop(self) -> None:
        for _, process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def test_a_brief_renders_over_rabbitmq_and_a_killed_workers_job_is_requeued_and_finished_once(
    rabbitmq, demo_lanes, tmp_path
):
    Lane.objects.filter(name="fast-draft").update(max_steps=60)
    processes = Processes(tmp_path, rabbitmq)
    port = free_port()
    python = sys.executable
    worker = [python, "manage.py", "gpu_worker", "--lanes", "fast-draft", "--loglevel", "INFO"]
    try:
        processes.start("web", [str(Path(python).parent / "uvicorn"), "console.asgi:application",
                                "--host", "127.0.0.1", "--port", str(port), "--no-access-log"])  # fmt: skip
        first = processes.start("worker-1", worker)
        processes.start("beat", [python, "-m", "celery", "-A", "console", "beat", "--loglevel", "WARNING",
                                 "--schedule", str(tmp_path / "celerybeat-schedule")])  # fmt: skip
        base = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                response = httpx.get(f"{base}/healthz", timeout=5)
            except httpx.TransportError:
                return False
            return response.status_code == 200

        wait_until(healthy, timeout=60, what="the web process's /healthz with the AMQP broker")
        token = ApiToken.issue(make_user("casey"), "rabbitmq")[1]
        api = httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)

        quick = api.post("/jobs", json={"prompt": "a poster", "intent": "draft", "steps": 4})
        assert quick.status_code == 202, quick.text
        # Timeouts for a machine running other suites at once: a cold start alone took 40 s on one.
        done = wait_for_job(quick.json()["id"], timeout=240)
        assert done.state == Job.State.SUCCEEDED and done.attempts == 1

        slow = api.post("/jobs", json={"prompt": "a long render", "intent": "draft", "steps": 60})
        assert slow.status_code == 202, slow.text
        job_id = slow.json()["id"]
        running = wait_until(
            lambda: Job.objects.filter(pk=job_id, state=Job.State.RUNNING, progress_step__gte=2).first(),
            timeout=90, what="the long render running",
        )  # fmt: skip
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        # RabbitMQ hands the dead worker's unacknowledged message to the next consumer at once; it finds
        # the job still marked running and leaves it. Beat then sees the worker lost and requeues the job.
        processes.start("worker-2", worker)
        finished = wait_for_job(job_id, timeout=240)
    except BaseException:
        print(processes.logs())
        raise
    finally:
        processes.stop()
    assert finished.state == Job.State.SUCCEEDED, finished.error
    assert finished.lost_workers == 1 and finished.attempts == 2
    assert finished.worker != running.worker
    assert Artifact.objects.filter(job__in=[done, finished]).count() == 2
