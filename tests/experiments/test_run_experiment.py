import io
import re

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from experiments.models import Experiment
from experiments.paired import MIN_PAIRS
from lanes.demo import seed_demo_v2
from lanes.models import Job, ModelVersion
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


def test_the_readmes_example_gives_every_comparison_figures(demo_lanes):
    """examples/sale-posters.yaml, the README's A/B example, is big enough for the paired statistics."""
    example = settings.BASE_DIR / "examples" / "sale-posters.yaml"
    yaml_lines = [line for line in example.read_text().splitlines() if not line.startswith("#")]
    readme = (settings.BASE_DIR / "README.md").read_text()
    assert "```yaml\n" + "\n".join(yaml_lines) + "\n```" in readme  # the README shows this very file
    make_user("ada", "admin")
    # As `make run`'s seed_demo leaves it: the second demo checkpoint, validated.
    ModelVersion.objects.filter(pk=seed_demo_v2().pk).update(status=ModelVersion.Status.VALIDATED)
    out = io.StringIO()
    with running_worker():
        call_command("run_experiment", str(example), "--timeout", "300", stdout=out, stderr=io.StringIO())
    text = out.getvalue()
    assert "too few pairs" not in text
    # Each comparison of candidate against current has figures, on all 2 prompts × 4 seeds.
    for metric in ("run time", "pass rate", "edit distance"):
        line = re.search(rf"^  {metric}: .*$", text, re.MULTILINE)
        assert line and "95% CI" in line[0] and f"n={2 * 4})" in line[0] and 2 * 4 >= MIN_PAIRS, text
    assert Job.objects.filter(experiment_cell__experiment__name="sale-posters", state="succeeded").count() == 16
