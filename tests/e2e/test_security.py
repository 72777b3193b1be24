"""In Chromium, under the Content-Security-Policy: every page of each role renders with no violation
(scripts, styles, sockets, images from Laneway itself), and a confirm dialog still guards a retire."""

import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import expect

from accounts.models import Team
from lanes.actions import submit_brief
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parents[2]
PAGES = [
    "/jobs/", "/briefs/new/", "/review/", "/experiments/", "/account/tokens/", "/dashboard/", "/lanes/",
    "/lanes/fast-draft/", "/policy/", "/audit/", "/webhooks/", "/versions/", "/versions/demo-tiny-sd-v1/",
    "/api/v1/docs",
]  # fmt: skip
WATCH = """window.__csp = []; document.addEventListener("securitypolicyviolation",
  e => window.__csp.push(e.violatedDirective + " " + e.blockedURI));"""


def test_every_page_renders_with_no_content_security_policy_violation(live_server_url, page, demo_lanes):
    admin = make_user("ada", "admin", Team.objects.create(name="studio"))
    job = submit_brief(admin, prompt="a poster", intent="draft")
    messages = []
    page.on("console", lambda message: messages.append(message.text))
    page.add_init_script(WATCH)
    page.goto(f"{live_server_url}/login/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada-password-1")
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server_url}/jobs/**")
    problems = []
    for path in [*PAGES, f"/jobs/{job.pk}/"]:
        response = page.goto(live_server_url + path)
        assert response.status == 200, path
        assert "script-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("networkidle")
        problems += [f"{path}: {v}" for v in page.evaluate("window.__csp")]
    problems += [m for m in messages if "Content Security Policy" in m]
    assert problems == []


def test_a_retire_still_asks_first_without_inline_script(live_server_url, page, demo_lanes):
    from lanes.demo import seed_demo_v2
    from lanes.models import ModelVersion

    make_user("ada", "admin")
    version = seed_demo_v2()
    page.goto(f"{live_server_url}/login/?next=/versions/{version.name}/")
    page.fill("input[name=username]", "ada")
    page.fill("input[name=password]", "ada-password-1")
    page.click("button[type=submit]")
    asked, answer = [], {"accept": False}
    page.on("dialog", lambda d: (asked.append(d.message), d.accept() if answer["accept"] else d.dismiss()))
    form = page.locator("form[data-confirm]")
    expect(form).to_have_count(1)
    form.locator("button[type=submit]").click()
    assert asked == [f"Retire {version.name}?"]
    assert ModelVersion.objects.get(pk=version.pk).status != "retired"  # dismissed: nothing was sent
    answer["accept"] = True
    form.locator("button[type=submit]").click()
    page.wait_for_load_state("networkidle")
    assert ModelVersion.objects.get(pk=version.pk).status == "retired"


def test_check_deploy_is_clean_under_the_documented_production_settings(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin", "LANEWAY_VAR_DIR": str(tmp_path), "SECRET_KEY": "k" * 20 + "x7Qp-" * 10,
        "ALLOWED_HOSTS": "laneway.example.com", "LANEWAY_HTTPS": "true", "HSTS_PRELOAD": "true",
    }  # fmt: skip
    check = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no issues" in check.stdout
