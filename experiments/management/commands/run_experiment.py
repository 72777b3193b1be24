import sys
import time
from pathlib import Path
from typing import TextIO

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from experiments import definition as definitions
from experiments import results, runner
from experiments.models import Experiment
from lanes.models import Job


class Command(BaseCommand):
    help = (
        "Run an A/B experiment from a YAML file (the format the console's New experiment form takes) on the "
        "running workers, with a progress bar, then print the summary and the paired comparisons."
    )
    # As in createsuperuser: call_command(..., stdin=...) stands in for the process's standard input.
    stealth_options = ("stdin",)
    stdin: TextIO

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", help="The experiment's YAML (or - for stdin).")
        parser.add_argument("--prompts", help="A text file of more prompts, one per line (`prompt || TEXT`).")
        parser.add_argument("--user", help="Run it as this admin (default: the first admin).")
        parser.add_argument("--baseline", help="The arm to compare the others with (default: the first).")
        parser.add_argument("--timeout", type=float, default=3600.0, help="Give up waiting after this many seconds.")
        parser.add_argument("--no-wait", action="store_true", help="Start it and return.")

    def _read(self, name: str) -> str:
        try:
            return self.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {name}: {exc}") from None

    def handle(self, file, prompts, user, baseline, timeout, no_wait, **options) -> None:
        self.stdin = options.get("stdin") or sys.stdin
        users = get_user_model().objects.filter(is_superuser=True, is_active=True)
        owner = users.filter(username=user).first() if user else users.order_by("pk").first()
        if owner is None:
            raise CommandError(f"No admin named {user!r}." if user else "No admin user: run `manage.py bootstrap`.")
        extra = definitions.parse_prompt_lines(self._read(prompts)) if prompts else []
        try:
            definition = definitions.parse(self._read(file), extra)
        except definitions.ExperimentError as exc:
            raise CommandError(f"{file}: nothing was started:\n" + "\n".join(f"  {e}" for e in exc.errors)) from None
        experiment = runner.create(owner, definition)
        self.stdout.write(f"Experiment {experiment.name}: {definition.job_count} jobs as background work.")
        if no_wait:
            return
        deadline = time.monotonic() + timeout
        cells = Job.objects.filter(experiment_cell__experiment=experiment)
        with tqdm(total=definition.job_count, unit="job", file=self.stderr._out) as bar:
            while True:
                done = cells.filter(state__in=Job.TERMINAL).count()
                bar.update(done - bar.n)
                state = Experiment.objects.values_list("state", flat=True).get(pk=experiment.pk)
                if state != Experiment.State.RUNNING:
                    break
                if time.monotonic() > deadline:
                    raise CommandError(f"Still running after {timeout:.0f} s (is a worker consuming the lanes?).")
                time.sleep(0.5)
        self.report(experiment, baseline)

    def report(self, experiment, baseline) -> None:
        experiment.refresh_from_db()
        rows = results.cell_results(experiment)
        names = list(experiment.arms.values_list("name", flat=True))
        baseline = baseline if baseline in names else names[0]
        self.stdout.write(f"\n{experiment.name}: {experiment.state}")
        header = (
            f"{'arm':<16}{'done':>8}{'p50 s':>9}{'p95 s':>9}{'GPU-s/img':>11}{'peak MiB':>10}{'pass':>7}{'edit d.':>9}"
        )
        self.stdout.write(header)

        def fmt(value, spec: str) -> str:
            return "–" if value is None else format(value, spec)

        for s in results.summarize(rows, names):
            peak = s.peak_memory_bytes / 2**20 if s.peak_memory_bytes else None
            self.stdout.write(
                f"{s.arm:<16}{f'{s.succeeded}/{s.jobs}':>8}{fmt(s.run_p50, '.3f'):>9}{fmt(s.run_p95, '.3f'):>9}"
                f"{fmt(s.gpu_s_per_image, '.3f'):>11}{fmt(peak, '.1f'):>10}{fmt(s.pass_rate, '.0%'):>7}"
                f"{fmt(s.mean_edit_distance, '.3f'):>9}"
            )
        for arm in names:
            if arm == baseline:
                continue
            self.stdout.write(f"\n{arm} vs {baseline}:")
            for result in results.compare(rows, baseline, arm):
                self.stdout.write(f"  {result.sentence}")
