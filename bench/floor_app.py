"""The bare Celery app of bench/overhead.py's floor: nothing of Laneway, one task that does nothing, on
the broker the environment names (FLOOR_BROKER_URL: the one the bench's Laneway stack uses), with its
results sent back over that broker (the rpc:// backend). Its worker runs as Laneway's GPU worker does:
a threads pool, acks late, prefetch 1, no gossip or mingle."""

import os

from celery import Celery

app = Celery("laneway-floor", broker=os.environ["FLOOR_BROKER_URL"], backend="rpc://")
app.conf.update(
    task_default_queue="laneway-floor",
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_transport_options={"priority_steps": [0, 3, 6, 9], "sep": ":"},  # as Laneway's queues have them
)


@app.task(name="floor.noop")
def noop() -> None:
    return None
