"""
Postfix's ``smtp-sink``: find it (installing Debian's ``postfix`` when it is missing),
run it on a free loopback port, and read how many messages it has accepted.

``smtp-sink`` is a single-process C server that answers every command at once and
throws messages away without touching the disk, so it measures the client.  It
advertises PIPELINING and accepts any number of recipients.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import IO

#: Where Debian's postfix package installs it.
DEFAULT_PATH = "/usr/sbin/smtp-sink"
#: Connections it serves at once; more wait in the listen queue.
MAX_CONNECTIONS = 256
BACKLOG = 1000

_COUNTERS = re.compile(rb"sess=(\d+) quit=(\d+) mesg=(\d+)")


class SinkError(Exception):
    """
    ``smtp-sink`` is missing and cannot be installed, or will not start.
    """


def find_smtp_sink() -> str | None:
    """
    :returns: the path of ``smtp-sink``, or ``None`` if it is not installed.
    """
    found = shutil.which("smtp-sink")
    if found:
        return found
    return DEFAULT_PATH if os.access(DEFAULT_PATH, os.X_OK) else None


def install_postfix(attempts: int = 5) -> None:
    """
    Install Debian's ``postfix`` (which ships ``smtp-sink``) without configuring a mail
    system.  Another installer may hold dpkg's lock, so apt waits for it, and the whole
    install is retried a few times.

    :raises SinkError: when not root, or when every attempt failed.
    """
    if os.geteuid() != 0:
        raise SinkError(
            "smtp-sink is missing; install Debian's postfix as root, e.g.\n"
            "  echo 'postfix postfix/main_mailer_type select No configuration' "
            "| sudo debconf-set-selections\n"
            "  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y postfix"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=True,
    )
    install = ["apt-get", "install", "-y", "-o", "DPkg::Lock::Timeout=300", "postfix"]
    failure = ""
    for attempt in range(attempts):
        done = subprocess.run(install, env=env, capture_output=True)
        if done.returncode == 0 and find_smtp_sink():
            return
        failure = done.stderr.decode(errors="replace")[-2000:]
        if "Unable to locate package" in failure or "404" in failure:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
        # Another engineer's apt may hold the lock past apt's own wait: back off.
        time.sleep(2 + 5 * attempt)
    raise SinkError(f"installing postfix failed:\n{failure}")


def ensure_smtp_sink() -> str:
    """
    :returns: the path of ``smtp-sink``, installing postfix first if needed.
    :raises SinkError: if it cannot be had.
    """
    path = find_smtp_sink()
    if path is None:
        install_postfix()
        path = find_smtp_sink()
    if path is None:
        raise SinkError("postfix is installed but smtp-sink is not on the PATH")
    return path


def free_port() -> int:
    """
    :returns: a loopback TCP port that was free a moment ago.
    """
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def postfix_version() -> str:
    """
    :returns: the installed postfix package's version, or ``"unknown"``.
    """
    try:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "postfix"], capture_output=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return done.stdout.decode() or "unknown"


class Sink:
    """
    A running ``smtp-sink`` on 127.0.0.1, stopped on exit from a ``with`` block.

    Its ``-c`` counters go to a temporary file (not the messages: those are discarded),
    so the driver can check that every message of a run reached it.

    :ivar port: the port it listens on.
    :ivar path: the ``smtp-sink`` executable.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._counters: IO[bytes] | None = None

    def command(self, port: int) -> list[str]:
        """
        :returns: the command line: counters on (``-c``), up to
            :data:`MAX_CONNECTIONS` sessions at once, no capture to disk (no
            ``-d``/``-D``), and as ``nobody`` when run as root (which it requires).
        """
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        return [
            self.path,
            "-c",
            *user,
            "-m",
            str(MAX_CONNECTIONS),
            f"127.0.0.1:{port}",
            str(BACKLOG),
        ]

    def start(self, attempts: int = 5, wait: float = 10.0) -> None:
        """
        Start it on a free port and wait until it accepts connections.

        :param wait: seconds to wait for it to listen, per attempt.
        :raises SinkError: if it never listens (e.g. each port was taken meanwhile).
        """
        errors = []
        for _ in range(attempts):
            port = free_port()
            # Kept open for the sink's life, closed by stop().
            self._counters = tempfile.TemporaryFile()  # noqa: SIM115
            # A file, not a pipe, for its complaints: a full pipe would stall it.
            with tempfile.TemporaryFile() as complaints:
                process = subprocess.Popen(
                    self.command(port), stdout=self._counters, stderr=complaints
                )
                if self._listening(process, port, wait):
                    self._process, self.port = process, port
                    return
                process.kill()
                process.wait()
                complaints.seek(0)
                errors.append(complaints.read().decode(errors="replace").strip())
            self._counters.close()
        raise SinkError("smtp-sink did not start:\n" + "\n".join(errors))

    @staticmethod
    def _listening(process: subprocess.Popen[bytes], port: int, wait: float) -> bool:
        """
        Poll, for at most ``wait`` seconds, until ``process`` accepts connections.

        :returns: whether it does; ``False`` if it exited or the time ran out.
        """
        deadline = time.monotonic() + wait
        while process.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                time.sleep(0.02)
                continue
            return True
        return False

    @property
    def pid(self) -> int:
        """
        :returns: the running sink's process id.
        """
        assert self._process is not None, "start() first"
        return self._process.pid

    def messages(self) -> int:
        """
        :returns: how many messages it has accepted since it started.
        """
        assert self._counters is not None
        self._counters.seek(0, os.SEEK_END)
        end = self._counters.tell()
        self._counters.seek(max(0, end - 256))
        found = _COUNTERS.findall(self._counters.read())
        return int(found[-1][2]) if found else 0

    def wait_for_messages(self, count: int, timeout: float = 5.0) -> int:
        """
        Wait (polling, with a bound) until at least ``count`` messages were accepted:
        the sink may write its counter a moment after its reply reached the client.

        :returns: the count it reached.
        """
        deadline = time.monotonic() + timeout
        seen = self.messages()
        while seen < count and time.monotonic() < deadline:
            time.sleep(0.01)
            seen = self.messages()
        return seen

    def stop(self) -> None:
        """
        Stop it and remove its counters file.
        """
        if self._process is not None:
            self._process.terminate()
            self._process.communicate()
            self._process = None
        if self._counters is not None:
            self._counters.close()
            self._counters = None

    def __enter__(self) -> Sink:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
