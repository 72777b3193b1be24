"""Scale-out on separate hosts: the web process, two GPU workers and beat each run in a network namespace
of their own (`ip netns add`, a veth pair into one bridge), with their own hostname (`unshare --uts`) and
their own LANEWAY_VAR_DIR, under the production settings module. They share one PostgreSQL and one Redis,
which they reach over the bridge: PostgreSQL and Redis listen on 127.0.0.1 in the root namespace only,
so socat forwards the bridge address's ports to them (as a database host's own address would be).
Checkpoints and images are one shared folder, as an NFS volume would be.

Briefs go in over HTTP to the web host; both GPU hosts render them; then one GPU host's processes are
all killed (SIGKILL) mid-render, and its jobs are requeued onto the other: every job succeeds once, with
one image, nothing lost or run twice.

Marked `multihost` (slow; CI runs it as root): skipped unless root, with `ip netns` and socat, on the
PostgreSQL + Redis pass of the suite."""

import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.db.models import Count

from accounts.models import ApiToken
from lanes.models import Artifact, Job, Lane, Worker
from tests.conftest import make_user, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.multihost]
ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.231.{}"
GATEWAY = SUBNET.format("0.1")  # the root namespace's address on the bridge: where PostgreSQL and Redis are


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if not shutil.which("ip") or not shutil.which("unshare"):
        return "needs iproute2's `ip` and util-linux's `unshare`"
    if not shutil.which("socat"):
        return "needs socat (forwards the bridge address to PostgreSQL and Redis on 127.0.0.1)"
    probe = f"lw-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` fails here: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return None


def _backends_unavailable() -> str | None:
    db = settings.DATABASES["default"]
    if "postgresql" not in db["ENGINE"] or db.get("HOST") not in ("127.0.0.1", "localhost"):
        return "needs the PostgreSQL pass (DATABASE_URL at 127.0.0.1): the hosts share one PostgreSQL"
    if settings.EMBEDDED_VALKEY or not settings.REDIS_URL.startswith("redis://127.0.0.1:"):
        return "needs REDIS_URL at redis://127.0.0.1: the hosts share one Redis"
    return None


def run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str
    address: str
    var_dir: Path
    outside: str  # its veth end in the root namespace, on the bridge
    processes: list[subprocess.Popen] = field(default_factory=list)

    def log(self) -> str:
        return "\n".join(
            f"--- {self.name} {path.name}:\n" + path.read_text(errors="replace")[-3000:]
            for path in sorted(self.var_dir.glob("*.log"))
        )


class Network:
    """A bridge in the root namespace and one namespace per host, each joined to it by a veth pair."""

    def __init__(self, workdir: Path) -> None:
        self.tag = uuid.uuid4().hex[:4]
        self.bridge = f"lw{self.tag}br"
        self.workdir = workdir
        self.hosts: dict[str, Host] = {}
        self.forwards: list[subprocess.Popen] = []

    def up(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{GATEWAY}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        index = len(self.hosts) + 1
        ns, outside, inside = f"lw-{self.tag}-{name}", f"lw{self.tag}o{index}", f"lw{self.tag}i{index}"
        address = SUBNET.format(f"0.{10 + index}")
        run("ip", "netns", "add", ns)
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        run("ip", "link", "set", outside, "master", self.bridge, "up")
        run("ip", "link", "set", inside, "netns", ns)
        run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", inside)
        run("ip", "-n", ns, "link", "set", inside, "up")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        host = Host(ns, address, self.workdir / name, outside)
        host.var_dir.mkdir(parents=True)
        self.hosts[name] = host
        return host

    def forward(self, port: int) -> None:
        """GATEWAY:port → 127.0.0.1:port (a service listening on loopback only, reached from the bridge)."""
        self.forwards.append(
            subprocess.Popen(
                ["socat", f"TCP-LISTEN:{port},bind={GATEWAY},reuseaddr,fork", f"TCP:127.0.0.1:{port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        )

    def start(self, host: Host, label: str, argv: list[str], env: dict[str, str]) -> None:
        """A process on a host: in its namespace, with the host's own hostname (a UTS namespace)."""
        log = open(host.var_dir / f"{label}.log", "w")  # noqa: SIM115 (closed with the host)
        hostname = host.name.removeprefix(f"lw-{self.tag}-")
        host.processes.append(
            subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host.name,
                    "unshare",
                    "--uts",
                    "--",
                    "sh",
                    "-c",
                    f'hostname {hostname} && exec "$@"',
                    "sh",
                    *argv,
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        )

    def kill_host(self, host: Host) -> None:
        """SIGKILL every process in the host's namespace, as a machine that loses power."""
        pids = subprocess.run(["ip", "netns", "pids", host.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in host.processes:
            process.wait(10)

    def down(self) -> None:
        for host in self.hosts.values():
            self.kill_host(host)
            subprocess.run(["ip", "netns", "del", host.name], check=False)
            # Deleting a namespace removes its veth pair, unless something still holds the namespace open.
            subprocess.run(["ip", "link", "del", host.outside], check=False, capture_output=True)
        # socat and the child it forked for each connection: the hosts' PostgreSQL sessions end with them
        # (else the test database could not be dropped).
        for forward in self.forwards:
            os.killpg(forward.pid, signal.SIGKILL)
            forward.wait(10)
        subprocess.run(["ip", "link", "del", self.bridge], check=False, capture_output=True)


@pytest.fixture
def network(tmp_path):
    reason = _netns_unavailable() or _backends_unavailable()
    if reason:
        pytest.skip(reason)
    net = Network(tmp_path)
    try:
        net.up()
        net.forward(settings.DATABASES["default"]["PORT"] or 5432)
        net.forward(int(settings.REDIS_URL.split(":")[2].split("/")[0]))
        yield net
    finally:
        net.down()


def host_env(host: Host) -> dict[str, str]:
    """Production settings (console.settings), pointed at the shared services over the bridge."""
    db = settings.DATABASES["default"]
    redis_url = settings.REDIS_URL.replace("127.0.0.1", GATEWAY)
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "LANEWAY_", "DATABASE_", "REDIS_", "CELERY_", "PYTEST"))
    }  # fmt: skip
    env.update(
        DJANGO_SETTINGS_MODULE="console.settings",
        DATABASE_URL=f"postgres://{db['USER'] or 'postgres'}@{GATEWAY}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=redis_url,
        CELERY_BROKER_URL=redis_url,
        LANEWAY_KEY_PREFIX=settings.KEY_PREFIX,
        LANEWAY_VAR_DIR=str(host.var_dir),
        SECRET_KEY="multihost-test-secret-key-shared-by-every-host",
        ALLOWED_HOSTS=f"{host.address},localhost",
        MODELS_ROOT=str(settings.MODELS_ROOT),
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        # Quick failure detection for a test: a worker is lost after 5 missed 1-second heartbeats (a busy
        # machine can delay a few), beat reconciles every second, and a queued job whose message died
        # with a host is re-sent after 10 s.
        WORKER_HEARTBEAT_SECONDS="1",
        WORKER_LOST_AFTER_BEATS="5",
        RECONCILE_EVERY="1",
        REDISPATCH_AFTER_SECONDS="10",
        ADMISSION_CONTROL="false",
        LOG_LEVEL="WARNING",
    )
    return env


def test_two_gpu_hosts_share_the_work_and_a_dead_hosts_jobs_finish_on_the_other_once(network, demo_lanes):
    # The test database is already migrated: the hosts use it, as they would a migrated production one.
    Lane.objects.filter(name="fast-draft").update(max_steps=60, max_concurrency=2)
    db = settings.DATABASES["default"]
    db_name = db["NAME"]
    assert db_name.startswith("test_")

    web, gpu1, gpu2, beat = (network.add_host(name) for name in ("web", "gpu1", "gpu2", "beat"))
    hosts = (web, gpu1, gpu2, beat)
    python = sys.executable
    worker = [python, "manage.py", "gpu_worker", "--lanes", "fast-draft", "--loglevel", "WARNING"]
    network.start(web, "web", [str(Path(python).parent / "uvicorn"), "console.asgi:application",
                               "--host", web.address, "--port", "8000", "--no-access-log"], host_env(web))  # fmt: skip
    network.start(gpu1, "worker", worker, host_env(gpu1))
    network.start(gpu2, "worker", worker, host_env(gpu2))
    network.start(beat, "beat", [python, "-m", "celery", "-A", "console", "beat", "--loglevel", "WARNING",
                                 "--schedule", str(beat.var_dir / "celerybeat-schedule")], host_env(beat))  # fmt: skip

    base = f"http://{web.address}:8000"
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(healthy, timeout=60, what="the web host's /healthz (PostgreSQL and Redis over the bridge)")
        wait_until(
            lambda: set(Worker.objects.filter(stopped_at__isnull=True).values_list("hostname", flat=True))
            >= {"gpu1", "gpu2"},
            timeout=60, what="both GPU hosts heartbeating",
        )  # fmt: skip

        token = ApiToken.issue(make_user("casey"), "multihost")[1]
        api = httpx.Client(base_url=f"{base}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=30)

        def submit(n: int, steps: int) -> list[int]:
            ids = []
            for i in range(n):
                response = api.post(
                    "/jobs", json={"prompt": f"poster {i}", "intent": "draft", "steps": steps, "seed": i}
                )
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            return ids

        # 1. Briefs in through the web host are rendered on both GPU hosts (each runs 2 at a time).
        first = submit(6, 4)
        wait_until(
            lambda: Job.objects.filter(pk__in=first, state=Job.State.SUCCEEDED).count() == len(first),
            timeout=120, what=lambda: f"the first briefs: {list(Job.objects.filter(pk__in=first).values_list('state', flat=True))}",
        )  # fmt: skip
        ran_on = set(Job.objects.filter(pk__in=first).values_list("worker", flat=True))
        assert {ident.split(":")[0] for ident in ran_on} == {"gpu1", "gpu2"}

        # 2. Long renders; once gpu1 is rendering, the whole host dies.
        second = submit(4, 60)
        # With 58 of its 60 steps to go, this job is still rendering on gpu1 when the host dies.
        witness = wait_until(
            lambda: Job.objects.filter(
                pk__in=second, state=Job.State.RUNNING, worker__startswith="gpu1:", progress_step__gte=2
            ).first(),
            timeout=90, what="a long render running on gpu1",
        )  # fmt: skip
        network.kill_host(gpu1)
        wait_until(
            lambda: Job.objects.filter(pk__in=second, state__in=Job.TERMINAL).count() == len(second),
            timeout=150, what=lambda: f"the long renders: {list(Job.objects.filter(pk__in=second).values_list('state', 'worker'))}",
        )  # fmt: skip
    except BaseException:
        print("\n".join(host.log() for host in hosts))
        raise

    jobs = Job.objects.filter(pk__in=first + second)
    assert {job.state for job in jobs} == {Job.State.SUCCEEDED}
    # Nothing run twice: one image a job, and a job claimed again only after its worker died under it.
    images = dict(Artifact.objects.filter(job__in=jobs).values("job").annotate(n=Count("id")).values_list("job", "n"))
    assert images == {job.pk: 1 for job in jobs}
    for job in jobs:
        assert job.attempts == 1 + job.lost_workers, (job.pk, job.attempts, job.lost_workers)
    witness.refresh_from_db()
    assert witness.lost_workers == 1 and witness.worker.startswith("gpu2:"), witness.worker
    for job in jobs.filter(lost_workers__gt=0):  # every job the dead host held finished on the other
        assert job.lost_workers == 1 and job.worker.startswith("gpu2:"), (job.pk, job.worker)
    assert all(Path(settings.MEDIA_ROOT, artifact.path).is_file() for artifact in Artifact.objects.filter(job__in=jobs))
