from celery.signals import worker_ready, worker_shutdown


@worker_ready.connect
def start_heartbeat(sender=None, **kwargs) -> None:
    from .heartbeat import heartbeat

    queues = ",".join(sorted(q.name for q in sender.task_consumer.queues)) if sender is not None else ""
    heartbeat.start(queues)


@worker_shutdown.connect
def stop_heartbeat(sender=None, **kwargs) -> None:
    from .heartbeat import heartbeat

    heartbeat.stop()
