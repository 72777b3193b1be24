"""Idempotency-Key: a retried create returns the first answer, a reused key with another body is 422,
and concurrent duplicates make exactly one job (threads with their own database connections)."""

import threading

import pytest
from django.db import connection
from django.test import Client

from accounts.models import IdempotencyKey
from experiments.models import Experiment
from lanes.models import Job, Lane

BRIEF = {"prompt": "a poster", "intent": "draft", "seed": 11}


@pytest.mark.django_db
def test_a_repeat_returns_the_first_answer_and_makes_nothing(demo_lanes, callers):
    key = {"Idempotency-Key": "order-1"}
    first = callers["creative"].post("/jobs", BRIEF, headers=key)
    again = callers["creative"].post("/jobs", BRIEF, headers=key)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert Job.objects.count() == 1
    other = callers["creative"].post("/jobs", BRIEF, headers={"Idempotency-Key": "order-2"})
    assert other.json()["id"] != first.json()["id"] and Job.objects.count() == 2


@pytest.mark.django_db
def test_a_key_reused_with_another_body_is_422(demo_lanes, callers):
    key = {"Idempotency-Key": "order-1"}
    callers["creative"].post("/jobs", BRIEF, headers=key)
    refused = callers["creative"].post("/jobs", {**BRIEF, "prompt": "something else"}, headers=key)
    assert refused.status_code == 422 and "different request body" in refused.json()["detail"]
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_keys_belong_to_their_user_and_a_refusal_is_not_kept(demo_lanes, callers):
    key = {"Idempotency-Key": "same"}
    a = callers["creative"].post("/jobs", BRIEF, headers=key).json()
    b = callers["ops"].post("/jobs", BRIEF, headers=key).json()
    assert a["id"] != b["id"]
    Lane.objects.filter(name="fast-draft").update(hard_cap=2, defer_depth=2, fallback=None)
    busy = callers["creative"].post("/jobs", BRIEF, headers={"Idempotency-Key": "later"})
    assert busy.status_code == 429
    assert not IdempotencyKey.objects.filter(key="later").exists()  # a retry after Retry-After tries again
    Job.objects.filter(state__in=("queued", "deferred")).update(state="cancelled")
    assert callers["creative"].post("/jobs", BRIEF, headers={"Idempotency-Key": "later"}).status_code == 202
    assert callers["creative"].post("/jobs", BRIEF, headers={"Idempotency-Key": "x" * 300}).status_code == 400


@pytest.mark.django_db
def test_other_creates_are_idempotent_too(demo_lanes, callers):
    definition = "name: twice\nprompts: [p]\narms:\n  - {name: a, lane: fast-draft}\n  - {name: b, lane: preview}\n"
    key = {"Idempotency-Key": "exp-1"}
    first = callers["admin"].post("/experiments", {"definition": definition}, headers=key)
    again = callers["admin"].post("/experiments", {"definition": definition}, headers=key)
    assert first.status_code == again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert Experiment.objects.filter(name="twice").count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_make_exactly_one_job(demo_lanes, callers):
    secret = callers["creative"].secret
    barrier = threading.Barrier(8)
    answers = []

    def send():
        client = Client()
        barrier.wait()
        try:
            response = client.post(
                "/api/v1/jobs", BRIEF, content_type="application/json",
                HTTP_AUTHORIZATION=f"Bearer {secret}", HTTP_IDEMPOTENCY_KEY="burst-1",
            )  # fmt: skip
            answers.append((response.status_code, response.json().get("id")))
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert Job.objects.count() == 1
    job = Job.objects.get()
    assert answers == [(202, job.pk)] * 8, answers


@pytest.mark.django_db
def test_the_same_json_in_another_key_order_or_spacing_is_the_same_request(demo_lanes, callers):
    key = {"HTTP_AUTHORIZATION": f"Bearer {callers['creative'].secret}", "HTTP_IDEMPOTENCY_KEY": "k"}
    client = callers["creative"].client
    first = client.post(
        "/api/v1/jobs", '{"prompt": "a poster", "intent": "draft"}', content_type="application/json", **key
    )
    again = client.post(
        "/api/v1/jobs", '{"intent":"draft","prompt":"a poster"}', content_type="application/json", **key
    )
    assert first.status_code == again.status_code == 202 and again.json()["id"] == first.json()["id"]


@pytest.mark.django_db
def test_a_brief_refused_by_admission_keeps_its_rejected_job_even_with_a_key(demo_lanes, callers):
    Lane.objects.filter(name="fast-draft").update(hard_cap=1, defer_depth=1, fallback=None)
    callers["creative"].post("/jobs", BRIEF)
    refused = callers["creative"].post("/jobs", {**BRIEF, "seed": 12}, headers={"Idempotency-Key": "busy"})
    assert refused.status_code == 429 and refused["Retry-After"]
    assert Job.objects.filter(state=Job.State.REJECTED, seed=12).count() == 1
    assert not IdempotencyKey.objects.filter(key="busy").exists()
