from celery import shared_task

from . import runner


@shared_task(name="experiments.tasks.pump_experiments", ignore_result=True)
def pump_experiments() -> int:
    """Beat: keep every running experiment fed (job completions feed them too)."""
    return runner.pump_running()
