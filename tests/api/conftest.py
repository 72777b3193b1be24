import pytest

from accounts.models import ApiToken, Team
from tests.conftest import make_user


class Caller:
    """The Django test client speaking to /api/v1/ with one token."""

    def __init__(self, client, secret: str | None) -> None:
        self.client, self.secret = client, secret

    def headers(self, extra: dict | None = None) -> dict:
        headers = {"HTTP_AUTHORIZATION": f"Bearer {self.secret}"} if self.secret else {}
        for name, value in (extra or {}).items():
            headers["HTTP_" + name.upper().replace("-", "_")] = value
        return headers

    def get(self, path: str, headers=None, **params):
        return self.client.get("/api/v1" + path, params, **self.headers(headers))

    def send(self, method: str, path: str, body=None, headers=None):
        call = getattr(self.client, method.lower())
        return call("/api/v1" + path, body, content_type="application/json", **self.headers(headers))

    def post(self, path: str, body=None, headers=None):
        return self.send("POST", path, body, headers)


@pytest.fixture
def team(db):
    return Team.objects.create(name="studio")


@pytest.fixture
def users(team):
    return {
        "creative": make_user("casey", "creative", team),
        "ops": make_user("olive", "ops", team),
        "admin": make_user("ada", "admin", team),
    }


@pytest.fixture
def callers(client, users):
    """A Caller per role (and None: no token at all), each with a fresh personal token."""
    made = {role: Caller(client, ApiToken.issue(user, f"{role} script")[1]) for role, user in users.items()}
    made[None] = Caller(client, None)
    return made
