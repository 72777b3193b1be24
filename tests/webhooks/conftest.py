import pytest

from accounts.models import Team
from tests.webhooks.receiver import Receiver, serve


@pytest.fixture
def local_receivers(settings):
    """Webhooks may reach 127.0.0.1 (where the test receivers listen), with short timeouts and retries."""
    settings.WEBHOOK_ALLOWED_HOSTS = ("127.0.0.1",)
    settings.WEBHOOK_TIMEOUT_SECONDS = 2.0
    settings.WEBHOOK_RETRY_SCHEDULE = (0.2, 0.4)
    return settings


@pytest.fixture
def receiver(local_receivers):
    """A receiver that answers 200; tests set .script for other answers."""
    server = Receiver()
    thread = serve(server)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def team(db):
    return Team.objects.create(name="studio")
