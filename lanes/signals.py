"""What lanes announces to the features built on it. They listen; lanes never calls them."""

from __future__ import annotations

import logging

from django.db import transaction
from django.dispatch import Signal

log = logging.getLogger(__name__)

# Sent after commit when a worker's run ends a job (it succeeded or failed): receivers get
# `job`. Experiments feed their next cells from it.
job_finished = Signal()


def _send_after_commit(signal: Signal, name: str, for_job: int, **kwargs) -> None:
    """Send `signal` once the transaction commits; a listener's error is logged, never the worker's
    crash or the job's failure."""

    def send() -> None:
        for receiver, error in signal.send_robust(**kwargs):
            if isinstance(error, Exception):
                log.error("%s receiver %r failed for job %s", name, receiver, for_job, exc_info=error)

    transaction.on_commit(send)


def announce_finished(job) -> None:
    """Announce the job if its run ended it; a job still on its way (a cascade's draft, a job moved
    to its fallback) is announced when it finishes."""
    if job.is_terminal:
        _send_after_commit(job_finished, "job_finished", job.pk, sender=type(job), job=job)


# Sent after commit when a job's text check ends (passed, flagged, error): receivers get `job_id`.
# An experiment is finished only once its jobs' checks are in, so it listens for these too.
verification_finished = Signal()


def announce_verified(job_id: int) -> None:
    _send_after_commit(verification_finished, "verification_finished", job_id, sender=None, job_id=job_id)


# Sent (synchronously, not robustly) before retention prunes artifacts: each receiver returns a
# queryset of job ids (`.values("job_id")`, never holding NULL) whose images must be kept. Experiments
# keep their cells' jobs this way. A receiver that raises stops the pruning: nothing is deleted.
retention_holds = Signal()

# Sent (synchronously) by lanes.shadow.gate to ask whether a version's shadow on a lane passes: a
# receiver gets `lane` and `version` and returns (passed, why). The experiments app answers it with
# its paired statistics; lanes cannot import them.
shadow_gate = Signal()
