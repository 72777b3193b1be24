import pytest
from django.urls import reverse

from lanes.models import Job, Lane
from tests.conftest import waiting_tasks

URL = reverse("brief-new")
GOOD = {"prompt": "A winter coat poster", "intent": "draft"}


@pytest.fixture
def submit(creative_client, demo_lanes, django_capture_on_commit_callbacks):
    def post(htmx: bool = False, **overrides):
        data = {**GOOD, **overrides}
        headers = {"HX-Request": "true"} if htmx else {}
        with django_capture_on_commit_callbacks(execute=True):
            return creative_client.post(URL, data, headers=headers)

    return post


def test_anonymous_is_sent_to_login(client, db):
    response = client.get(URL)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert client.post(URL, GOOD).status_code == 302
    assert Job.objects.count() == 0


def test_the_form_lists_the_intents(creative_client, demo_lanes):
    response = creative_client.get(URL)
    assert response.status_code == 200
    for intent in ("draft", "final", "preview", "fallback"):
        assert f'value="{intent}"' in response.text


def test_a_good_brief_becomes_a_queued_job_routed_by_intent(submit, creative):
    response = submit(intent="final", expected_text="SALE 50%")
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"?new={job.pk}")
    assert job.owner == creative and job.state == Job.State.QUEUED
    assert job.lane.name == "final-render" and job.priority == "critical"
    assert job.model_version == job.lane.active_version
    assert (job.steps, job.width, job.height) == (8, 128, 128)  # the lane's defaults
    assert job.expected_text == "SALE 50%"
    assert job.dispatched_at == job.submitted_at  # stamped at admission: no write after the send
    assert ("lanes.tasks.run_job", (job.pk,)) in waiting_tasks(job.lane.queue)  # sent to the broker after commit


def test_an_htmx_submit_redirects_the_client(submit):
    response = submit(htmx=True)
    assert response.status_code == 200
    assert response["HX-Redirect"].startswith(reverse("job-list"))


@pytest.mark.parametrize(
    "overrides, field, message",
    [
        ({"prompt": ""}, "prompt", "This field is required."),
        ({"prompt": "   "}, "prompt", "This field is required."),
        ({"prompt": "x" * 1001}, "prompt", "at most 1000 characters"),
        ({"steps": "40"}, "steps", "Steps must be between 1 and 12 on lane fast-draft."),
        ({"steps": "0"}, "steps", "greater than or equal to 1"),
        ({"guidance": "25"}, "guidance", "Guidance must be between 0 and 20"),
        ({"width": "100"}, "width", "Width must be a multiple of 8 (got 100)."),
        ({"height": "1024"}, "height", "Height must be between 32 and 256 on lane fast-draft."),
        ({"width": "abc"}, "width", "Enter a whole number."),
        ({"seed": "-1"}, "seed", "greater than or equal to 0"),
        ({"intent": "poster"}, "intent", "Select a valid choice."),
        ({"expected_text": "y" * 201}, "expected_text", "at most 200 characters"),
    ],
)
def test_a_bad_input_gets_a_message_next_to_its_field_and_no_job(submit, overrides, field, message):
    for htmx in (False, True):
        response = submit(htmx=htmx, **overrides)
        assert response.status_code == 400
        assert f'id="{field}-error"' in response.text
        assert message in response.text
    assert Job.objects.count() == 0


def test_the_htmx_error_response_is_only_the_form(submit):
    response = submit(htmx=True, prompt="")
    assert response.text.lstrip().startswith('<form id="brief-form"')


def test_a_disabled_lane_sends_briefs_down_its_fallback_chain(submit):
    Lane.objects.filter(name="fast-draft").update(enabled=False)
    response = submit(steps="10")
    assert response.status_code == 302
    job = Job.objects.get()
    assert job.requested_lane.name == "fast-draft" and job.lane.name == "fallback"
    assert job.admission == Job.Admission.REROUTED
    assert "lane fast-draft disabled → fallback fallback" in job.admission_reason
    assert job.steps == 8  # clamped into the fallback lane's bounds


def test_a_disabled_lane_with_no_enabled_fallback_refuses_briefs(submit):
    Lane.objects.filter(name__in=["fast-draft", "fallback"]).update(enabled=False)
    response = submit()
    assert response.status_code == 400
    assert "Lane &#x27;fast-draft&#x27; is disabled and no enabled fallback lane can take its briefs." in response.text
    assert Job.objects.count() == 0


def test_a_brief_picks_a_lora_its_lane_offers_and_a_wrong_pick_is_named(submit, creative_client):
    from pathlib import Path

    from django.conf import settings

    from lanes import adapters, registry
    from lanes.checkpoints import build_demo_lora
    from lanes.models import ModelVersion
    from tests.conftest import make_user

    target = Path(settings.MODELS_ROOT) / "loras" / "sd15"
    if not (target / "pytorch_lora_weights.safetensors").exists():
        build_demo_lora(Path(settings.MODELS_ROOT) / "demo-tiny-sd", target)
    admin = make_user("ada", "admin")
    version = ModelVersion.objects.get(name="demo-tiny-sd-v1")
    adapter = adapters.register_adapter(
        admin, version=version, name="neon", location="loras/sd15/pytorch_lora_weights.safetensors", validate=False
    )
    registry.validate_adapter(adapter.pk)
    adapter.refresh_from_db()
    adapters.link(Lane.objects.get(name="fast-draft"), adapter, admin, weight=0.6)

    page = creative_client.get(URL)
    assert 'value="neon"' in page.text and "neon (on fast-draft)" in page.text
    refused = submit(intent="preview", adapters=["neon"])
    assert refused.status_code == 400 and "Lane preview does not offer the LoRA adapter(s) neon." in refused.text
    assert submit(intent="draft", adapters=["neon"]).status_code == 302
    assert Job.objects.get().adapters == [{"id": adapter.pk, "name": "neon", "weight": 0.6}]


def test_the_form_shows_each_intents_lane_bounds_before_anything_is_refused(creative_client, demo_lanes):
    page = creative_client.get(reverse("brief-new")).text
    shown = '<p class="muted lane-bounds" data-intent="draft">On lane fast-draft: steps 1–12 (default 4)'
    assert shown in page and "width and height 32–256 in multiples of 8 (default 64×64)" in page
    assert '<p class="muted lane-bounds" data-intent="final" hidden>On lane final-render: steps 1–50' in page
    # After a submit, the bounds shown are those of the intent the user picked.
    answer = creative_client.post(reverse("brief-new"), {"prompt": "x", "intent": "final", "steps": "999"}).text
    assert '<p class="muted lane-bounds" data-intent="final">On lane final-render' in answer
    assert '<p class="muted lane-bounds" data-intent="draft" hidden>' in answer
