"""Typed payloads of every websocket event Laneway sends."""

from typing import Literal, TypedDict


class JobProgressEvent(TypedDict):
    type: Literal["job.progress"]
    job_id: int
    owner_id: int
    team_id: int | None
    step: int
    steps: int
    percent: int


class JobStateEvent(TypedDict):
    type: Literal["job.state"]
    job_id: int
    owner_id: int
    team_id: int | None
    state: str
    stage: str
    step: int
    steps: int
    percent: int
    error: str
    paused_for: str  # the class a running job is paused for ("" unless paused)


class GpuReading(TypedDict):
    gpu_index: int | None
    name: str
    utilization_pct: float | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: float | None
    power_w: float | None


class GpuSampleEvent(TypedDict):
    type: Literal["gpu.sample"]
    worker: str
    taken_at: str
    running_jobs: int
    gpus: list[GpuReading]


class TelemetrySnapshotEvent(TypedDict):
    type: Literal["telemetry.snapshot"]
    samples: list[GpuSampleEvent]


class JobsSnapshotEvent(TypedDict):
    type: Literal["jobs.snapshot"]
    jobs: list[JobStateEvent]


class LaneRolloutEvent(TypedDict):
    """A lane's rollout changed (started, advanced, paused, ended, analysed): its page re-reads it."""

    type: Literal["lane.rollout"]
    lane: str
    state: str
    step: int
    percent: int
