import io
import re

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command

from accounts.access import role_of, team_of
from accounts.models import Role
from lanes.models import Lane, ModelVersion

pytestmark = pytest.mark.django_db


def test_first_run_creates_a_login_per_role_in_one_team_and_a_validated_second_version(demo_checkpoint):
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    logins = dict(re.findall(r"login: (\w+) / (\S+)", out.getvalue()))
    assert set(logins) == {"admin", "ops", "casey"}
    users = {name: authenticate(username=name, password=password) for name, password in logins.items()}
    assert {name: role_of(user) for name, user in users.items()} == {
        "admin": Role.ADMIN, "ops": Role.OPS, "casey": Role.CREATIVE,
    }  # fmt: skip
    assert len({team_of(user) for user in users.values()}) == 1
    assert Lane.objects.count() == 5
    assert ModelVersion.objects.get(name="demo-tiny-sd-v2").status == ModelVersion.Status.VALIDATED
    assert ModelVersion.objects.get(name="demo-tiny-sd-v1").smoke_image

    again = io.StringIO()
    call_command("bootstrap", stdout=again)
    assert "exists already" in again.getvalue() and "login:" not in again.getvalue()
