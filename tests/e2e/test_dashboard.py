import pytest
from playwright.sync_api import expect

from telemetry.models import GpuSample
from telemetry.sampling import SamplingLoop

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_dashboard_chart_moves_when_a_sample_is_pushed(live_server_url, page, ops_user, demo_lanes):
    loop = SamplingLoop()  # the worker's sampling code; here it reads the CPU (no NVIDIA driver)
    loop.tick("host:7", lambda: 0)
    page.goto(f"{live_server_url}/login/?next=/dashboard/")
    page.fill("input[name=username]", "olive")
    page.fill("input[name=password]", "olive-password-1")
    page.click("button[type=submit]")
    card = page.locator('[data-series="host:7|cpu"]')
    expect(card).to_have_attribute("data-points", "1")
    expect(page.locator("#telemetry-status")).to_have_text("live")
    expect(card.locator("canvas")).to_have_count(1)
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    loop.tick("host:7", lambda: 1)
    expect(card).to_have_attribute("data-points", "2")
    loop.tick("other:9", lambda: 0)  # a worker the page has not seen gets a card of its own
    expect(page.locator('[data-series="other:9|cpu"]')).to_have_attribute("data-points", "1")
    assert navigations == []
    assert GpuSample.objects.count() == 3
