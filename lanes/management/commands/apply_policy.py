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

    def handle(self, file: str, **options) -> None:
        self.stdin = options.get("stdin") or sys.stdin
        try:
            text = self.stdin.read() if file == "-" else Path(file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"Cannot read {file}: {exc}") from None
        try:
            result = apply(text)
        except PolicyError as exc:
            raise CommandError(f"{file}: nothing was changed:\n" + "\n".join(f"  {e}" for e in exc.errors)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Applied {file}: {result['lanes']} lanes, {result['intents']} intents"
                + (f", {result['disabled']} lanes not in the file disabled" if result["disabled"] else "")
            )
        )
