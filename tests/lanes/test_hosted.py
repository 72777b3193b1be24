"""Hosted engines (lanes/hosted.py): the OpenAI Images protocol against a scripted API on 127.0.0.1,
directly for each failure mode, and through the real job pipeline and validation on a hosted worker."""

import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from PIL import Image

from lanes import hosted, registry
from lanes.actions import submit_brief
from lanes.engines import LoraRef
from lanes.management.commands.serve_images_api import ImagesAPIHandler
from lanes.models import Artifact, Job, Lane, ModelVersion, endpoint_hash
from tests.conftest import running_worker, wait_for_job, wait_until
from tests.lanes.images_api import KEY, KEY_ENV, PRICE, prompt_colour, register, render


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    """Retries as in production, with pauses short enough for tests."""
    monkeypatch.setattr(hosted, "BACKOFF_BASE_SECONDS", 0.01)
    monkeypatch.setattr(hosted, "BACKOFF_MAX_SECONDS", 0.05)


@pytest.fixture
def version(db, images_api, api_key):
    return register(images_api.base_url)


# The engine, directly.


def test_it_posts_an_openai_images_request_and_returns_the_image(version, images_api):
    steps: list[int] = []
    result = render(version, on_step=steps.append)

    assert result.image.mode == "RGB" and result.image.size == (320, 192)
    assert result.image.getpixel((10, 10)) == prompt_colour("A red kite over the harbour")
    assert result.api_cost == PRICE and result.gpu_seconds == 0.0 and result.peak_memory_bytes == 0
    assert result.run_seconds > 0
    assert steps == [1]  # no progress over the protocol: every step once the image is there
    (request,) = images_api.received
    assert request.path == "/v1/images/generations"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    # Seeds, steps and guidance have no place in the protocol.
    assert request.json == {
        "model": "test-image-1",
        "prompt": "A red kite over the harbour",
        "n": 1,
        "size": "320x192",
        "response_format": "b64_json",
    }


@pytest.mark.parametrize("value", [None, "", "   "])
def test_an_unset_key_variable_is_named_and_nothing_is_sent(version, images_api, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(KEY_ENV)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    with pytest.raises(hosted.HostedError, match=f"environment variable {KEY_ENV} .*is not set"):
        render(version)
    assert images_api.received == []


def test_a_key_that_cannot_go_in_a_header_is_refused_without_showing_it(version, images_api, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-secret\nInjected: yes")
    with pytest.raises(hosted.HostedError, match=f"{KEY_ENV} does not hold a usable API key") as caught:
        render(version)
    assert "sk-secret" not in str(caught.value)
    assert images_api.received == []


def test_a_rate_limit_is_retried_after_the_delay_the_api_asks_for(version, images_api, caplog):
    images_api.play("429", "ok")
    images_api.retry_after = "0.3"
    with caplog.at_level(logging.WARNING, logger="lanes.hosted"):
        result = render(version)

    assert result.image.size == (320, 192)
    first, second = images_api.received
    assert second.at - first.at >= 0.3  # Retry-After, not the 0.01 s backoff
    assert result.run_seconds >= 0.3  # the whole call, retries included
    (warning,) = [r for r in caplog.records if r.name == "lanes.hosted"]
    assert warning.levelno == logging.WARNING
    assert "HTTP 429" in warning.getMessage() and "retrying in 0.30s (attempt 2 of 4)" in warning.getMessage()


def test_a_retry_after_past_the_cap_waits_only_the_cap(version, images_api, monkeypatch):
    monkeypatch.setattr(hosted, "RETRY_AFTER_MAX_SECONDS", 0.05)
    images_api.play("429", "ok")
    images_api.retry_after = "3600"
    started = time.monotonic()
    render(version)
    assert time.monotonic() - started < 3
    assert len(images_api.received) == 2


def test_retry_after_is_read_as_seconds_or_an_http_date():
    def read(value: str):
        return hosted.retry_after(httpx.Headers({"Retry-After": value} if value else {}))

    assert read("2") == 2.0 and read("") is None and read("soon") is None and read("nan") is None
    assert read("-5") == 0.0 and read("86400") == hosted.RETRY_AFTER_MAX_SECONDS
    in_ten = format_datetime(datetime.now(UTC) + timedelta(seconds=10), usegmt=True)
    assert 8 <= read(in_ten) <= 10


def test_a_server_error_is_retried(version, images_api, caplog):
    images_api.play("500", "ok")
    with caplog.at_level(logging.WARNING, logger="lanes.hosted"):
        result = render(version, prompt="Second time lucky")
    assert result.image.getpixel((0, 0)) == prompt_colour("Second time lucky")
    assert len(images_api.received) == 2
    assert any("HTTP 500" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_an_api_that_keeps_failing_is_given_up_with_backoff_naming_the_last_status(version, images_api, monkeypatch):
    monkeypatch.setattr(hosted, "BACKOFF_BASE_SECONDS", 0.1)
    monkeypatch.setattr(hosted, "BACKOFF_MAX_SECONDS", 1.0)
    images_api.play("500")
    with pytest.raises(hosted.HostedError) as caught:
        render(version)

    message = str(caught.value)
    assert message.startswith(f"{images_api.base_url}/images/generations failed 4 times")
    assert "HTTP 500 Internal Server Error: The server had an error processing your request." in message
    times = [r.at for r in images_api.received]
    assert len(times) == hosted.MAX_ATTEMPTS == 4
    pauses = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert pauses[0] >= 0.1 and pauses[1] >= 0.2 and pauses[2] >= 0.4  # exponential


def test_a_request_that_times_out_is_retried(db, images_api, api_key):
    version = register(images_api.base_url, timeout_seconds=0.3)
    images_api.play("slow", "ok")
    result = render(version)
    assert result.image.size == (320, 192) and len(images_api.received) == 2


def test_an_api_that_never_answers_in_time_fails_the_call(db, images_api, api_key, monkeypatch):
    monkeypatch.setattr(hosted, "MAX_ATTEMPTS", 2)
    version = register(images_api.base_url, timeout_seconds=0.2)
    images_api.play("slow")
    started = time.monotonic()
    with pytest.raises(hosted.HostedError, match=r"failed 2 times; the last attempt: no answer within 0.2s"):
        render(version)
    assert time.monotonic() - started < 4 and len(images_api.received) == 2


def test_an_api_that_is_not_there_is_retried_then_named(db, api_key, monkeypatch):
    monkeypatch.setattr(hosted, "MAX_ATTEMPTS", 2)
    with ThreadingHTTPServer(("127.0.0.1", 0), ImagesAPIHandler) as closed:
        port = closed.server_port  # bound, then closed: nothing listens there
    version = register(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(hosted.HostedError, match=rf"127.0.0.1:{port}/v1/images/generations failed 2 times.*Connect"):
        render(version)


def test_a_refused_key_fails_at_once_with_the_apis_message(version, images_api):
    images_api.play("401")
    with pytest.raises(hosted.HostedError) as caught:
        render(version)

    message = str(caught.value)
    assert "answered HTTP 401 Unauthorized: Incorrect API key provided: sk-wr***ng." in message
    assert f"check the API key in {KEY_ENV}" in message
    assert KEY not in message
    assert len(images_api.received) == 1  # not retried


UNUSABLE = [
    ("malformed-json", "its body is not JSON"),
    ("no-data", 'its JSON has no "data" list holding an image'),
    ("url-instead", 'data[0] has no "b64_json" string (it sent a URL'),
    ("bad-base64", "data[0].b64_json is not valid base64"),
    ("not-an-image", "data[0].b64_json is not an image (UnidentifiedImageError"),
    ("huge-image", "its image is 5000x8, over the 4096 pixels allowed a side"),
    ("oversized", "a body over the 65,536 bytes allowed (it declared 262,144)"),
    ("oversized-undeclared", "a body over the 65,536 bytes allowed (reading stopped there)"),
]


@pytest.mark.parametrize("behaviour,complaint", UNUSABLE, ids=[b for b, _ in UNUSABLE])
def test_an_unusable_answer_fails_saying_what_is_wrong(version, images_api, monkeypatch, behaviour, complaint):
    monkeypatch.setattr(hosted, "MAX_BODY_BYTES", 64 * 1024)
    images_api.play(behaviour)
    with pytest.raises(hosted.HostedError) as caught:
        render(version)
    assert complaint in str(caught.value)
    assert str(caught.value).startswith(images_api.base_url)
    assert len(images_api.received) == 1  # the answer is wrong, not unlucky: no retry


def test_lora_adapters_are_refused(version, images_api):
    with pytest.raises(hosted.HostedError, match="hosted engines take no LoRA adapters"):
        render(version, adapters=[LoraRef("a1_abc", Path("style.safetensors"), 0.8)])
    assert images_api.received == []


def test_requests_in_flight_never_exceed_the_versions_max_concurrency_and_a_new_limit_applies(db, images_api, api_key):
    version = register(images_api.base_url, max_concurrency=2)
    images_api.delay_seconds = 0.25

    def burst(version: ModelVersion, n: int) -> list:
        results: list = []
        threads = [
            threading.Thread(target=lambda i=i: results.append(render(version, prompt=f"p{i}"))) for i in range(n)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    assert len(burst(version, 6)) == 6
    assert images_api.peak_in_flight == 2

    ModelVersion.objects.filter(pk=version.pk).update(max_concurrency=3)
    images_api.peak_in_flight = 0
    assert len(burst(ModelVersion.objects.get(pk=version.pk), 7)) == 7
    assert images_api.peak_in_flight == 3
    assert hosted.gate(version).in_flight == 0


# Validation of a hosted version.


def test_validation_smoke_renders_through_the_api_and_validates_the_version(version, images_api, media_root):
    registered_hash = ModelVersion.objects.get(pk=version.pk).content_hash
    assert registered_hash == endpoint_hash(images_api.base_url, "test-image-1")  # at registration: no files
    assert registry.run_validation(version, "here") is True

    version.refresh_from_db()
    assert version.status == ModelVersion.Status.VALIDATED and version.validation_error == ""
    assert version.content_hash == registered_hash and version.hash_bytes_total == 0  # nothing to read
    with Image.open(Path(media_root) / version.smoke_image) as smoke:
        assert smoke.size == (1024, 1024)
        assert smoke.convert("RGB").getpixel((0, 0)) == prompt_colour(registry.SMOKE_PROMPT)
    (request,) = images_api.received
    assert request.json["size"] == "1024x1024" and request.json["prompt"] == registry.SMOKE_PROMPT


def test_validation_fails_the_version_when_its_key_variable_is_unset_on_the_worker(version, images_api, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    assert registry.run_validation(version, "here") is False

    version.refresh_from_db()
    assert version.status == ModelVersion.Status.INVALID
    assert version.validation_error.startswith(f"HostedError: The environment variable {KEY_ENV} ")
    assert not version.smoke_image
    assert images_api.received == []


# Through the job pipeline, on a worker that consumes only the hosted queue (as `make run`'s hosted process).


@pytest.fixture
def hosted_worker(transactional_db, demo_lanes):
    with running_worker(queues=[settings.HOSTED_QUEUE]) as controller:
        yield controller


@pytest.fixture
def hosted_lane(transactional_db, demo_lanes, images_api, api_key) -> Lane:
    version = register(images_api.base_url)
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.VALIDATED)
    lane = Lane.objects.get(name="hosted")
    lane.active_version = version
    lane.save()
    return lane


@pytest.mark.django_db(transaction=True)
def test_a_brief_on_a_hosted_lane_is_rendered_by_the_api_and_stored(
    hosted_lane, hosted_worker, creative, images_api, media_root
):
    job = wait_for_job(submit_brief(creative, prompt="A lighthouse at dusk", intent="hosted", seed=9).pk)

    assert job.state == Job.State.SUCCEEDED, job.error
    assert job.lane == hosted_lane and job.model_version == hosted_lane.active_version
    assert job.api_cost == PRICE and job.gpu_seconds == 0.0 and job.run_seconds > 0
    artifact = job.artifacts.get()
    assert artifact.stage == Artifact.Stage.FINAL
    with Image.open(Path(media_root) / artifact.path) as stored:
        assert stored.format == "PNG" and stored.size == (256, 256)
        assert stored.convert("RGB").getpixel((128, 128)) == prompt_colour("A lighthouse at dusk")
    (request,) = images_api.received
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json["model"] == "test-image-1" and request.json["size"] == "256x256"


@pytest.mark.django_db(transaction=True)
def test_a_refusing_or_garbled_api_fails_the_job_and_the_worker_serves_the_next(
    hosted_lane, hosted_worker, creative, images_api
):
    images_api.play("401")
    refused = wait_for_job(submit_brief(creative, prompt="Refused", intent="hosted").pk)
    assert refused.state == Job.State.FAILED
    assert refused.error.startswith("HostedError: ") and "HTTP 401 Unauthorized: Incorrect API key" in refused.error
    assert not refused.artifacts.exists() and refused.api_cost == 0.0

    images_api.play("malformed-json")
    garbled = wait_for_job(submit_brief(creative, prompt="Garbled", intent="hosted").pk)
    assert garbled.state == Job.State.FAILED and "its body is not JSON" in garbled.error

    images_api.play("ok")
    ok = wait_for_job(submit_brief(creative, prompt="Still serving", intent="hosted").pk)
    assert ok.state == Job.State.SUCCEEDED, ok.error
    assert ok.worker == refused.worker and ok.artifacts.count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_registered_hosted_engine_is_validated_on_the_hosted_queue(hosted_worker, images_api, api_key):
    version = register(images_api.base_url, name="images-api-v2", validate=True)

    def settled():
        version.refresh_from_db()
        return version.status not in (ModelVersion.Status.STAGED, ModelVersion.Status.VALIDATING)

    wait_until(settled, 30, "the hosted version's validation")
    assert version.status == ModelVersion.Status.VALIDATED, version.validation_error
    assert version.smoke_image and version.validated_on
    assert [r.json["size"] for r in images_api.received] == ["1024x1024"]
