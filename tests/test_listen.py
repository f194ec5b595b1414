"""
Tests for :mod:`txsmtpclient._listen`: Twisted's reading of a server
description, the one-line errors for a port that cannot be listened on, and
the listening service, embedded (it raises; ``twist txsmtp`` exits, see
``tests/test_tap.py``).
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs
from twisted.python.failure import Failure

from txsmtpclient import tap
from txsmtpclient._listen import (
    DescriptionError,
    ListeningService,
    ListenTarget,
    listen_error,
    read_description,
)
from txsmtpclient._tapconfig import StartupError


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


@pytest.mark.parametrize(
    ("description", "target"),
    [
        ("tcp:8025:interface=127.0.0.1", ListenTarget("tcp", 8025, "127.0.0.1")),
        ("tcp:0:127.0.0.2", ListenTarget("tcp", 0, "127.0.0.2")),
        ("tcp:8025", ListenTarget("tcp", 8025, "")),
        ("tcp6:8025:interface=\\:\\:1", ListenTarget("tcp", 8025, "::1")),
        ("unix:/run/a\\:b.sock", ListenTarget("unix", path="/run/a:b.sock", mode=0o666)),
        ("unix:/run/c.sock:mode=600", ListenTarget("unix", path="/run/c.sock", mode=0o600)),
    ],
)
def test_read_description_is_twisted_s_reading(description: str, target: ListenTarget) -> None:
    """Positional interfaces, escaped colons and modes are read as Twisted listens by them."""
    assert read_description(description) == target


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("bogus:thing", "Unknown endpoint type"),
        ("tcp:http", "invalid literal"),
        ("tcp:8025:bogus=1", "unexpected keyword argument 'bogus'"),
        ("ssl:8025:privateKey=/nonexistent/key.pem", "cannot read /nonexistent/key.pem"),
    ],
)
def test_read_description_refuses_in_one_line(description: str, message: str) -> None:
    """What Twisted refuses is a DescriptionError of one line."""
    with pytest.raises(DescriptionError, match=message) as caught:
        read_description(description)
    assert "\n" not in str(caught.value)


def _refused(port: object, code: int, interface: str = "127.0.0.1") -> CannotListenError:
    return CannotListenError(interface, port, OSError(code, "refused by the test"))


@pytest.mark.parametrize(
    ("description", "error", "exit_code", "message"),
    [
        (
            "tcp:80:interface=127.0.0.1",
            _refused(80, errno.EACCES),
            77,
            "not permitted to listen on port 80 on 127.0.0.1: ports below 1024 need root "
            "or CAP_NET_BIND_SERVICE: give a port above 1023",
        ),
        (
            "unix:/run/txsmtp/c.sock",
            _refused(b"/run/txsmtp/c.sock", errno.EACCES, ""),
            77,
            "not permitted to listen on the socket /run/txsmtp/c.sock: give a path in a "
            "folder this user may write",
        ),
        (
            "unix:/run/txsmtp/c.sock",
            CannotListenError(None, b"/run/txsmtp/c.sock", "Cannot acquire lock"),
            69,
            "another process is listening on the socket /run/txsmtp/c.sock (it holds "
            "/run/txsmtp/c.sock.lock)",
        ),
        (
            "unix:/run/missing/c.sock",
            FileNotFoundError(errno.ENOENT, "No such file or directory"),
            73,
            "the folder /run/missing does not exist",
        ),
        (
            "unix:/etc/hostname/c.sock",
            CannotListenError(None, b"/etc/hostname/c.sock", OSError(errno.ENOTDIR, "Not a dir")),
            73,
            "/etc/hostname is not a folder: give a path inside a folder",
        ),
        (
            "tcp:8025",
            _refused(8025, errno.EADDRINUSE, ""),
            69,
            "port 8025 on every interface is already in use",
        ),
        (
            "tcp:8025:interface=127.0.0.1",
            _refused(8025, errno.ENOBUFS),
            71,
            "cannot listen on port 8025 on 127.0.0.1: refused by the test",
        ),
    ],
)
def test_listen_error_says_what_and_what_to_do(
    description: str, error: BaseException, exit_code: int, message: str
) -> None:
    """Each way listening fails is one line and a sysexits code."""
    result = listen_error("--control-port", description, error)
    assert isinstance(result, StartupError)
    assert str(result).startswith(f"--control-port {description!r}: {message}")
    assert "\n" not in str(result)
    assert result.exit_code == exit_code


def test_listen_error_leaves_other_exceptions_alone() -> None:
    """An exception that is not a failure to listen is not reworded (it is a bug)."""
    assert listen_error("--status-port", "tcp:0", ZeroDivisionError()) is None


def test_listening_service_port_in_use_raises_startup_error(held_port: int) -> None:
    """Embedded, a port in use raises StartupError (exit code 69) from startService."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    description = f"tcp:{held_port}:interface=127.0.0.1"
    service = ListeningService(
        TCP4ServerEndpoint(_reactor(), held_port, interface="127.0.0.1"),
        Factory.forProtocol(Protocol),
        option="--status-port",
        description=description,
    )
    with pytest.raises(StartupError, match="is already in use") as caught:
        service.startService()
    assert caught.value.exit_code == 69
    failed = service.when_listening()
    errors: list[Any] = []
    failed.addErrback(errors.append)
    assert errors and errors[0].check(StartupError)
    assert service.stopService() is None


@pytest_twisted.ensureDeferred
async def test_listening_service_listens_and_stops() -> None:
    """when_listening() fires with the port; stopService closes it."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    service = ListeningService(
        TCP4ServerEndpoint(_reactor(), 0, interface="127.0.0.1"),
        Factory.forProtocol(Protocol),
        option="--status-port",
        description="tcp:0:interface=127.0.0.1",
    )
    service.startService()
    port = await service.when_listening()
    number = port.getHost().port
    again = await service.when_listening()
    assert again is port
    await service.stopService()
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("127.0.0.1", number))
    finally:
        probe.close()


def test_embedded_daemon_raises_rather_than_exits(tmp_path: Path, held_port: int) -> None:
    """makeService's daemon, not run by twist, raises StartupError for a port in use."""
    options = tap.Options()
    options.parseOptions(  # type: ignore[no-untyped-call]
        [
            "--spool",
            str(tmp_path / "spool"),
            "--relay",
            "127.0.0.1:2525",
            "--status-port",
            f"tcp:{held_port}:interface=127.0.0.1",
        ]
    )
    daemon = tap.makeService(options)
    with pytest.raises(StartupError, match="already in use"):
        daemon.startService()
    assert not daemon.getServiceNamed("spool").running


class _PendingEndpoint:
    """An endpoint whose listen() the test settles."""

    def __init__(self) -> None:
        self.listening: Deferred[Any] = Deferred()

    def listen(self, factory: object) -> Deferred[Any]:
        return self.listening


def _pending_service() -> tuple[ListeningService, _PendingEndpoint, list[Failure]]:
    """A started service whose endpoint has not listened yet, and its waiter's failures."""
    endpoint = _PendingEndpoint()
    service = ListeningService(
        endpoint,  # type: ignore[arg-type]
        Factory.forProtocol(Protocol),
        option="--control-port",
        description="tcp:8025:interface=127.0.0.1",
    )
    service.startService()
    errors: list[Failure] = []
    service.when_listening().addErrback(errors.append)
    assert not errors
    return service, endpoint, errors


def test_stop_while_listening_is_pending_fails_its_waiters() -> None:
    """Stopped before the endpoint listened, when_listening() fails: none is left unfired."""
    service, _, errors = _pending_service()
    service.stopService()
    assert errors and errors[0].check(CancelledError)


def test_a_later_failure_to_listen_is_logged_in_one_line() -> None:
    """An endpoint that fails after start is logged as the same one line, and waiters fail."""
    _, endpoint, errors = _pending_service()
    with capturedLogs() as events:
        endpoint.listening.errback(
            CannotListenError("127.0.0.1", 8025, OSError(errno.EADDRINUSE, "in use"))
        )
    messages = [e["message"] for e in events if e.get("log_namespace") == "txsmtpclient.tap"]
    assert messages == [
        "--control-port 'tcp:8025:interface=127.0.0.1': port 8025 on 127.0.0.1 is already "
        "in use: stop what listens there (another txsmtp?) or give another port"
    ]
    assert errors and errors[0].check(StartupError)
