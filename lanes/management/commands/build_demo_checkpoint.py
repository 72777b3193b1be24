from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from lanes.checkpoints import build_demo_checkpoint


class Command(BaseCommand):
    help = "Build a tiny random-weight Stable Diffusion pipeline offline and save it with save_pretrained."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", help="Target folder, relative to MODELS_ROOT (or absolute, inside it).")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--force", action="store_true", help="Overwrite an existing checkpoint.")

    def handle(self, path: str, seed: int, force: bool, **options) -> None:
        root = Path(settings.MODELS_ROOT).resolve()
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise CommandError(f"{path} is outside MODELS_ROOT ({root}).")
        if (target / "model_index.json").exists() and not force:
            self.stdout.write(f"Checkpoint already at {target} (use --force to rebuild).")
            return
        build_demo_checkpoint(target, seed=seed)
        self.stdout.write(self.style.SUCCESS(f"Built demo checkpoint at {target}"))
