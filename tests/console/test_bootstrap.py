import io
import re

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.test import RequestFactory

from accounts.access import role_of, team_of
from accounts.models import Role
from lanes.models import Lane, ModelVersion

pytestmark = pytest.mark.django_db


def test_first_run_creates_a_login_per_role_in_one_team_and_a_validated_second_version(demo_checkpoint):
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    logins = dict(re.findall(r"login: (\w+) / (\S+)", out.getvalue()))
    assert set(logins) == {"admin", "ops", "casey"}
    request = RequestFactory().post("/login/")  # the login throttle (django-axes) needs the request
    users = {name: authenticate(request, username=name, password=password) for name, password in logins.items()}
    assert {name: role_of(user) for name, user in users.items()} == {
        "admin": Role.ADMIN, "ops": Role.OPS, "casey": Role.CREATIVE,
    }  # fmt: skip
    assert len({team_of(user) for user in users.values()}) == 1
    # The mixed stack: a lane for every family that renders from a prompt, and a hosted engine.
    families = set(Lane.objects.values_list("active_version__family", flat=True))
    assert families == {"sd15", "sdxl", "sd3", "flux", "http"}
    assert Lane.objects.get(name="sdxl-hires").refine_version.family == "sdxl-refiner"
    assert ModelVersion.objects.get(name="demo-tiny-sd-v2").status == ModelVersion.Status.VALIDATED
    # Every local demo version was smoke-rendered through its family's pipeline.
    for version in ModelVersion.objects.exclude(family="http").exclude(name="demo-tiny-sd-v2"):
        assert version.smoke_image, version.name

    again = io.StringIO()
    call_command("bootstrap", stdout=again)
    assert "exists already" in again.getvalue() and "login:" not in again.getvalue()
