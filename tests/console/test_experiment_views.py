import csv
import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from accounts.models import Team
from experiments import definition as definitions
from experiments import results, runner
from experiments.models import Experiment
from lanes.models import Artifact, Job, Lane, ModelVersion, Verification
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

DEFINITION = """\
name: views
samples: 3
prompts:
  - {prompt: "Sale poster", expected_text: SALE}
  - A harbour
arms:
  - {name: a, lane: fast-draft}
  - {name: b, lane: fast-draft, steps: 2}
"""


@pytest.fixture
def team(db):
    return Team.objects.create(name="studio")


@pytest.fixture
def admin(team):
    return make_user("ada", "admin", team)


def finish(experiment, run_s):
    """Mark the experiment's jobs done with known figures, as a worker would, until every cell has one."""
    while runner.pump(experiment.pk):
        waiting = Job.objects.filter(experiment_cell__experiment=experiment).exclude(state=Job.State.SUCCEEDED)
        for job in waiting.select_related("experiment_cell__arm"):
            arm = job.experiment_cell.arm.name
            Job.objects.filter(pk=job.pk).update(
                state=Job.State.SUCCEEDED, run_seconds=run_s[arm] + job.seed / 1000, gpu_seconds=0.0,
                peak_memory_bytes=1000 + job.seed,
            )  # fmt: skip


def test_an_admin_starts_an_experiment_from_pasted_yaml_and_an_uploaded_prompt_file(client, admin, demo_lanes):
    client.force_login(admin)
    prompts = SimpleUploadedFile("prompts.txt", b"Neon sign || OPEN\nA plain poster\n", content_type="text/plain")
    response = client.post(
        reverse("experiment-new"),
        {"definition": DEFINITION, "prompt_lines": "Menu board || LUNCH", "prompt_file": prompts},
    )
    assert response.status_code == 302
    experiment = Experiment.objects.get(name="views")
    assert [p["expected_text"] for p in experiment.prompts] == ["LUNCH", "OPEN", "", "SALE", ""]
    assert experiment.cells.count() == 5 * 3 * 2 and experiment.team.name == "studio"


def test_a_malformed_definition_is_answered_with_line_numbers_and_starts_nothing(client, admin, demo_lanes):
    client.force_login(admin)
    response = client.post(
        reverse("experiment-new"), {"definition": "name: x\narms:\n  - {name: a, lane: fast-draft\n"}
    )
    assert response.status_code == 400 and "line 3: not valid YAML" in response.text  # the unclosed brace
    response = client.post(reverse("experiment-new"), {"definition": "name: x\nprompts: []\narms: []\n"})
    assert response.status_code == 400
    assert "the prompt set is empty" in response.text and "two or more arms" in response.text
    assert client.post(reverse("experiment-new"), {"definition": ""}).status_code == 400
    assert not Experiment.objects.exists() and not Job.objects.exists()


def test_results_show_the_grid_summary_and_plain_comparisons(client, admin, demo_lanes):
    experiment = runner.create(admin, definitions.parse(DEFINITION))
    finish(experiment, {"a": 1.0, "b": 0.5})
    client.force_login(admin)
    page = client.get(reverse("experiment-detail", args=["views"]))
    assert page.status_code == 200 and "12 / 12 jobs done" in page.text
    assert "run time: b is" in page.text and "faster than a" in page.text
    assert "pass rate: too few pairs to tell (n=0; need 6)." in page.text  # nothing verified
    assert page.text.count('class="cell"') == 12
    flipped = client.get(reverse("experiment-detail", args=["views"]) + "?baseline=b")
    assert "run time: a is" in flipped.text and "slower than b" in flipped.text


def test_grid_badges_name_the_verdict_in_words(client, admin, demo_lanes):
    experiment = runner.create(admin, definitions.parse(DEFINITION))
    finish(experiment, {"a": 1.0, "b": 0.5})
    jobs = list(Job.objects.filter(experiment_cell__experiment=experiment).order_by("pk")[:2])
    for job, status in zip(jobs, ["not_applicable", "flagged"], strict=True):
        artifact = Artifact.objects.create(
            job=job, path=f"artifacts/{job.pk}.png", width=8, height=8, sha256="0", size_bytes=9
        )
        Verification.objects.create(job=job, artifact=artifact, lane=job.lane, status=status)
    client.force_login(admin)
    page = client.get(reverse("experiment-detail", args=["views"])).text
    assert '<span class="badge text-not_applicable">not applicable</span>' in page
    assert '<span class="badge text-flagged">flagged</span>' in page
    assert ">not_applicable" not in page


def test_the_new_experiment_form_starts_from_the_readmes_example(client, admin, demo_lanes):
    client.force_login(admin)
    page = client.get(reverse("experiment-new")).text
    assert "name: sale-posters" in page and "samples: 4" in page


def test_csv_and_json_exports_parse_back_to_the_same_numbers(client, admin, demo_lanes):
    experiment = runner.create(admin, definitions.parse(DEFINITION))
    finish(experiment, {"a": 1.0, "b": 0.5})
    client.force_login(admin)
    rows = results.cell_results(experiment)
    as_csv = list(csv.DictReader(io.StringIO(client.get(reverse("experiment-export", args=["views", "csv"])).text)))
    as_json = json.loads(client.get(reverse("experiment-export", args=["views", "json"])).content)["cells"]
    assert len(as_csv) == len(as_json) == len(rows) == 12
    for row, from_csv, from_json in zip(rows, as_csv, as_json, strict=True):
        assert (float(from_csv["run_s"]), int(from_csv["seed"]), from_csv["arm"]) == (row.run_s, row.seed, row.arm)
        assert (from_json["run_s"], from_json["seed"], from_json["job_id"]) == (row.run_s, row.seed, row.job_id)
        assert int(from_csv["peak_memory_bytes"]) == from_json["peak_memory_bytes"] == row.peak_memory_bytes
    assert client.get(reverse("experiment-export", args=["views", "xml"])).status_code == 404


def test_creatives_view_their_teams_experiments_and_only_admins_run_them(client, admin, team, demo_lanes):
    runner.create(admin, definitions.parse(DEFINITION))
    teammate, outsider = make_user("casey", team=team), make_user("sam")
    client.force_login(teammate)
    assert client.get(reverse("experiment-detail", args=["views"])).status_code == 200
    assert "views" in client.get(reverse("experiment-list")).text
    assert client.get(reverse("experiment-new")).status_code == 403
    assert client.post(reverse("experiment-control", args=["views", "cancel"])).status_code == 403
    client.force_login(outsider)
    assert client.get(reverse("experiment-detail", args=["views"])).status_code == 404
    assert "views" not in client.get(reverse("experiment-list")).text
    assert Experiment.objects.get().state == Experiment.State.RUNNING


def test_an_admin_canaries_the_winning_arms_version_from_the_results(client, admin, demo_lanes):
    v2 = ModelVersion.objects.create(name="winner", location="demo-tiny-sd", status="validated")
    text = DEFINITION.replace("steps: 2", "version: winner")
    runner.create(admin, definitions.parse(text))
    client.force_login(admin)
    response = client.post(
        reverse("experiment-canary", args=["views"]), {"arm": "b", "lane": "fast-draft", "percent": 25}
    )
    assert response.status_code == 302 and response["Location"] == reverse("lane-detail", args=["fast-draft"])
    lane = Lane.objects.get(name="fast-draft")
    assert (lane.canary_version, lane.canary_percent) == (v2, 25)
    response = client.post(
        reverse("experiment-canary", args=["views"]), {"arm": "nope", "lane": "fast-draft", "percent": 25}
    )
    assert response.status_code == 302 and Lane.objects.get(name="fast-draft").canary_percent == 25


def test_pause_resume_and_cancel_from_the_page(client, admin, demo_lanes, settings):
    settings.ADMISSION_CONTROL = False
    runner.create(admin, definitions.parse(DEFINITION))
    client.force_login(admin)
    url = lambda action: reverse("experiment-control", args=["views", action])  # noqa: E731
    state = lambda: Experiment.objects.get(name="views").state  # noqa: E731
    client.post(url("pause"))
    assert state() == "paused"
    page = client.post(url("pause"), follow=True)
    assert "views is paused: cannot pause it." in page.text
    client.post(url("resume"))
    assert state() == "running"
    runner.pump(Experiment.objects.get(name="views").pk)
    page = client.post(url("cancel"), follow=True)
    assert state() == "cancelled" and "views cancelled, and 8 waiting jobs with it." in page.text
    assert "cannot cancel it" in client.post(url("cancel"), follow=True).text
    assert client.post(url("explode")).status_code == 404
    from lanes.models import AuditEvent

    assert list(AuditEvent.objects.order_by("at", "id").values_list("action", "actor_name", "target")) == [
        ("experiment.start", "ada", "views"), ("experiment.pause", "ada", "views"),
        ("experiment.resume", "ada", "views"), ("experiment.cancel", "ada", "views"),
    ]  # fmt: skip


def test_on_a_cpu_the_summary_shows_cpu_seconds_and_each_arms_own_rss_rise(client, admin, demo_lanes):
    experiment = runner.create(admin, definitions.parse(DEFINITION))
    finish(experiment, {"a": 1.0, "b": 0.5})
    jobs = Job.objects.filter(experiment_cell__experiment=experiment)
    jobs.filter(experiment_cell__arm__name="a").update(device="cpu", gpu_seconds=1.0, peak_memory_bytes=50 << 20)
    jobs.filter(experiment_cell__arm__name="b").update(device="cpu", gpu_seconds=0.5, peak_memory_bytes=20 << 20)
    by_arm = {s.arm: s for s in results.summarize(results.cell_results(experiment), ["a", "b"])}
    assert (by_arm["a"].gpu_s_per_image, by_arm["b"].gpu_s_per_image) == (1.0, 0.5)
    assert by_arm["a"].peak_memory_bytes == 50 << 20 and by_arm["b"].peak_memory_bytes == 20 << 20
    assert {s.device_seconds_label for s in by_arm.values()} == {"CPU-s"}
    client.force_login(admin)
    page = client.get(reverse("experiment-detail", args=["views"]))
    assert "1.000 <small>CPU-s</small>" in page.text and "0.500 <small>CPU-s</small>" in page.text
    assert "50.0\xa0MB <small>RSS rise</small>" in page.text and "20.0\xa0MB <small>RSS rise</small>" in page.text
    jobs.update(device="cuda")
    page = client.get(reverse("experiment-detail", args=["views"]))
    assert "<small>GPU-s</small>" in page.text and "RSS rise" not in page.text
