import secrets

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "First-run setup: migrate, create a demo admin (password printed once), build the demo checkpoint, seed lanes."
    )

    def handle(self, **options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            password = secrets.token_urlsafe(12)
            User.objects.create_superuser("admin", email="", password=password)
            self.stdout.write(self.style.SUCCESS(f"Created demo admin login: admin / {password}  (shown once)"))
        else:
            self.stdout.write("An admin login exists already (change it with `manage.py changepassword admin`).")
        call_command("seed_demo", stdout=self.stdout)
