"""A database made before accounts and experiments had apps of their own (lanes 0003) migrates
forward with every row still there and readable through today's models."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from accounts.access import has_role, team_of
from accounts.models import Member, Role, Team
from experiments.models import Arm, Experiment, ExperimentCell
from lanes.models import Artifact, AuditEvent, Job, Lane, LaneRelease, ModelVersion, Verification

BEFORE = [("lanes", "0003_experiments")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def fill_old_database(apps) -> dict:
    """Rows as the old layout wrote them, through the historical models of lanes 0003."""
    User = apps.get_model("auth", "User")
    Team, Member = apps.get_model("lanes", "Team"), apps.get_model("lanes", "Member")
    ModelVersion, Lane, Route = (apps.get_model("lanes", m) for m in ("ModelVersion", "Lane", "Route"))
    Job, Artifact, Verification = (apps.get_model("lanes", m) for m in ("Job", "Artifact", "Verification"))
    Experiment, Arm, Cell = (apps.get_model("lanes", m) for m in ("Experiment", "Arm", "ExperimentCell"))
    AuditEvent, LaneRelease = apps.get_model("lanes", "AuditEvent"), apps.get_model("lanes", "LaneRelease")

    now = timezone.now()
    team = Team.objects.create(name="studio")
    ada = User.objects.create(username="ada", is_superuser=True, is_staff=True)
    casey = User.objects.create(username="casey")
    Member.objects.create(user=ada, team=team, role="admin")
    Member.objects.create(user=casey, team=team, role="ops")
    version = ModelVersion.objects.create(name="v1", location="demo-tiny-sd", status="active", registered_by=ada)
    lane = Lane.objects.create(name="fast-draft", active_version=version, queue="lane.fast-draft")
    Route.objects.create(intent="draft", lane=lane)
    LaneRelease.objects.create(lane=lane, version=version, how="policy", started_by=ada)
    common = dict(owner=casey, team=team, lane=lane, model_version=version, width=64, height=64, steps=4, guidance=7.5)
    plain = Job.objects.create(prompt="plain", intent="draft", seed=1, state="succeeded", finished_at=now, **common)
    held = Job.objects.create(
        prompt="held", intent="draft", seed=2, state="succeeded", admission="deferred", submitted_at=now,
        admission_reason="fast-draft saturated, background work waits: depth 3/3; released after 2.5 s", **common,
    )  # fmt: skip
    waiting = Job.objects.create(
        prompt="waiting", intent="draft", seed=3, state="deferred", admission="deferred",
        admission_reason="fast-draft saturated, background work waits", **common,
    )  # fmt: skip
    arm_job = Job.objects.create(prompt="arm", intent="experiment", seed=4, state="queued", **common)
    artifact = Artifact.objects.create(job=plain, path="artifacts/1/final-1.png", width=64, height=64, sha256="ab",
                                       size_bytes=10)  # fmt: skip
    Verification.objects.create(job=plain, artifact=artifact, lane=lane, model_version=version, expected=["SALE"],
                                status="flagged")  # fmt: skip
    AuditEvent.objects.create(actor=ada, actor_name="ada", action="lane.activate", lane=lane, lane_name=lane.name)
    experiment = Experiment.objects.create(name="posters", created_by=ada, team=team, prompts=[{"prompt": "p"}],
                                           seeds=[4])  # fmt: skip
    arm = Arm.objects.create(experiment=experiment, name="a", lane=lane, model_version=version)
    Cell.objects.create(experiment=experiment, arm=arm, prompt_index=0, sample_index=0, seed=4, job=arm_job)
    # Content types as a partial `migrate accounts` would leave them: the old one, which a
    # permission points at, and a fresh one post_migrate made under the new label.
    old_team_type, _ = ContentType.objects.get_or_create(app_label="lanes", model="team")
    Permission.objects.get_or_create(content_type=old_team_type, codename="change_team", name="Can change team")
    ContentType.objects.get_or_create(app_label="lanes", model="experiment")
    ContentType.objects.get_or_create(app_label="accounts", model="team")
    return {
        "team_type": old_team_type.pk,
        "plain": plain.pk,
        "held": held.pk,
        "waiting": waiting.pk,
        "arm": arm_job.pk,
        "submitted": now,
    }


@pytest.mark.django_db(transaction=True)
def test_a_database_from_before_the_move_keeps_every_row():
    ids = fill_old_database(migrate(BEFORE))
    migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())

    # Teams and members, now accounts'.
    team = Team.objects.get(name="studio")
    casey = Member.objects.select_related("user").get(user__username="casey")
    assert (casey.team, casey.role) == (team, Role.OPS)
    assert has_role(casey.user, Role.OPS) and team_of(casey.user) == team.pk
    # Jobs keep their team (now accounts.Team) and the rest of the fleet is there.
    assert set(Job.objects.values_list("team__name", flat=True)) == {"studio"}
    assert Job.objects.count() == 4 and Lane.objects.get().routes.get().intent == "draft"
    assert ModelVersion.objects.get().registered_by.username == "ada"
    assert ModelVersion.objects.get().family == "sd15"  # every version before families was SD 1.x
    assert LaneRelease.objects.count() == 1 and Artifact.objects.count() == 1
    assert Verification.objects.awaiting_review().count() == 1
    assert AuditEvent.objects.get().action == "lane.activate"
    # Deferral moved from a phrase to fields; the phrase left the reason.
    held = Job.objects.get(pk=ids["held"])
    assert held.deferred_at == ids["submitted"]
    assert held.released_at == ids["submitted"] + timedelta(seconds=2.5) and held.deferred_seconds == 2.5
    assert held.admission_reason == "fast-draft saturated, background work waits: depth 3/3"
    waiting = Job.objects.get(pk=ids["waiting"])
    assert waiting.deferred_at is not None and waiting.released_at is None
    assert Job.objects.get(pk=ids["plain"]).deferred_at is None
    # Experiments, now their own app, still reach their jobs; their jobs are not routed traffic.
    experiment = Experiment.objects.get(name="posters")
    assert experiment.team == team and [a.name for a in Arm.objects.filter(experiment=experiment)] == ["a"]
    assert ExperimentCell.objects.get().job_id == ids["arm"]
    assert Job.objects.get(pk=ids["arm"]).experiment_cell.arm.name == "a"
    assert list(Job.objects.filter(routed=False).values_list("pk", flat=True)) == [ids["arm"]]
    # Content types follow the models (the admin's log and permissions point at them).
    assert ContentType.objects.filter(app_label="experiments", model="experiment").exists()
    assert not ContentType.objects.filter(app_label="lanes", model="experiment").exists()
    team_type = ContentType.objects.get(app_label="accounts", model="team")
    assert team_type.pk == ids["team_type"] and team_type.permission_set.filter(codename="change_team").exists()
