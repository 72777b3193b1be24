"""Laneway's Redis/Valkey broker transport: kombu's own, with one crash on broker restarts fixed.

When the broker drops while a worker holds unacknowledged messages (late-acked jobs in flight),
Celery closes the dead connection and opens a new one. The jobs still running finish later and ack
their messages on the channel they came from, which is closed by then; and closing it restores the
unacknowledged messages to their queues. Both need a Redis client, and kombu builds one from the
channel's connection parameters, which it dropped when the channel closed: `AttributeError:
'NoneType' object has no attribute 'hostname'` (or `'client'`), an "Unrecoverable error" after which
the worker's consumer never takes another message. Here a channel remembers where its broker is,
so those acks and restores reach the (restarted) broker like any other command; if it is still
down they fail with a connection error, which kombu logs and survives, and the messages stay in
the broker's unacked set until restore_visible returns them after the visibility timeout.
"""

from __future__ import annotations

from types import SimpleNamespace

from kombu.transport import TRANSPORT_ALIASES, redis


class Channel(redis.Channel):
    def __init__(self, connection, *args, **kwargs) -> None:
        # What _connparams reads from the connection: the URL's parts and the default port.
        self._broker = SimpleNamespace(client=connection.client, default_port=connection.default_port)
        super().__init__(connection, *args, **kwargs)

    def _connparams(self, asynchronous=False):
        if self.connection is not None and self.connection.client is not None:
            return super()._connparams(asynchronous)
        closed, self.connection = self.connection, self._broker  # a closed channel: its broker's address
        try:
            return super()._connparams(asynchronous)
        finally:
            self.connection = closed


class Transport(redis.Transport):
    Channel = Channel


def install() -> None:
    """Make redis://, rediss:// and redis+socket:// broker URLs use this transport."""
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = f"{__name__}:Transport"
