"""
The daemon's listening ports (``--control-port``, ``--status-port``):
Twisted's one reading of a server endpoint description, made before anything
listens (:func:`read_description`), and the service that listens on it
(:class:`ListeningService`), whose failure to listen (a port in use, a port
it may not bind, a socket in a missing folder) is a
:class:`~txsmtpclient._tapconfig.StartupError`: one line saying what is
wrong and what to do, with a sysexits(3) code.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtpclient._tapconfig import StartupError
from txsmtpclient.spool.sendmail import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_NOPERM,
    EX_OSERR,
    EX_UNAVAILABLE,
)

__all__ = [
    "DescriptionError",
    "ListenTarget",
    "ListeningService",
    "listen_error",
    "read_description",
]

_log = Logger(namespace="txsmtpclient.tap")


class DescriptionError(ValueError):
    """
    A server endpoint description Twisted cannot read (an unknown type, a
    bad or missing argument, an unreadable key file); the message is one
    line.
    """


@dataclass(frozen=True, slots=True)
class ListenTarget:
    """
    Where a description listens, as Twisted reads it.

    :ivar kind: ``"tcp"`` (``tcp:``, ``tcp6:``, ``ssl:``), ``"unix"``, or
        ``"other"`` for types whose listening this module cannot see
        (``systemd:``, plugins).
    :ivar port: the TCP port (``tcp``).
    :ivar interface: the address it binds (``tcp``); ``""`` for every one.
    :ivar path: the socket's path (``unix``).
    :ivar mode: the socket's permissions (``unix``).
    :ivar tls: whether connections are TLS (``ssl:``).
    """

    kind: str
    port: int = 0
    interface: str = ""
    path: str = ""
    mode: int = 0
    tls: bool = False

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"the socket {self.path}"
        if self.kind == "tcp":
            where = self.interface if self.interface not in ("", "::", "0.0.0.0") else None
            return f"port {self.port} on {where or 'every interface'}"
        return "its endpoint"


def read_description(description: str) -> ListenTarget:
    """
    Twisted's reading of a server endpoint description (the one
    :class:`ListeningService` will listen by), without listening: the
    description is parsed by ``serverFromString`` and, for Twisted's own
    TCP, SSL and Unix endpoints, listened on with a memory reactor that
    records the call.  ``ssl:`` key and certificate files are read.

    :raises DescriptionError: for a description Twisted refuses.
    """
    from twisted.internet.endpoints import (
        SSL4ServerEndpoint,
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
        UNIXServerEndpoint,
        serverFromString,
    )
    from twisted.internet.protocol import Factory
    from twisted.internet.testing import MemoryReactor

    recorder = MemoryReactor()
    try:
        endpoint = serverFromString(recorder, description)
    except OSError as e:
        what = e.filename if e.filename is not None else description
        raise DescriptionError(f"cannot read {what}: {e.strerror or e}") from None
    except Exception as e:
        # Anything else Twisted's parser raises is about the text it was
        # given (ValueError for an unknown type or a bad number, TypeError
        # for a missing or extra argument, OpenSSL's errors for a key that
        # is not PEM, IndexError for systemd: with no socket inherited).
        if isinstance(e, IndexError) and description.partition(":")[0].lower() == "systemd":
            raise DescriptionError(
                "systemd passed this process no socket at that index: start the "
                "daemon from a systemd socket unit, or listen on tcp: or unix:"
            ) from None
        # "_parseTCP() got an unexpected keyword argument 'x'": the name of
        # Twisted's private function means nothing to the operator.
        reason = re.sub(r"^\w+\(\) ", "", str(e)) or type(e).__name__
        raise DescriptionError(reason) from None
    known = (TCP4ServerEndpoint, TCP6ServerEndpoint, SSL4ServerEndpoint, UNIXServerEndpoint)
    if not isinstance(endpoint, known):
        # Listening on another type might act (a plugin may ignore the
        # reactor it is given): say nothing about where it listens.
        return ListenTarget("other")
    listening: Deferred[Any] = endpoint.listen(Factory())  # type: ignore[no-untyped-call]
    listening.addErrback(lambda _: None)
    if recorder.unixServers:
        path, _factory, _backlog, mode, _pid = recorder.unixServers[0]
        return ListenTarget("unix", path=os.fsdecode(path), mode=mode)
    if recorder.sslServers:
        port, _factory, _context, _backlog, interface = recorder.sslServers[0]
        return ListenTarget("tcp", port=port, interface=interface, tls=True)
    port, _factory, _backlog, interface = recorder.tcpServers[0]
    return ListenTarget("tcp", port=port, interface=interface)


def listen_error(option: str, description: str, error: BaseException) -> StartupError | None:
    """
    What a failure to listen tells the operator: one line naming the option,
    what is wrong and what to do, and the sysexits(3) code (69 in use, 77
    not permitted, 73 a socket's folder missing, 78 an address this machine
    does not have, 71 another system error).

    :returns: the error to raise, or ``None`` for an exception that is not
        a failure to listen (a bug, raised as it is).
    """
    if not isinstance(error, (CannotListenError, OSError)):
        return None
    try:
        target = read_description(description)
    except DescriptionError:
        target = ListenTarget("other")
    cause: object = error.socketError if isinstance(error, CannotListenError) else error
    prefix = f"{option} {description!r}: "
    other = "path" if target.kind == "unix" else "port"
    if cause == "Cannot acquire lock":
        # Twisted's lock file beside the socket: a live process holds it.
        return StartupError(
            f"{prefix}another process is listening on {target} (it holds "
            f"{target.path}.lock): stop it or give another path",
            EX_UNAVAILABLE,
        )
    code = cause.errno if isinstance(cause, OSError) else None
    reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    if code == errno.EADDRINUSE:
        return StartupError(
            f"{prefix}{target} is already in use: stop what listens there "
            f"(another txsmtp?) or give another {other}",
            EX_UNAVAILABLE,
        )
    if code in (errno.EACCES, errno.EPERM):
        if target.kind == "tcp" and 0 < target.port < 1024:
            advice = "ports below 1024 need root or CAP_NET_BIND_SERVICE: give a port above 1023"
        elif target.kind == "unix":
            advice = "give a path in a folder this user may write"
        else:
            advice = "run as a user allowed to, or give another port"
        return StartupError(f"{prefix}not permitted to listen on {target}: {advice}", EX_NOPERM)
    if code in (errno.ENOENT, errno.ENOTDIR) and target.kind == "unix":
        folder = os.path.dirname(target.path) or "."
        if code == errno.ENOENT:
            problem = f"the folder {folder} does not exist: create it or give another path"
        else:
            problem = f"{folder} is not a folder: give a path inside a folder"
        return StartupError(prefix + problem, EX_CANTCREAT)
    if code == errno.EADDRNOTAVAIL:
        return StartupError(
            f"{prefix}{target.interface or 'the address'} is not an address of this "
            "machine: give one it has, such as 127.0.0.1",
            EX_CONFIG,
        )
    return StartupError(f"{prefix}cannot listen on {target}: {reason}", EX_OSERR)


class ListeningService(Service):
    """
    Listens on an endpoint while running (what ``strports.service`` builds),
    but a failure to listen raised while starting is a
    :class:`~txsmtpclient._tapconfig.StartupError` from :func:`listen_error`
    instead of Twisted's traceback; one that comes later is logged as one
    line.

    :param endpoint: where to listen.
    :param factory: the protocol factory to listen with.
    :param option: the option the description came from, for messages.
    :param description: the description, for messages.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        *,
        option: str,
        description: str,
    ) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self._option = option
        self._description = description
        self._listening: Deferred[Any] | None = None
        self._port: IListeningPort | None = None
        self._failure: Failure | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def when_listening(self) -> Deferred[IListeningPort]:
        """
        :returns: a Deferred firing with the listening port once listening
            (at once when it is), or failing with why it could not listen.
        """
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiting.append(waiter)
        self._settle()
        return waiter

    def _settle(self) -> None:
        if self._port is None and self._failure is None:
            return
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            if self._port is not None:
                waiter.callback(self._port)
            else:
                assert self._failure is not None
                waiter.errback(self._failure)

    def privilegedStartService(self) -> None:
        """
        Start listening (twistd calls this before dropping privileges).

        :raises StartupError: when the endpoint fails to listen at once.
        """
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        """
        Start listening, unless :meth:`privilegedStartService` did.

        :raises StartupError: when the endpoint fails to listen at once.
        """
        super().startService()  # type: ignore[no-untyped-call]
        if self._listening is None:
            self._listen()

    def _listen(self) -> None:
        starting = True
        failed: list[Failure] = []
        self._port = self._failure = None

        def listened(port: IListeningPort) -> None:
            self._port = port
            self._settle()

        def failed_to_listen(failure: Failure) -> None:
            assert failure.value is not None
            cancelled = failure.check(CancelledError) is not None
            error = (
                None if cancelled else listen_error(self._option, self._description, failure.value)
            )
            self._failure = Failure(error) if error is not None else failure
            if starting:
                failed.append(self._failure)
            elif error is not None:
                _log.error("{message}", message=str(error))
            elif not cancelled:
                _log.failure("Listening on {endpoint} failed", failure, endpoint=self._description)
            # Waiters hear of it, a stop's cancellation included.
            self._settle()

        self._listening = self._endpoint.listen(self._factory)
        self._listening.addCallbacks(listened, failed_to_listen)
        starting = False
        if failed:
            failed[0].raiseException()

    def stopService(self) -> Deferred[None] | None:
        """
        Stop listening, or stop trying to.

        :returns: a Deferred firing once the port is closed, if it was open.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        listening, self._listening = self._listening, None
        if listening is None:
            return None
        listening.cancel()
        port, self._port = self._port, None
        if port is None:
            return None
        return port.stopListening()
