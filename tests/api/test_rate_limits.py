"""Rate limits hold across web processes: two real uvicorn processes share one count (the cache)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings

from accounts.models import ApiToken

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_web_processes(transactional_db):
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "LANEWAY_USE_TEST_DATABASE": "1",
        "REDIS_URL": settings.REDIS_URL,
        "API_RATE_LIMIT": "10",
        "API_RATE_LIMIT_PER_USER": "15",
        "API_RATE_WINDOW_SECONDS": "60",
    }
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "console.asgi:application",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
        )  # fmt: skip
        for port in ports
    ]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        deadline = time.monotonic() + 30
        for url in urls:
            while True:
                try:
                    httpx.get(url + "/api/v1/openapi.json", timeout=1)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the web processes did not start") from None
                    time.sleep(0.2)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


def test_the_limit_is_one_count_across_two_web_processes(two_web_processes, django_user_model):
    from tests.conftest import make_user

    _, secret = ApiToken.issue(make_user("olive", "ops"), "ci")
    headers = {"Authorization": f"Bearer {secret}"}
    while time.time() % 60 > 50:  # windows are aligned to the clock: start well inside one
        time.sleep(0.5)
    answers = [httpx.get(two_web_processes[i % 2] + "/api/v1/fleet/workers", headers=headers) for i in range(12)]
    assert [a.status_code for a in answers] == [200] * 10 + [429] * 2
    assert [a.headers["RateLimit-Remaining"] for a in answers[:10]] == [str(n) for n in range(9, -1, -1)]
    refused = answers[-1]
    assert refused.headers["RateLimit-Limit"] == "10" and refused.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["Content-Type"] == "application/problem+json" and refused.json()["status"] == 429
    # Another token of the same user has its own count, but the user's count (15) is shared.
    _, other = ApiToken.issue(django_user_model.objects.get(username="olive"), "other")
    more = [
        httpx.get(two_web_processes[i % 2] + "/api/v1/fleet/workers", headers={"Authorization": f"Bearer {other}"})
        for i in range(4)
    ]
    assert [a.status_code for a in more] == [200, 200, 200, 429]
    assert more[0].headers["RateLimit-Limit"] == "15" and more[2].headers["RateLimit-Remaining"] == "0"
