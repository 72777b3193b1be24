import sys
from pathlib import Path
from typing import TextIO

from django.core.management.base import BaseCommand, CommandError

from lanes.policy import PolicyError, apply


class Command(BaseCommand):
    help = "Apply a routing policy (lanes and intents) from a YAML file: validated, all or nothing."
    # As in createsuperuser: call_command(..., stdin=...) stands in for the process's standard input.
    stealth_options = ("stdin",)
    stdin: TextIO

    def add_arguments(self, parser) -> None:
        parser.add_argument("file", help="Policy YAML file, or - for standard input.")
        parser.add_argument(
            "--dry-run", action="store_true", help="Print what applying would change, and change nothing."
        )

    def handle(self, file: str, dry_run: bool = False, **options) -> None:
        self.stdin = options.get("stdin") or sys.stdin
        try:
            text = self.stdin.read() if file == "-" else Path(file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from None
        try:
            diff = apply(text, dry_run=dry_run)
        except PolicyError as exc:
            raise CommandError(f"{file}: nothing was changed:\n" + "\n".join(f"  {e}" for e in exc.errors)) from None
        head = "Would apply" if dry_run else "Applied"
        self.stdout.write(self.style.SUCCESS(f"{head} {file}: {diff.lanes} lanes, {diff.intents} intents"))
        for line in diff.lines() or ["nothing changes" if dry_run else "nothing changed"]:
            self.stdout.write(f"  {line}")
        if dry_run:
            self.stdout.write("Dry run: nothing was changed.")
