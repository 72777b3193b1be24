import pytest
from playwright.sync_api import expect

from experiments.models import Experiment
from lanes.models import Job
from tests.conftest import make_user, running_worker

pytestmark = pytest.mark.django_db(transaction=True)

DEFINITION = """name: browser
samples: 2
prompts: [A lighthouse poster]
arms:
  - {name: four-steps, lane: fast-draft}
  - {name: two-steps, lane: fast-draft, steps: 2}
"""


def test_an_admin_starts_an_experiment_and_watches_its_grid_fill_in(demo_lanes, live_server_url, page):
    make_user("ada", "admin")
    page.goto(f"{live_server_url}/login/?next=/experiments/new/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada-password-1")
    page.click("button[type=submit]")
    page.fill("textarea[name=definition]", "name: broken\narms: [\n")
    page.click("button:has-text('Start experiment')")
    expect(page.locator("#experiment-errors")).to_contain_text("not valid YAML")
    assert not Experiment.objects.exists()

    page.fill("textarea[name=definition]", DEFINITION)
    page.fill("textarea[name=prompt_lines]", "A bakery sign || FRESH BREAD")
    with running_worker():
        page.click("button:has-text('Start experiment')")
        expect(page.get_by_role("heading", name="browser")).to_be_visible()
        # The results refresh themselves until every cell has its image.
        expect(page.locator("#experiment-state")).to_have_text("finished", timeout=60_000)
    expect(page.locator("#experiment-progress")).to_have_text("8 / 8 jobs done")
    expect(page.locator("td.cell img")).to_have_count(8)
    expect(page.locator(".prompt-grid")).to_have_count(2)
    expect(page.locator("#comparison-two-steps")).to_contain_text("too few pairs to tell (n=4; need 6)")
    assert Job.objects.filter(experiment_cell__experiment__name="browser", priority="background").count() == 8
