from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from lanes.checkpoints import BUILDABLE, build_demo_checkpoint, build_demo_upscaler
from lanes.models import CheckpointError, resolve_checkpoint


class Command(BaseCommand):
    help = "Build a tiny random-weight pipeline of a family offline and save it with save_pretrained."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", help="Target folder, relative to MODELS_ROOT (or absolute, inside it).")
        parser.add_argument("--family", choices=BUILDABLE, default="sd15", help="The pipeline family (default sd15).")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--force", action="store_true", help="Overwrite an existing checkpoint.")
        parser.add_argument(
            "--upscaler-of",
            metavar="BASE",
            help="Build a latent x2 upscaler instead, sharing the VAE and text encoder of BASE (an sd15 folder).",
        )

    def handle(self, path: str, family: str, seed: int, force: bool, upscaler_of: str | None, **options) -> None:
        root = Path(settings.MODELS_ROOT).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise CommandError(f"{path} is outside MODELS_ROOT ({root}).")
        if (target / "model_index.json").exists() and not force:
            self.stdout.write(f"Checkpoint already at {target} (use --force to rebuild).")
            return
        if upscaler_of:
            try:
                base = resolve_checkpoint(upscaler_of)
            except CheckpointError as exc:
                raise CommandError(str(exc)) from None
            build_demo_upscaler(target, base, seed=seed)
        else:
            build_demo_checkpoint(target, seed=seed, family=family)
        self.stdout.write(self.style.SUCCESS(f"Built a demo {family} checkpoint at {target}"))
