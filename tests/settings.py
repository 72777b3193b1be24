"""Test settings: the project's settings with its var/ folder moved to var/test/.

DATABASE_URL / REDIS_URL select PostgreSQL + Redis exactly as in production; unset,
the suite runs on SQLite and an embedded Valkey that conftest starts. TEST_DATABASE_NAME and
LANEWAY_KEY_PREFIX default to names derived from the checkout's path.
"""

import hashlib
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("LANEWAY_VAR_DIR", str(ROOT / "var" / "test"))
# Two checkouts testing at once against one PostgreSQL and one Redis database must not meet: each
# gets a test database and a Redis key prefix of its own, named after its path (unless they are set).
CHECKOUT_ID = hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]
os.environ.setdefault("LANEWAY_KEY_PREFIX", f"laneway-test-{CHECKOUT_ID}")
os.environ.setdefault("TEST_DATABASE_NAME", f"test_laneway_{CHECKOUT_ID}")

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
