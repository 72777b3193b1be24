from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.access import has_role
from accounts.models import Role

from .events import TelemetrySnapshotEvent
from .models import GpuSample
from .push import TELEMETRY_GROUP, gpu_sample_event


class TelemetryConsumer(AsyncJsonWebsocketConsumer):
    """Live GPU samples for ops and admins; the current readings first."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated or not await database_sync_to_async(has_role)(user, Role.OPS):
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
