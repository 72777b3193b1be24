from celery.signals import worker_ready, worker_shutdown
from celery.worker.control import control_command


@worker_ready.connect
def start_heartbeat(sender=None, **kwargs) -> None:
    from .heartbeat import heartbeat

    queues = ",".join(sorted(q.name for q in sender.task_consumer.queues)) if sender is not None else ""
    heartbeat.start(queues, consumer=sender)


@worker_shutdown.connect
def stop_heartbeat(sender=None, **kwargs) -> None:
    from .heartbeat import heartbeat

    heartbeat.stop()


@control_command()
def laneway_reload(state) -> dict:
    """Drop this worker's cached pipelines; those in use go once their jobs finish."""
    from .engines import engines

    dropped, retiring = engines.reload()
    return {"ok": f"dropped {dropped} idle pipelines; {retiring} go when their jobs finish"}
