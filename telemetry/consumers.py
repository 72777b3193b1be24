from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from accounts.access import has_role
from accounts.models import Role

from .events import TelemetrySnapshotEvent
from .models import GpuSample
from .push import TELEMETRY_GROUP, gpu_sample_event


class PushConsumer(AsyncJsonWebsocketConsumer):
    """A socket that forwards the events telemetry.push sends to its groups (`laneway_event`).

    Channels closes stale database connections before every handler, by a hop to its database thread
    and back; a pushed event is forwarded without touching the database, so it skips that hop (five
    events per job, on every open page)."""

    async def dispatch(self, message: dict) -> None:
        if message["type"] == "laneway.event":
            await self.laneway_event(message)
        else:
            await super().dispatch(message)

    async def laneway_event(self, message: dict) -> None:
        raise NotImplementedError


class TelemetryConsumer(PushConsumer):
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
