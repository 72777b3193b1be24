"""The jobs websocket: live progress and state of the jobs a user may see."""

from channels.db import database_sync_to_async

from accounts.access import has_role, team_of
from accounts.models import Role
from telemetry.consumers import PushConsumer
from telemetry.events import JobsSnapshotEvent
from telemetry.push import STAFF_GROUP, job_state_event, team_group, user_group

from .models import Job

SNAPSHOT_JOBS = 50


class JobsConsumer(PushConsumer):
    """Job progress and state: a creative's own and their team's jobs; every job for ops and admins."""

    async def connect(self) -> None:
        self.user = self.scope.get("user")
        self.groups_joined: list[str] = []
        if self.user is None or not self.user.is_authenticated:
            await self.close()
            return
        self.sees_all, self.team_id = await self.access()
        if self.sees_all:
            self.groups_joined = [STAFF_GROUP]
        else:
            self.groups_joined = [user_group(self.user.pk)] + ([team_group(self.team_id)] if self.team_id else [])
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        await self.send_json(await self.snapshot())

    @database_sync_to_async
    def access(self) -> tuple[bool, int | None]:
        return has_role(self.user, Role.OPS), team_of(self.user)

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    @database_sync_to_async
    def snapshot(self) -> JobsSnapshotEvent:
        jobs = Job.objects.visible_to(self.user).exclude(state__in=Job.TERMINAL)[:SNAPSHOT_JOBS]
        return JobsSnapshotEvent(type="jobs.snapshot", jobs=[job_state_event(job) for job in jobs])

    async def laneway_event(self, message: dict) -> None:
        event = message["event"]
        mine = event.get("owner_id") == self.user.pk
        ours = self.team_id is not None and event.get("team_id") == self.team_id
        if self.sees_all or mine or ours:
            await self.send(text_data=message["text"])

    async def receive_json(self, content, **kwargs) -> None:
        # The stream is one-way; a client message only asks for the current state again.
        if content.get("type") == "jobs.snapshot":
            await self.send_json(await self.snapshot())
