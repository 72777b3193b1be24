"""A fresh `make run`, then Ctrl-C: everything stops, the embedded Valkey last, and make exits 0 with no
traceback; nothing on the way is library noise.

make runs on a pseudo-terminal as its controlling terminal, and Ctrl-C is the byte a keyboard sends
(0x03): the terminal itself delivers SIGINT to its foreground process group, as for a user.
"""

import fcntl
import os
import pty
import signal
import socket
import subprocess
import termios
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
# The outer test run's settings and services: this run is a user's, on the embedded default.
DROPPED = ("DJANGO_SETTINGS_MODULE", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "TEST_DATABASE_NAME",
           "LANEWAY_USE_TEST_DATABASE", "LANEWAY_KEY_PREFIX", "LANEWAY_VAR_DIR")  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_until_closed(fd: int, out) -> None:
    with out:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                return
            if not chunk:
                return
            out.write(chunk)
            out.flush()


def test_ctrl_c_on_make_run_stops_everything_valkey_last_and_exits_0(tmp_path):
    port, images_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(
        LANEWAY_VAR_DIR=str(tmp_path / "var"), LANEWAY_PORT=str(port),
        DEMO_IMAGES_API_URL=f"http://127.0.0.1:{images_port}/v1",
    )  # fmt: skip
    log = tmp_path / "run.log"
    master, slave = pty.openpty()

    def controlling_terminal():  # in the child: a session of its own whose terminal is the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    make = subprocess.Popen(
        ["make", "--no-print-directory", "run"], cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
        preexec_fn=controlling_terminal,
    )  # fmt: skip
    os.close(slave)
    # Opened here, not in the thread: the loop below reads it at once.
    reader = threading.Thread(target=copy_until_closed, args=(master, log.open("wb")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 240
        while True:
            assert make.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the console did not answer within 240 s:\n" + log.read_text()
            text = log.read_text()
            if "worker.1" in text and "ready." in text:  # a Celery worker is consuming
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                        break  # the web server answers (the login page)
                except OSError:
                    pass
            time.sleep(1)
        os.write(master, b"\x03")  # Ctrl-C
        rc = make.wait(timeout=90)
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
        reader.join(timeout=10)
        os.close(master)
    text = log.read_text()
    assert rc == 0, text
    assert "Traceback" not in text and "make: ***" not in text, text
    assert "SIGKILL" not in text, text
    # Setup (a fresh var/: the demo checkpoints are built) and start-up are quiet: no library
    # warnings about what Laneway does not need, no progress bars. (Celery's SecurityWarning when
    # run as root stays: it is true.)
    for noise in ("torchvision", "FutureWarning", "UserWarning", "it/s]", "should be kept in float32"):
        assert noise not in text, (noise, text)  # every process stopped when asked, none had to be killed
    assert text.rstrip().endswith("Laneway stopped."), text
    # Nothing is left running: the web port is closed and Valkey's socket is gone.
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    assert not (tmp_path / "var" / "valkey.sock").exists()
