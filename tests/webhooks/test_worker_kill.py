"""The outbox survives a worker killed mid-delivery: a real Celery worker process is SIGKILLed while
its POST hangs at the receiver; the delivery row outlives it, and once its lease runs out beat's
sweep sends it again, to a surviving worker, exactly once more, with the same webhook-id."""

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import running_worker, wait_until
from tests.webhooks.receiver import Handler, Receiver, serve
from tests.webhooks.test_deliver import emit, finished, subscribe
from tests.webhooks.test_outbox import purge
from webhooks.delivery import send_due
from webhooks.models import Delivery

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]


class HangingHandler(Handler):
    """The first request hangs until the test lets it go (its worker is dead by then)."""

    def do_POST(self) -> None:
        first = not self.server.received
        if first:
            self.server.received.append(None)  # seen: the worker is inside the attempt
            self.server.release.wait(30)
            return
        super().do_POST()


def test_a_delivery_outlives_a_killed_worker_and_is_sent_once_more(local_receivers, team, settings):
    receiver = Receiver()
    receiver.RequestHandlerClass = HangingHandler
    receiver.release = threading.Event()
    thread = serve(receiver)
    purge(settings.WEBHOOK_QUEUE)
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "LANEWAY_USE_TEST_DATABASE": "1",
        "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "WEBHOOK_ALLOWED_HOSTS": "127.0.0.1", "WEBHOOK_TIMEOUT_SECONDS": "2",  # its lease: 7 s
    }  # fmt: skip
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "console", "worker", "--pool", "threads", "--concurrency", "1",
         "--queues", settings.WEBHOOK_QUEUE, "--hostname", f"doomed-{os.getpid()}@%h", "--without-gossip",
         "--without-mingle", "--loglevel", "WARNING"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        subscribe(team, receiver)
        delivery = emit(team)
        wait_until(lambda: receiver.received, timeout=30, what="the worker's POST reaching the receiver")
        worker.kill()  # SIGKILL: no cleanup, no ack, no result written
        worker.wait(10)
        receiver.release.set()
        delivery.refresh_from_db()
        assert delivery.state == Delivery.State.PENDING and delivery.attempts == 1  # claimed, never finished
        assert send_due() == 0  # still leased to the dead worker

        with running_worker(queues=[settings.WEBHOOK_QUEUE]):
            wait_until(lambda: send_due(), timeout=20, what="the lease running out")
            delivery = finished(delivery)
        assert delivery.state == Delivery.State.SUCCEEDED and delivery.attempts == 2
        delivered = [r for r in receiver.received if r is not None]
        assert len(delivered) == 1 and delivered[0].headers["webhook-id"] == delivery.msg_id
    finally:
        if worker.poll() is None:
            worker.kill()
        receiver.release.set()
        receiver.shutdown()
        receiver.server_close()
        thread.join(5)
