"""The one module that sends websocket events.

Events are hints: pages re-read state from the database on reconnect. Sync callers (the
worker, views) hand events to one sender thread with its own event loop, so a push
never blocks a pipeline step on a network round trip, and events leave in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import Future

from channels.layers import get_channel_layer

from .events import GpuReading, GpuSampleEvent, JobProgressEvent, JobStateEvent, LaneRolloutEvent

log = logging.getLogger(__name__)

STAFF_GROUP = "jobs.staff"
TELEMETRY_GROUP = "telemetry"


def user_group(user_id: int) -> str:
    return f"jobs.user.{user_id}"


def team_group(team_id: int) -> str:
    return f"jobs.team.{team_id}"


class _Sender:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None

    def _start(self) -> None:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._queue = asyncio.Queue()
            self._loop = loop
            loop.create_task(self._drain(self._queue))
            ready.set()
            loop.run_forever()

        threading.Thread(target=run, name="laneway-push", daemon=True).start()
        ready.wait()

    async def _drain(self, queue: asyncio.Queue) -> None:
        layer = get_channel_layer()
        while True:
            groups, message, done = await queue.get()
            try:
                await asyncio.gather(*(layer.group_send(group, message) for group in groups))
            except Exception:
                log.exception("could not push %s", message.get("event", {}).get("type"))
            finally:
                if done is not None:
                    done.set_result(None)

    def send(self, groups: list[str], message: dict, done: Future | None = None) -> None:
        with self._lock:
            if self._loop is None:
                self._start()
        loop, queue = self._loop, self._queue
        assert loop is not None and queue is not None  # _start() sets both before it returns
        loop.call_soon_threadsafe(queue.put_nowait, (groups, message, done))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything sent so far has reached the channel layer."""
        if self._loop is None:
            return
        done: Future = Future()
        self.send([], {}, done)
        done.result(timeout)


_sender = _Sender()
flush = _sender.flush


def _message(event) -> dict:
    # Serialized once here rather than once per socket by every consumer it reaches.
    return {"type": "laneway.event", "event": event, "text": json.dumps(event)}


def _publish(job, event: JobProgressEvent | JobStateEvent) -> None:
    # A team's job goes to its team's group (its owner is in it), any other to its owner's.
    audience = team_group(job.team_id) if job.team_id else user_group(job.owner_id)
    _sender.send([audience, STAFF_GROUP], _message(event))


def job_state_event(job) -> JobStateEvent:
    return JobStateEvent(
        type="job.state",
        job_id=job.pk,
        owner_id=job.owner_id,
        team_id=job.team_id,
        state=job.state,
        stage=job.stage,
        step=job.progress_step,
        steps=job.total_steps,
        percent=job.progress_percent,
        error=job.error,
        paused_for=job.paused_for if job.is_paused else "",
    )


def job_state(job) -> None:
    _publish(job, job_state_event(job))


def job_progress(job, step: int) -> None:
    _publish(
        job,
        JobProgressEvent(
            type="job.progress",
            job_id=job.pk,
            owner_id=job.owner_id,
            team_id=job.team_id,
            step=step,
            steps=job.total_steps,
            percent=job.percent_at(step),
        ),
    )


def gpu_sample_event(worker: str, samples) -> GpuSampleEvent:
    return GpuSampleEvent(
        type="gpu.sample",
        worker=worker,
        taken_at=samples[0].taken_at.isoformat() if samples else "",
        running_jobs=samples[0].running_jobs if samples else 0,
        gpus=[
            GpuReading(
                gpu_index=s.gpu_index,
                name=s.name,
                utilization_pct=s.utilization_pct,
                memory_used_bytes=s.memory_used_bytes,
                memory_total_bytes=s.memory_total_bytes,
                temperature_c=s.temperature_c,
                power_w=s.power_w,
            )
            for s in samples
        ],
    )


def gpu_samples(worker: str, samples) -> None:
    _sender.send([TELEMETRY_GROUP], _message(gpu_sample_event(worker, samples)))


def lane_rollout(lane: str, state: str, step: int, percent: int) -> None:
    """To ops and admins (the staff group): lane pages are theirs."""
    event = LaneRolloutEvent(type="lane.rollout", lane=lane, state=state, step=step, percent=percent)
    _sender.send([STAFF_GROUP], _message(event))
