# The webhook pages' tests use the webhooks tests' local receiver.
from tests.webhooks.conftest import local_receivers, receiver  # noqa: F401
