import hashlib
import os
import subprocess
import sys

import pytest
from django.conf import settings as django_settings


def import_settings(**env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    return subprocess.run(
        [sys.executable, "-c", "import console.settings"],
        env={**base, **env},
        capture_output=True,
        text=True,
        cwd=django_settings.BASE_DIR,
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({"DEBUG": "maybe"}, "DEBUG='maybe' is not a boolean"),
        ({"JOB_TIME_LIMIT": "ten"}, "JOB_TIME_LIMIT='ten' is not an integer"),
        ({"JOB_TIME_LIMIT": "1"}, "JOB_TIME_LIMIT=1 must be at least 10"),
        ({"WORKER_HEARTBEAT_SECONDS": "fast"}, "WORKER_HEARTBEAT_SECONDS='fast' is not a number"),
        ({"LANEWAY_DEVICE": "tpu"}, "LANEWAY_DEVICE='tpu' must be one of auto, cpu, cuda"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT='xml' must be one of plain, json"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379' must start with redis://"),
        ({"DATABASE_URL": "nonsense://x"}, "DATABASE_URL is not a valid database URL"),
        (
            {"WEBHOOK_RETRY_SCHEDULE": "5,soon"},
            "WEBHOOK_RETRY_SCHEDULE='5,soon' is not a comma-separated list of seconds",
        ),
        ({"WEBHOOK_RETRY_SCHEDULE": "5,-1"}, "WEBHOOK_RETRY_SCHEDULE='5,-1': delays cannot be negative"),
        ({"WEBHOOK_ALLOWED_HOSTS": "10.0.0.0/40"}, "WEBHOOK_ALLOWED_HOSTS: '10.0.0.0/40' is not a network"),
        ({"WEBHOOK_TIMEOUT_SECONDS": "0"}, "WEBHOOK_TIMEOUT_SECONDS=0.0 must be at least 0.1"),
    ],
)
def test_a_malformed_variable_fails_start_up_naming_it(env, message, tmp_path):
    result = import_settings(LANEWAY_VAR_DIR=str(tmp_path), **env)
    assert result.returncode != 0
    assert message in result.stderr


def test_nothing_set_is_the_embedded_default(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import console.settings as s; "
            "print(s.DATABASES['default']['ENGINE'], s.CELERY_BROKER_URL, s.EMBEDDED_VALKEY)",
        ],
        env={k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
        | {"LANEWAY_VAR_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        cwd=django_settings.BASE_DIR,
    )
    engine, broker, embedded = result.stdout.split()
    assert engine == "django.db.backends.sqlite3"
    assert broker == f"redis+socket://{tmp_path}/valkey.sock"
    assert embedded == "True"


def test_a_key_prefix_namespaces_every_redis_key(tmp_path):
    show = (
        "import console.settings as s; "
        "print(s.CACHES['default']['KEY_PREFIX'], s.CHANNEL_LAYERS['default']['CONFIG']['prefix'], "
        ")"
    )
    base = {k: v for k, v in os.environ.items() if k not in ("LANEWAY_KEY_PREFIX", "CHANNELS_PREFIX")}
    env = base | {"LANEWAY_VAR_DIR": str(tmp_path), "REDIS_URL": "redis://127.0.0.1:6379/15"}
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", show], env=env, capture_output=True, text=True, cwd=django_settings.BASE_DIR
    )
    assert run(env).stdout.split() == ["laneway", "laneway"]
    assert run(env | {"LANEWAY_KEY_PREFIX": "ci-7"}).stdout.split() == ["ci-7", "ci-7"]
    bad = run(env | {"LANEWAY_KEY_PREFIX": "a b*"})
    assert bad.returncode != 0 and "LANEWAY_KEY_PREFIX='a b*' may hold only letters, digits, - and _" in bad.stderr


def test_each_checkout_tests_in_its_own_database_and_keys(tmp_path):
    show = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'tests.settings'; "
        "from django.conf import settings as s; "
        "print(s.DATABASES['default']['TEST']['NAME'], s.KEY_PREFIX)"
    )
    base = {
        k: v for k, v in os.environ.items() if k not in ("LANEWAY_KEY_PREFIX", "CHANNELS_PREFIX", "TEST_DATABASE_NAME")
    }
    env = base | {
        "LANEWAY_VAR_DIR": str(tmp_path),
        "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/laneway",
        "REDIS_URL": "redis://127.0.0.1:6379/15",
    }
    run = lambda env: subprocess.run(  # noqa: E731
        [sys.executable, "-c", show], env=env, capture_output=True, text=True, cwd=django_settings.BASE_DIR
    )
    checkout = hashlib.sha256(str(django_settings.BASE_DIR).encode()).hexdigest()[:8]
    assert run(env).stdout.split() == [
        f"test_laneway_{checkout}",
        f"laneway-test-{checkout}",
    ]
    chosen = run(env | {"TEST_DATABASE_NAME": "test_mine", "LANEWAY_KEY_PREFIX": "mine"}).stdout.split()
    assert chosen == ["test_mine", "mine"]
