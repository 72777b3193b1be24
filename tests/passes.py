"""`make test`: the whole suite on the embedded default and on PostgreSQL + Redis, both passes at once.

Each pass has its own var/ (var/test, var/test-postgres), database and message server, so they
run side by side; their output is interleaved line by line, each line prefixed with its pass.
The PostgreSQL + Redis pass runs when both answer (PG_TEST_URL, REDIS_TEST_URL), and is required
under CI. Arguments are handed to pytest in both passes (`make test PYTEST_ARGS='-m "not faults"'`).

Redis: without REDIS_TEST_URL the pass claims a database (1-15) on 127.0.0.1:6379 that no other
checkout's test run holds — a key `laneway-test-claim:<n>` in database 0, set only if absent and
kept alive while the pass runs — so checkouts testing at once never share one (the broker's queues
cannot take a key prefix).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
PG_TEST_URL = os.environ.get("PG_TEST_URL") or "postgres://postgres@127.0.0.1:5432/laneway"
REDIS_SERVER = "redis://127.0.0.1:6379"
CLAIM_SECONDS = 120  # a claim left by a run that was killed outright frees itself this soon


def answers(pg_url: str, redis_url: str) -> str | None:
    """None when PostgreSQL and Redis both answer, else what failed."""
    try:
        with psycopg.connect(pg_url.rsplit("/", 1)[0] + "/postgres", connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except Exception as exc:
        return str(exc).strip()
    return None


class RedisClaim:
    """A Redis database on REDIS_SERVER held for this run alone (see the module docstring)."""

    def __init__(self, owner: str):
        self.owner = owner
        self.server = redis.Redis.from_url(f"{REDIS_SERVER}/0", socket_connect_timeout=3)
        self.db: int | None = None
        self._stop = threading.Event()

    def __enter__(self) -> str:
        for db in range(1, 16):
            if self.server.set(f"laneway-test-claim:{db}", self.owner, nx=True, ex=CLAIM_SECONDS):
                self.db = db
                break
        else:
            raise SystemExit(f"Every Redis database 1-15 on {REDIS_SERVER} is held by another test run.")
        threading.Thread(target=self._keep, daemon=True).start()
        return f"{REDIS_SERVER}/{self.db}"

    def _keep(self) -> None:
        while not self._stop.wait(CLAIM_SECONDS / 4):
            self.server.expire(f"laneway-test-claim:{self.db}", CLAIM_SECONDS)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        key = f"laneway-test-claim:{self.db}"
        if self.server.get(key) == self.owner.encode():
            self.server.delete(key)


def copy_lines(name: str, stream, lock: threading.Lock) -> None:
    for line in stream:
        with lock:
            sys.stdout.write(f"{name} | {line}")
            sys.stdout.flush()


def run(passes: dict[str, dict[str, str]], pytest_args: list[str]) -> dict[str, int]:
    lock = threading.Lock()
    started = time.monotonic()
    running, copiers = {}, []
    for name, env in passes.items():
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )  # fmt: skip
        running[name] = process
        copier = threading.Thread(target=copy_lines, args=(name, process.stdout, lock))
        copier.start()
        copiers.append(copier)
    codes = {name: process.wait() for name, process in running.items()}
    for copier in copiers:
        copier.join()
    print(f"\n{len(passes)} pass(es) in {time.monotonic() - started:.0f} s:")
    for name, code in codes.items():
        print(f"  {name}: {'passed' if code == 0 else f'FAILED (pytest exit {code})'}")
    return codes


def main(pytest_args: list[str]) -> int:
    embedded = dict(os.environ)
    passes = {"embedded": embedded}
    redis_url = os.environ.get("REDIS_TEST_URL")
    problem = answers(PG_TEST_URL, redis_url or f"{REDIS_SERVER}/0")
    if problem is not None:
        if os.environ.get("CI"):
            print(f"CI: PostgreSQL and Redis must be running ({problem})", file=sys.stderr)
            return 1
        print(f"Skipping the PostgreSQL + Redis pass: no server at {PG_TEST_URL} / {redis_url or REDIS_SERVER} "
              f"({problem})")  # fmt: skip
        return max(run(passes, pytest_args).values())
    claim = RedisClaim(owner=f"{os.uname().nodename}:{ROOT}:{os.getpid()}") if not redis_url else nullcontext(redis_url)
    with claim as redis_url:
        passes["postgres"] = {
            **os.environ, "DATABASE_URL": PG_TEST_URL, "REDIS_URL": redis_url,
            "LANEWAY_VAR_DIR": str(ROOT / "var" / "test-postgres"),
        }  # fmt: skip
        print(f"Two passes at once: embedded (SQLite + embedded Valkey) and postgres ({PG_TEST_URL}, {redis_url})")
        return max(run(passes, pytest_args).values())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
