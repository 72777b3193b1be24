import secrets

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand

from accounts.models import Member, Role, Team

# One demo login per role, all in one team (passwords are printed once, when created).
DEMO_LOGINS = (("admin", Role.ADMIN), ("ops", Role.OPS), ("casey", Role.CREATIVE))
DEMO_TEAM = "studio"


class Command(BaseCommand):
    help = (
        "First-run setup: migrate, create demo logins for each role (passwords printed once), "
        "build the demo checkpoints, seed lanes."
    )

    def handle(self, **options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        User = get_user_model()
        if not User.objects.filter(is_superuser=True).exists():
            team, _ = Team.objects.get_or_create(name=DEMO_TEAM)
            for username, role in DEMO_LOGINS:
                if User.objects.filter(username=username).exists():
                    continue
                password = secrets.token_urlsafe(12)
                user = User.objects.create_user(username, email="", password=password)
                Member.objects.create(user=user, role=role, team=team)
                self.stdout.write(
                    self.style.SUCCESS(f"Created demo {role} login: {username} / {password}  (shown once)")
                )
        else:
            self.stdout.write("An admin login exists already (change it with `manage.py changepassword admin`).")
        call_command("seed_demo", stdout=self.stdout)
