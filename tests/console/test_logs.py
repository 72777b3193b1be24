import json
import logging
import sys

import pytest
from celery.app.trace import LOG_SUCCESS
from celery.app.trace import info as celery_info
from django.urls import reverse

from console.logs import JsonFormatter
from tests.conftest import make_user


@pytest.mark.django_db
def test_a_refused_page_is_one_warning_line_without_a_traceback(client, caplog):
    client.force_login(make_user("casey", "creative"))
    with caplog.at_level(logging.WARNING, logger="django.request"):
        assert client.get(reverse("experiment-new")).status_code == 403
    (record,) = [r for r in caplog.records if r.name == "django.request"]
    assert (
        record.levelname == "WARNING"
        and "Forbidden" in record.getMessage()
        and "/experiments/new/" in record.getMessage()
    )
    assert record.exc_info is None and not record.exc_text


def succeeded(name: str) -> None:
    """Logged exactly as a Celery worker logs a task that succeeded."""
    celery_info(LOG_SUCCESS, {"id": "abc", "name": name, "return_value": "ok", "runtime": 0.01})


def test_beats_periodic_tasks_log_at_debug_and_jobs_at_info(caplog):
    with caplog.at_level(logging.INFO, logger="celery.app.trace"):
        succeeded("lanes.tasks.release_deferred_jobs")
        succeeded("lanes.tasks.run_job")
    assert [r.getMessage() for r in caplog.records] == ["Task lanes.tasks.run_job[abc] succeeded in 0.01s: ok"]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="celery.app.trace"):
        succeeded("experiments.tasks.pump_experiments")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("DEBUG", "Task experiments.tasks.pump_experiments[abc] succeeded in 0.01s: ok")
    ]


def test_the_json_format_is_one_object_a_line_with_the_traceback():
    try:
        raise ValueError("bad value")
    except ValueError:
        record = logging.LogRecord("lanes.tasks", logging.ERROR, __file__, 1, "job %s failed", (7,), sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["logger"] == "lanes.tasks" and entry["message"] == "job 7 failed"
    assert "ValueError: bad value" in entry["exception"] and entry["time"][:2] == "20"


def test_beats_own_sending_lines_for_bookkeeping_go_to_debug(caplog):
    from celery.beat import info  # the function beat logs "Sending due task" with

    with caplog.at_level(logging.INFO, logger="celery.beat"):
        info("Scheduler: Sending due task %s (%s)", "release-deferred", "lanes.tasks.release_deferred_jobs")
        info("Scheduler: Sending due task %s (%s)", "nightly-report", "reports.tasks.nightly")
        info("beat: Starting...")
    assert [r.getMessage() for r in caplog.records] == [
        "Scheduler: Sending due task nightly-report (reports.tasks.nightly)",
        "beat: Starting...",
    ]
