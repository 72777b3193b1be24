"""Hostile or broken YAML in the routing policy and experiment definitions: a 422 listing the problem,
never a 500, nothing applied, and no document that takes seconds or hundreds of MB to read."""

import time

import pytest

from experiments.models import Experiment
from lanes.models import AuditEvent, Lane

pytestmark = pytest.mark.django_db

POLICY = {
    "nan guidance": "lanes:\n  fast-draft:\n    guidance: .nan\n",
    "inf steps": "lanes:\n  fast-draft:\n    steps: .inf\n",
    "nul description": 'lanes:\n  fast-draft:\n    description: "a\\0b"\n',
    "complex key": "lanes:\n  ? [a, b]\n  : {steps: 4}\n",
    "python tag": "lanes: !!python/name:os.system\n",
    "bad int tag": "lanes:\n  fast-draft:\n    steps: !!int abc\n",
    "bad float tag": "lanes:\n  fast-draft:\n    guidance: !!float abc\n",
    "width off the grid": "lanes:\n  fast-draft:\n    width: 63\n",
    "alias bomb": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
}
EXPERIMENT = {
    "long name": "name: "
    + "n" * 300
    + "\nprompts: [p]\narms: [{name: a, lane: fast-draft}, {name: b, lane: preview}]\n",
    "nul in a prompt": 'name: e1\nprompts: ["a\\0b"]\narms: [{name: a, lane: fast-draft}, {name: b, lane: preview}]\n',
    "huge seed": "name: e2\nprompts: [p]\nseed: 100000000000000000000\narms: [{name: a, lane: fast-draft}, {name: b, lane: preview}]\n",
    "top seed": "name: e3\nprompts: [p]\nseed: 9223372036854775807\nsamples: 2\narms: [{name: a, lane: fast-draft}, {name: b, lane: preview}]\n",
    "inf steps": "name: e4\nprompts: [p]\narms: [{name: a, lane: fast-draft, steps: .inf}, {name: b, lane: preview}]\n",
    "nan steps": "name: e5\nprompts: [p]\narms: [{name: a, lane: fast-draft, steps: .nan}, {name: b, lane: preview}]\n",
    "fractional steps": "name: e6\nprompts: [p]\narms: [{name: a, lane: fast-draft, steps: 2.7}, {name: b, lane: preview}]\n",
    "arm name with markup": "name: e7\nprompts: [p]\narms: [{name: 'a b/<script>', lane: fast-draft}, {name: b, lane: preview}]\n",
    "expected text too long": "name: e8\nprompts: [{prompt: p, expected_text: "
    + "x" * 300
    + "}]\narms: [{name: a, lane: fast-draft}, {name: b, lane: preview}]\n",
    "ten million samples": "name: e9\nprompts: [p]\nsamples: 10000000\narms: [{name: a, lane: fast-draft}, {name: b, lane: preview}]\n",
    "complex key": "name: e10\n? [a]\n: b\nprompts: [p]\narms: [{name: a, lane: fast-draft}, {name: b, lane: preview}]\n",
    "python tag": "name: !!python/name:os.system\nprompts: [p]\narms: [{name: a, lane: fast-draft}, {name: b, lane: preview}]\n",
}


@pytest.mark.parametrize("case", POLICY)
def test_a_hostile_policy_is_a_422_and_changes_nothing(demo_lanes, callers, case):
    before = list(Lane.objects.order_by("name").values())
    started = time.monotonic()
    response = callers["admin"].send("PUT", "/policy", {"yaml": POLICY[case]})
    # Read, not run: a definition that were expanded would take minutes; a loaded machine takes seconds.
    assert time.monotonic() - started < 20, "reading it took too long"
    assert response.status_code == 422, (case, response.status_code, response.content[:300])
    assert response["Content-Type"] == "application/problem+json" and response.json()["errors"]
    assert list(Lane.objects.order_by("name").values()) == before
    assert not AuditEvent.objects.filter(action__startswith="policy").exists()


@pytest.mark.parametrize("case", EXPERIMENT)
def test_a_hostile_experiment_is_a_422_and_creates_nothing(demo_lanes, callers, case):
    started = time.monotonic()
    response = callers["admin"].post("/experiments", {"definition": EXPERIMENT[case]})
    # Read, not run: a definition that were expanded would take minutes; a loaded machine takes seconds.
    assert time.monotonic() - started < 20, "reading it took too long"
    assert response.status_code == 422, (case, response.status_code, response.content[:300])
    assert not Experiment.objects.exists()
