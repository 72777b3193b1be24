"""Teams, members and roles: who someone is in Laneway. The bottom layer: imports nothing of ours."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)

    class Meta:
        ordering = ["name"]
        db_table = "lanes_team"  # created by lanes before teams had an app of their own

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    CREATIVE = "creative"
    OPS = "ops"
    ADMIN = "admin"


ROLE_RANK = {Role.CREATIVE: 0, Role.OPS: 1, Role.ADMIN: 2}


class Member(models.Model):
    """A user's team and role. Admins are Django superusers (so the Django admin, where users
    and teams are managed, opens to them alone); the flags follow the role on save."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="member")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="members")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.CREATIVE)

    class Meta:
        db_table = "lanes_member"

    def __str__(self) -> str:
        return f"{self.user} ({self.role})"

    def save(self, *args, **kwargs) -> None:
        super().save(*args, **kwargs)
        admin = self.role == Role.ADMIN
        type(self.user).objects.filter(pk=self.user_id).update(is_staff=admin, is_superuser=admin)
        self.user.is_staff = self.user.is_superuser = admin
