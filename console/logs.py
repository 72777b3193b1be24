"""Logging that stays quiet when all is well: one line per job, per control action, per error."""

import json
import logging

# Beat sends these every few seconds; a worker logging each one's receipt and success buried the
# lines that matter (about 4,000 in 15 minutes). They are logged at DEBUG; their failures still show.
PERIODIC_TASKS = frozenset(
    {
        "lanes.tasks.reconcile_jobs",
        "lanes.tasks.release_deferred_jobs",
        "telemetry.tasks.prune_samples",
        "experiments.tasks.pump_experiments",
        "lanes.tasks.check_canaries",
        "lanes.tasks.prune_artifacts",
        "webhooks.tasks.send_due_deliveries",
    }
)


class PeriodicTasksAtDebug(logging.Filter):
    """On celery's received/succeeded loggers and beat's "Sending due task": beat's bookkeeping tasks
    go down to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        # celery.beat: info('Scheduler: Sending due task %s (%s)', entry.name, entry.task)
        sent = (
            record.args[-1]
            if isinstance(record.args, tuple) and record.args and isinstance(record.args[-1], str)
            else None
        )
        if record.levelno == logging.INFO and (
            (isinstance(data, dict) and data.get("name") in PERIODIC_TASKS) or sent in PERIODIC_TASKS
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class NoTracebackForRefusals(logging.Filter):
    """On django.request: a 403 (PermissionDenied, a role check) is one line, not a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "status_code", None) == 403:
            record.exc_info = None
            record.exc_text = None
        return True


class NoEmptyFp32Warning(logging.Filter):
    """On diffusers.models.modeling_utils: its own SDXL VAE upcast (`vae.to(torch.float32)`) warns that
    "modules ... should be kept in float32: []" — an empty list, so nothing is wrong. Other warnings
    from there (a checkpoint's unused or missing weights) still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []." not in record.getMessage()


class JsonFormatter(logging.Formatter):
    """LOG_FORMAT=json: one JSON object a line (time, level, logger, message, and the traceback if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
