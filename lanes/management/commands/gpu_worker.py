import os
import socket
from typing import Any, cast

from celery import current_app as app
from celery.bin.celery import celery as celery_cli
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from lanes import engines
from lanes.heartbeat import heartbeat
from lanes.models import CheckpointError, Lane, ModelVersion


class Command(BaseCommand):
    help = "Start a Celery worker for one GPU (or the CPU), consuming the queues of the lanes it serves."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--gpu", type=int, help="GPU index: sets CUDA_VISIBLE_DEVICES for this worker.")
        parser.add_argument("--lanes", default="", help="Comma-separated lane names (default: every lane).")
        parser.add_argument(
            "--concurrency",
            type=int,
            help="Pool threads (default: the served lanes' caps plus their refine batch sizes, plus one). "
            "Per-lane caps are enforced inside the worker; this only bounds the total.",
        )
        parser.add_argument("--no-control", action="store_true", help="Do not consume the control queue.")
        parser.add_argument(
            "--warm",
            action="store_true",
            help="Load the served lanes' pipelines (active, canary and refine versions of enabled lanes) "
            "before consuming, so that no job waits for a cold start.",
        )
        parser.add_argument("--loglevel", default="INFO")

    def handle(self, gpu, lanes, concurrency, no_control, loglevel, warm=False, **options) -> None:
        if concurrency is not None and concurrency < 1:
            raise CommandError("--concurrency must be at least 1.")
        wanted = [name.strip() for name in lanes.split(",") if name.strip()]
        qs = Lane.objects.select_related("active_version", "canary_version", "refine_version")
        if wanted:
            qs = qs.filter(name__in=wanted)
            missing = set(wanted) - set(qs.values_list("name", flat=True))
            if missing:
                raise CommandError(f"Unknown lanes: {', '.join(sorted(missing))}")
        # Every lane, hosted ones too: their hosted jobs go to the hosted queue (see dispatch), but a local
        # version activated there later must find a worker on the lane's queue.
        lanes_served = list(qs)
        queues = sorted(
            {lane.queue for lane in lanes_served} | {lane.refine_queue for lane in lanes_served if lane.cascade}
        )
        if concurrency is None:
            concurrency = 1 + sum(
                lane.max_concurrency + (lane.refine_batch_size if lane.cascade else 0) for lane in lanes_served
            )
        if not no_control:
            queues += [settings.CELERY_TASK_DEFAULT_QUEUE, settings.HOUSEKEEPING_QUEUE]
        if not queues:
            raise CommandError("No lanes to serve: run `manage.py seed_demo` or apply a policy first.")
        # Serving every lane means lanes created later too: the heartbeat adds their queues as they appear.
        heartbeat.follow_lanes = not wanted
        name = "cpu"
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
            name = f"gpu{gpu}"
        if warm:
            self.warm(lanes_served)
        argv = [
            "worker",
            "--pool=threads",
            f"--concurrency={concurrency}",
            f"--queues={','.join(queues)}",
            # One node name per process: control commands aimed at it reach this worker alone.
            f"--hostname={name}-{os.getpid()}@{socket.gethostname()}",
            f"--loglevel={loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
        # Not app.worker_main: it drops the worker's exit code, so a worker that died of an
        # unrecoverable error exited 0 and a supervisor (Restart=on-failure) never restarted it.
        # The app itself, not the current_app proxy: click calls a callable default.
        celery_cli.params[0].default = cast(Any, app)._get_current_object()
        try:
            code = celery_cli.main(args=argv, standalone_mode=False)
        finally:
            celery_cli.params[0].default = None
        if code:
            raise SystemExit(code)

    def warm(self, lanes: list[Lane]) -> None:
        """Load the local versions the lanes render with; one that cannot load is reported and skipped (its
        jobs fail with the loader's message as they would have anyway), and the worker starts regardless."""
        versions: dict[int, ModelVersion] = {}
        for lane in lanes:
            if lane.enabled:
                for version in (
                    lane.active_version,
                    lane.canary_version,
                    lane.refine_version if lane.cascade else None,
                ):
                    if version is not None and not version.is_hosted:
                        versions.setdefault(version.pk, version)
        for version in versions.values():
            try:
                seconds = engines.engine_cache.warm(version)
            except (CheckpointError, engines.MemoryBudgetError) as exc:
                self.stderr.write(f"Could not warm {version.name}: {exc}")
                continue
            self.stdout.write(f"Warmed {version.name} in {seconds:.2f} s.")
