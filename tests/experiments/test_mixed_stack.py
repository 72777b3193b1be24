"""An A/B experiment across the mixed stack: an SD 1.x lane, an SDXL lane and a hosted-engine lane,
side by side on identical prompts and seeds, on real workers (the hosted one against a scripted
OpenAI Images API on 127.0.0.1)."""

import pytest

from experiments import definition as definitions
from experiments import results, runner
from experiments.models import Experiment
from lanes.models import Lane, ModelVersion
from tests.conftest import make_user, running_worker, wait_until
from tests.lanes.images_api import PRICE, register

pytestmark = pytest.mark.django_db(transaction=True)

MIXED = """\
name: mixed-stack
samples: 2
seed: 7
prompts:
  - A lighthouse poster
  - {prompt: 'A bakery sign saying "FRESH BREAD"', expected_text: FRESH BREAD}
arms:
  - {name: sd15, lane: final-render}
  - {name: sdxl, lane: sdxl}
  - {name: hosted, lane: hosted}
"""


def test_sd15_sdxl_and_a_hosted_engine_are_compared_side_by_side(demo_lanes, images_api, api_key):
    version = register(images_api.base_url)
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.VALIDATED)
    Lane.objects.filter(name="hosted").update(active_version=version)
    admin = make_user("ada", "admin")
    with running_worker():
        experiment = runner.create(admin, definitions.parse(MIXED))
        wait_until(
            lambda: Experiment.objects.get(pk=experiment.pk).state != Experiment.State.RUNNING,
            timeout=120,
            what="the experiment still running",
        )
    rows = results.cell_results(experiment)
    assert len(rows) == 12 and {r.state for r in rows} == {"succeeded"}, [(r.arm, r.state) for r in rows]
    families = {r.arm: ModelVersion.objects.get(jobs__pk=r.job_id).family for r in rows}
    assert families == {"sd15": "sd15", "sdxl": "sdxl", "hosted": "http"}
    summary = {s.arm: s for s in results.summarize(rows, ["sd15", "sdxl", "hosted"])}
    assert summary["hosted"].succeeded == 4 and summary["hosted"].cost_per_image == pytest.approx(PRICE)
    assert summary["sd15"].cost_per_image == 0.0  # CPU time is free
    # Every hosted cell asked the API once, with the experiment's prompt.
    asked = sorted(request.json["prompt"] for request in images_api.received)
    assert asked == sorted(["A lighthouse poster"] * 2 + ['A bakery sign saying "FRESH BREAD"'] * 2)
    # Paired against SD 1.x on the same prompts and seeds (4 pairs: too few to call a difference).
    run_time = results.compare(rows, "sd15", "hosted")[0]
    assert run_time.n == 4 and "too few pairs to tell (n=4; need 6)" in run_time.sentence
