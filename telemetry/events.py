"""Typed payloads of every websocket event Laneway sends."""

from typing import Literal, TypedDict


class JobProgressEvent(TypedDict):
    type: Literal["job.progress"]
    job_id: int
    owner_id: int
    step: int
    steps: int
    percent: int


class JobStateEvent(TypedDict):
    type: Literal["job.state"]
    job_id: int
    owner_id: int
    state: str
    stage: str
    step: int
    steps: int
    percent: int
    error: str


class JobsSnapshotEvent(TypedDict):
    type: Literal["jobs.snapshot"]
    jobs: list[JobStateEvent]
