"""Hooks of a Celery worker process: its heartbeat, and the reload control command."""

from celery.signals import worker_ready, worker_shutdown
from celery.worker.control import control_command

from .engines import engine_cache
from .heartbeat import heartbeat


@worker_ready.connect
def start_heartbeat(sender=None, **kwargs) -> None:
    queues = ",".join(sorted(q.name for q in sender.task_consumer.queues)) if sender is not None else ""
    heartbeat.start(queues, consumer=sender)


@worker_shutdown.connect
def stop_heartbeat(sender=None, **kwargs) -> None:
    heartbeat.stop()


@control_command()
def laneway_reload(state) -> dict:
    """Drop this worker's cached pipelines; those in use go once their jobs finish."""
    dropped, retiring = engine_cache.reload()
    return {"ok": f"dropped {dropped} idle pipelines; {retiring} go when their jobs finish"}
