import io

import pytest
from django.core.management import CommandError, call_command

from experiments.models import Experiment
from lanes.models import Job
from tests.conftest import make_user, running_worker

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_runs_an_experiment_on_the_workers_and_prints_the_summary(demo_lanes, tmp_path):
    make_user("ada", "admin")
    definition = tmp_path / "exp.yaml"
    definition.write_text(
        "name: cli\nsamples: 6\nprompts: [A poster]\narms:\n"
        "  - {name: four, lane: fast-draft}\n  - {name: two, lane: fast-draft, steps: 2}\n"
    )
    out, err = io.StringIO(), io.StringIO()
    with running_worker():
        call_command("run_experiment", str(definition), "--timeout", "120", stdout=out, stderr=err)
    text = out.getvalue()
    assert "Experiment cli: 12 jobs as background work." in text
    assert "cli: finished" in text and "\nfour " in text and "6/6" in text
    assert "two vs four:" in text and "run time: " in text and "n=6" in text
    assert "12/12" in err.getvalue()  # the progress bar
    assert Job.objects.filter(experiment_cell__experiment__name="cli", state="succeeded").count() == 12


def test_a_bad_file_starts_nothing(demo_lanes, tmp_path):
    make_user("ada", "admin")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprompts: []\narms: [{name: a, lane: fast-draft}]\n")
    with pytest.raises(CommandError, match="nothing was started"):
        call_command("run_experiment", str(bad))
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("run_experiment", str(tmp_path / "missing.yaml"))
    assert not Experiment.objects.exists()
