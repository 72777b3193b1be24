"""`make run`: the Procfile's processes under honcho, with the embedded Valkey outside them.

honcho stops every process at once on Ctrl-C. The embedded Valkey is the broker, channel
layer and cache of all the others, so it must outlive them: it is started first, in a session
of its own (a terminal's Ctrl-C never reaches it), and stopped only after honcho has stopped
the rest. A stop asked for with Ctrl-C or SIGTERM exits 0 when every process stopped cleanly.

Under `make run`, a terminal's Ctrl-C would also reach make, which then dies of it ("make: ***
Interrupt", status 130) whatever its recipe does. So, like a shell starting a job, this command
moves to a process group of its own and makes it the terminal's foreground group while it runs:
Ctrl-C reaches it alone, and make exits with its status.
"""

import os
import signal
import subprocess
import sys
import threading
import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from honcho import environ
from honcho import manager as honcho_manager
from honcho.manager import Manager
from honcho.printer import Printer

# honcho SIGKILLs what is still running this long after it asked everything to stop (its default,
# 5 s, cuts off a worker finishing the render in hand on a busy machine).
honcho_manager.KILL_WAIT = 30
STOP_SIGNAL_CODES = {130, 143}  # honcho's own exit code after SIGINT / SIGTERM
# A process stopped cleanly: it exited 0, or the SIGTERM honcho sent its process group ended it
# (the `sh -c` honcho runs each command under dies of it).
CLEAN_STOPS = {0, -signal.SIGTERM}


class Command(BaseCommand):
    help = "Run the console with its workers (the Procfile) until Ctrl-C; the embedded Valkey stops last."

    def add_arguments(self, parser):
        parser.add_argument("processes", nargs="*", help="Procfile entries to run (default: all)")

    def handle(self, *, processes, **options) -> None:
        terminal = take_terminal()
        try:
            self._run(processes)
        finally:
            if terminal is not None:
                give_back_terminal(*terminal)

    def _run(self, processes: list[str]) -> None:
        procfile = environ.parse_procfile((settings.BASE_DIR / "Procfile").read_text())
        unknown = sorted(set(processes) - set(procfile.processes))
        if unknown:
            raise CommandError(f"Not in the Procfile: {', '.join(unknown)} (it has {', '.join(procfile.processes)}).")
        names = [name for name in procfile.processes if name != "valkey" and (not processes or name in processes)]
        valkey = self._start_valkey() if settings.EMBEDDED_VALKEY else None

        manager = Manager(Printer(sys.stdout, colour=sys.stdout.isatty(), prefix=True))
        for process in environ.expand_processes({name: procfile.processes[name] for name in names}):
            manager.add_process(process.name, process.cmd, quiet=process.quiet, env={**os.environ, **process.env})
        stopping, valkey_lost = threading.Event(), threading.Event()
        if valkey is not None:
            threading.Thread(target=self._watch, args=(valkey, stopping, valkey_lost), daemon=True).start()
        try:
            manager.loop()
        finally:
            stopping.set()
            if valkey is not None:
                self._stop_valkey(valkey)
        if valkey_lost.is_set():
            raise CommandError("The embedded Valkey exited unexpectedly; see var/valkey/valkey.log.")
        # Every process's exit status, as honcho recorded it (its manager keeps no public view of them).
        failed = {
            name: p.get("returncode")
            for name, p in manager._processes.items()
            if p.get("returncode") not in CLEAN_STOPS
        }
        if manager.returncode in STOP_SIGNAL_CODES and not failed:
            self.stdout.write("Laneway stopped.")
            return
        if failed:
            stops = ", ".join(f"{name} (exit {code})" for name, code in failed.items())
            raise CommandError(f"Not every process stopped cleanly: {stops}.", returncode=manager.returncode or 1)
        sys.exit(manager.returncode or 0)  # one process ended by itself with 0: honcho stopped the others

    def _start_valkey(self) -> subprocess.Popen:
        # A session of its own: a terminal's Ctrl-C goes to the foreground process group only.
        process = subprocess.Popen(
            [sys.executable, "manage.py", "run_valkey"], cwd=settings.BASE_DIR, start_new_session=True
        )
        deadline = time.monotonic() + 30
        while not settings.VALKEY_SOCKET.exists() or not self._answers():
            if process.poll() is not None:
                raise CommandError("The embedded Valkey did not start; see var/valkey/valkey.log.")
            if time.monotonic() > deadline:
                process.terminate()
                raise CommandError("The embedded Valkey did not answer within 30 s; see var/valkey/valkey.log.")
            time.sleep(0.1)
        return process

    @staticmethod
    def _answers() -> bool:
        import redis

        try:
            return bool(redis.Redis(unix_socket_path=str(settings.VALKEY_SOCKET), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    @staticmethod
    def _watch(valkey: subprocess.Popen, stopping: threading.Event, lost: threading.Event) -> None:
        valkey.wait()
        if not stopping.is_set():
            lost.set()
            os.kill(os.getpid(), signal.SIGTERM)  # honcho's handler stops the rest

    @staticmethod
    def _stop_valkey(valkey: subprocess.Popen) -> None:
        if valkey.poll() is None:
            valkey.terminate()
            try:
                valkey.wait(timeout=15)
            except subprocess.TimeoutExpired:
                valkey.kill()


def take_terminal() -> tuple[int, int] | None:
    """Make a new process group of this process the foreground of its controlling terminal, if it
    has one. Returns the terminal and the group to give it back to."""
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd):
            return None
        previous = os.tcgetpgrp(fd)
        os.setpgid(0, 0)
    except (OSError, ValueError):  # no terminal, or already a group leader of its own session
        return None
    _set_foreground(fd, os.getpgrp())
    return fd, previous


def give_back_terminal(fd: int, group: int) -> None:
    try:
        _set_foreground(fd, group)
    except OSError:  # the group is gone (make was killed): its shell takes the terminal back
        pass


def _set_foreground(fd: int, group: int) -> None:
    # A background group changing the terminal's foreground would be stopped by SIGTTOU.
    previous = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(fd, group)
    finally:
        signal.signal(signal.SIGTTOU, previous)
