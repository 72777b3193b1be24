"""/healthz: the database and the broker, each reached for real (a closed port is a broker that is down)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from console.celery import app

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.django_db
def test_it_answers_200_with_both_checks_when_database_and_broker_answer(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert "no-cache" in response["Cache-Control"]


@pytest.mark.django_db
@pytest.mark.parametrize("scheme", ["redis://127.0.0.1:{port}/0", "amqp://guest:guest@127.0.0.1:{port}//"])
def test_it_answers_503_naming_the_broker_when_the_broker_port_is_closed(client, monkeypatch, scheme):
    # The URL producers connect to (broker_url unless set apart); restored to the real one afterwards.
    monkeypatch.setattr(app.conf, "broker_write_url", scheme.format(port=closed_port()))
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["failed"] == ["broker"]
    assert body["checks"]["database"]["ok"] and not body["checks"]["broker"]["ok"]
    assert body["checks"]["broker"]["error"]
    assert body["checks"]["broker"]["ms"] < 1000 * (settings.HEALTHZ_TIMEOUT_SECONDS + 3)


def test_it_answers_503_naming_the_database_when_postgresql_does_not_answer():
    """A separate process whose DATABASE_URL points at a closed port (no test database is involved)."""
    code = (
        "import django, json; django.setup(); from django.test import Client;"
        "r = Client().get('/healthz', HTTP_HOST='localhost'); print(json.dumps({'status': r.status_code, 'body': r.json()}))"
    )
    env = {
        **os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:{closed_port()}/laneway",
        "REDIS_URL": settings.REDIS_URL, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "DB_CONNECT_TIMEOUT": "2", "DB_POOL_TIMEOUT": "2",
    }  # fmt: skip
    env.pop("LANEWAY_USE_TEST_DATABASE", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == 503
    assert result["body"]["failed"] == ["database"]
    assert result["body"]["checks"]["broker"]["ok"]
    # The connection pool (DB_POOL, on by default) reports only that it got no connection in time.
    assert "connection" in result["body"]["checks"]["database"]["error"].lower()
    assert result["body"]["checks"]["database"]["ms"] < 10_000
