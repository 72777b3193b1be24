"""Test settings: the project's settings with its var/ folder moved to var/test/.

DATABASE_URL / REDIS_URL select PostgreSQL + Redis exactly as in production; unset,
the suite runs on SQLite and an embedded Valkey that conftest starts.
"""

import os
from pathlib import Path

os.environ.setdefault("LANEWAY_VAR_DIR", str(Path(__file__).resolve().parent.parent / "var" / "test"))
os.environ.setdefault("CHANNELS_PREFIX", "laneway-test")

from console.settings import *  # noqa: E402,F403
from console.settings import DATABASES  # noqa: E402

# Worker threads must not keep connections open past a test: PostgreSQL would refuse
# to drop the test database.
DATABASES["default"]["CONN_MAX_AGE"] = 0
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast logins in tests
WORKER_HEARTBEAT_SECONDS = 0.5
TELEMETRY_SAMPLE_SECONDS = 0.2

# Processes a test starts (a worker, a second web server) use the test run's database, with the
# same options (SQLite's IMMEDIATE transactions and busy timeout) as the test itself.
if os.environ.get("LANEWAY_USE_TEST_DATABASE"):
    DATABASES["default"]["NAME"] = DATABASES["default"]["TEST"]["NAME"]
