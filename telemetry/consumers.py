from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from lanes.models import Job

from .events import JobsSnapshotEvent, TelemetrySnapshotEvent
from .models import GpuSample
from .push import STAFF_GROUP, TELEMETRY_GROUP, gpu_sample_event, job_state_event, user_group

SNAPSHOT_JOBS = 50


class JobsConsumer(AsyncJsonWebsocketConsumer):
    """Job progress and state for the signed-in user (all jobs for staff)."""

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        if self.user is None or not self.user.is_authenticated:
            await self.close()
            return
        self.group = STAFF_GROUP if self.user.is_staff else user_group(self.user.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json(await self.snapshot())

    async def disconnect(self, code: int) -> None:
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    @database_sync_to_async
    def snapshot(self) -> JobsSnapshotEvent:
        jobs = Job.objects.visible_to(self.user).exclude(state__in=Job.TERMINAL)[:SNAPSHOT_JOBS]
        return JobsSnapshotEvent(type="jobs.snapshot", jobs=[job_state_event(job) for job in jobs])

    async def laneway_event(self, message: dict) -> None:
        event = message["event"]
        if self.user.is_staff or event.get("owner_id") == self.user.pk:
            await self.send(text_data=message["text"])

    async def receive_json(self, content, **kwargs) -> None:
        # The stream is one-way; a client message only asks for the current state again.
        if content.get("type") == "jobs.snapshot":
            await self.send_json(await self.snapshot())


class TelemetryConsumer(AsyncJsonWebsocketConsumer):
    """Live GPU samples for signed-in users; the current readings first."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close()
            return
        await self.channel_layer.group_add(TELEMETRY_GROUP, self.channel_name)
        await self.accept()
        await self.send_json(await self.snapshot())

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(TELEMETRY_GROUP, self.channel_name)

    @database_sync_to_async
    def snapshot(self) -> TelemetrySnapshotEvent:
        latest: dict[str, list] = {}
        for sample in GpuSample.objects.latest_per_device():
            latest.setdefault(sample.worker, []).append(sample)
        return TelemetrySnapshotEvent(
            type="telemetry.snapshot", samples=[gpu_sample_event(worker, rows) for worker, rows in latest.items()]
        )

    async def laneway_event(self, message: dict) -> None:
        await self.send(text_data=message["text"])
