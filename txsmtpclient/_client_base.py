"""
The core of :class:`~txsmtpclient.SMTP`: its state, the queue of calls, the
connection and EHLO/HELO.  The smtplib-style methods build on it in
:mod:`txsmtpclient._client_security` and :mod:`txsmtpclient._client_commands`.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorThreads,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool

from txsmtpclient._calls import CallQueue
from txsmtpclient._endpoints import connect_error, resolve_endpoint
from txsmtpclient._log import Trace, Transcript, log_transaction, logging_begun
from txsmtpclient._tls import TLSPolicy, check_policy
from txsmtpclient.commands import (
    check_argument,
    encode_command,
)
from txsmtpclient.errors import (
    SMTPConnectError,
    SMTPException,
    SMTPProtocolError,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from txsmtpclient.extensions import Extensions
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, SMTPClientProtocol, Timeouts
from txsmtpclient.reply import Reply
from txsmtpclient.session import Command, Kind
from txsmtpclient.transaction import (
    Envelope,
    Plan,
)

__all__ = ["ClientBase"]

T = TypeVar("T")
_Client = TypeVar("_Client", bound="ClientBase")

SMTP_PORT = 25

# The local host's name is looked up once per process, in a thread.
_fqdn: str | None = None


async def _local_fqdn(reactor: Any) -> str:
    global _fqdn
    if _fqdn is None:
        if IReactorThreads.providedBy(reactor):
            _fqdn = await deferToThreadPool(reactor, reactor.getThreadPool(), socket.getfqdn)
        else:
            _fqdn = ""
    return _fqdn


#: What a session knows before EHLO (or after a HELO): nothing, shared and
#: read-only rather than a new empty mapping at each reset.
_NO_FEATURES = Extensions(MappingProxyType({}))

#: EHLO replies already parsed, by their text: a client opening connection
#: after connection to one relay hears the same reply each time.
_EXTENSIONS_SEEN: dict[bytes, Extensions] = {}
_EXTENSIONS_SEEN_MAX = 64


def _extensions(message: bytes) -> Extensions:
    """
    :meth:`Extensions.from_ehlo`, parsed once per distinct reply
    (``Extensions`` is immutable, so sessions may share one).
    """
    features = _EXTENSIONS_SEEN.get(message)
    if features is None:
        parsed = Extensions.from_ehlo(message)
        # Read-only, so that no session can change what another sees.
        features = Extensions(MappingProxyType(dict(parsed.features)), parsed.domain)
        if len(_EXTENSIONS_SEEN) >= _EXTENSIONS_SEEN_MAX:
            # Bounded: replies naming the client or a session id differ
            # every time; forgetting them all now and then is enough.
            _EXTENSIONS_SEEN.clear()
        _EXTENSIONS_SEEN[message] = features
    return features


class ClientBase:
    """
    State, connection and greeting shared by every part of :class:`~txsmtpclient.SMTP`.
    """

    default_port: ClassVar[int] = SMTP_PORT
    #: the greeting verb; LMTP says LHLO.
    ehlo_msg: ClassVar[str] = "EHLO"

    def __init__(
        self,
        host: str | IStreamClientEndpoint | None = None,
        port: int | None = None,
        local_hostname: str | None = None,
        timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
        reactor: IReactorTime | None = None,
        *,
        tls: TLSPolicy = "opportunistic",
        tls_options: IOpenSSLClientConnectionCreator | None = None,
        server_hostname: str | None = None,
        allow_plaintext_auth: bool = False,
        bdat_threshold: int = 64 * 1024,
        source_address: tuple[str, int] | None = None,
    ) -> None:
        self.tls: TLSPolicy = check_policy(tls)
        #: smtplib's ``source_address``: the local ``(host, port)`` to bind.
        self.source_address = source_address
        #: smtplib's ``user`` and ``password``, set by :meth:`login`, read by
        #: the ``auth_*`` methods.
        self.user: str | None = None
        self.password: str | None = None
        self._tls_options = tls_options
        self.server_hostname = server_hostname
        self.allow_plaintext_auth = allow_plaintext_auth
        self.bdat_threshold = bdat_threshold
        self._server_name = ""
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast(IReactorTime, global_reactor)
        if local_hostname is not None:
            check_argument(local_hostname, "local_hostname")
        self._reactor: Any = reactor
        self.timeouts = timeout if isinstance(timeout, Timeouts) else Timeouts.every(timeout)
        self.local_hostname = local_hostname
        self._transcript = Transcript()
        self._proto: SMTPClientProtocol | None = None
        self._connect_error: BaseException | None = None
        self._calls = CallQueue()
        #: Replies to putcmd()/send() commands that getreply() has not read.
        self._put_replies: deque[Deferred[Reply]] = deque()
        self._last_plan: (
            tuple[tuple[Envelope, Extensions | None, int | None, bool, bool], Plan] | None
        ) = None
        #: called when a send has written its message's final dot and awaits
        #: its reply, before the next queued send may start (the pool hands
        #: a waiting send to this session then).
        self._on_message_end: Callable[[], None] | None = None
        self._reset_session()
        if host is not None:
            # Nobody holds this Deferred: its failure is reported by the
            # next call that needs the connection.
            self.connect(host, port).addErrback(lambda _: None)

    # -- the queue of calls ---------------------------------------------------

    def _call(
        self, op: Callable[[], Coroutine[Any, Any, T]], pipelinable: bool = False
    ) -> Deferred[T]:
        return self._calls.call(op, pipelinable)

    def _message_end_written(self) -> None:
        """
        A send's final dot is being written (with PIPELINING): let the next
        queued send write its envelope in the same write.
        """
        if self._on_message_end is not None:
            self._on_message_end()
        self._calls.overlap()

    # -- state ------------------------------------------------------------------

    def _reset_session(self) -> None:
        self.helo_resp: bytes | None = None
        self.ehlo_resp: bytes | None = None
        self.esmtp_features: Extensions = _NO_FEATURES
        self.does_esmtp = False

    def _connection(self) -> SMTPClientProtocol:
        """
        The live connection.

        :raises SMTPServerDisconnected: naming why there is none.
        """
        proto = self._proto
        if proto is None:
            if self._connect_error is not None:
                raise SMTPServerDisconnected(
                    f"not connected: connect() failed: {self._connect_error}"
                ) from self._connect_error
            raise SMTPServerDisconnected("not connected: call connect() first")
        failure = proto.failure
        if failure is not None:
            # Of the same kind as the cause: a broken server stays a
            # protocol error (temporary, as every lost connection).
            kind = SMTPProtocolError if isinstance(failure, SMTPProtocolError) else None
            raise (kind or SMTPServerDisconnected)(
                f"the connection was lost earlier: {failure}"
            ) from failure
        return proto

    @property
    def sock(self) -> SMTPClientProtocol | None:
        """
        The connection's protocol while connected (smtplib's ``sock`` is
        not ``None`` while connected).
        """
        return self._proto if self._proto is not None and self._proto.usable else None

    def set_debuglevel(self, debuglevel: int) -> None:
        """
        Set the debug level: 1 logs every command and reply through
        :mod:`twisted.logger` (namespace ``txsmtpclient``), 2 adds
        timestamps.  While no log observer has begun (a script under
        ``task.react``), the transcript is printed to ``sys.stderr`` too, as
        smtplib prints it.  Credentials and AUTH payloads are never logged.
        """
        self._transcript.level = int(debuglevel)
        self._transcript.echo = sys.stderr if debuglevel and not logging_begun() else None

    @property
    def debuglevel(self) -> int:
        """
        smtplib's ``debuglevel`` attribute; setting it is
        :meth:`set_debuglevel`.
        """
        return self._transcript.level

    @debuglevel.setter
    def debuglevel(self, level: int) -> None:
        self.set_debuglevel(level)

    async def __aenter__(self: _Client) -> _Client:
        """
        ``async with SMTP(host) as smtp:``, as smtplib's ``with``.
        """
        return self

    async def __aexit__(self, kind: object, error: object, traceback: object) -> None:
        """
        QUIT on a normal exit (a server already gone is fine, as in
        smtplib); close the connection after an error.
        """
        if error is not None:
            await self.close()  # type: ignore[attr-defined]
            return
        with contextlib.suppress(SMTPServerDisconnected):
            await self.quit()  # type: ignore[attr-defined]

    def has_option(self, name: str) -> bool:
        """
        Whether the server advertised the extension ``name`` in its last
        EHLO reply; case is ignored.
        """
        return self.esmtp_features.has(name)

    has_extn = has_option

    # -- connecting ---------------------------------------------------------------

    #: Implicit TLS subclasses give the options to wrap each connection in,
    #: from the host name ``connect`` parsed.
    _implicit_tls: Callable[[str], IOpenSSLClientConnectionCreator] | None = None

    #: Whether each ``sendmail`` ends with a ``txsmtpclient.transaction``
    #: event (README.rst, "Transaction events"); always at debug level 1 or
    #: more.  Set it on the class for every session.
    transaction_events: bool = False

    def _tracing(self) -> bool:
        return self.transaction_events or self._transcript.level > 0

    def _new_protocol(self) -> SMTPClientProtocol:
        proto = SMTPClientProtocol(
            clock=self._reactor, timeouts=self.timeouts, transcript=self._transcript
        )
        if self._tracing():
            proto.trace = Trace()
        return proto

    def _attach_new_protocol(self) -> SMTPClientProtocol:
        """
        A protocol for a connection made by someone else (the factory), made
        this session's connection.
        """
        self._reset_session()
        self._connect_error = None
        self._proto = self._new_protocol()
        return self._proto

    def connect(
        self, host: str | IStreamClientEndpoint = "localhost", port: int | None = None
    ) -> Deferred[Reply]:
        """
        Connect to a server and read its greeting.

        :param host: a host name or address, with an optional ``":port"``
            suffix; a Twisted endpoint description (``"tcp:..."``,
            ``"tls:..."``, ``"unix:..."``); or an ``IStreamClientEndpoint``.
        :param port: the port (25 by default).
        :returns: a Deferred firing with the 220 greeting.
        :raises SMTPConnectError: (through the Deferred) when the greeting is
            not 220.
        :raises SMTPTimeoutError: when the connection or greeting takes too
            long.
        :raises SMTPServerDisconnected: when the connection is refused or
            the host unknown (temporary; Twisted's error as ``__cause__``).
        :raises SMTPArgumentError: (at once) for a malformed host or port.
        """
        endpoint, name = resolve_endpoint(
            self._reactor,
            host,
            port,
            self.default_port,
            self.timeouts.connect,
            self._implicit_tls,
            self.source_address,
        )
        return self._call(lambda: self._connect(endpoint, name))

    async def _connect(self, endpoint: IStreamClientEndpoint, name: str) -> Reply:
        if self._proto is not None and self._proto.usable:
            raise SMTPException("already connected: call quit() or close() first")
        self._reset_session()
        self._connect_error = None
        self._proto = None
        factory = Factory.forProtocol(self._new_protocol)
        factory.noisy = False
        started = self._reactor.seconds()
        attempt = endpoint.connect(factory)
        if self.timeouts.connect is not None:
            attempt.addTimeout(self.timeouts.connect, self._reactor)
        try:
            proto = cast(SMTPClientProtocol, await attempt)
        except DeferTimeoutError as e:
            self._connect_error = SMTPTimeoutError(
                f"connecting to {name or endpoint} took over {self.timeouts.connect:g} seconds",
                "connect",
            )
            raise self._connect_error from e
        except BaseException as e:
            # Refused, unreachable, no such host: an SMTPException like
            # every other failure, the original as its __cause__.
            self._connect_error = connect_error(e, name or endpoint)
            if self._connect_error is e:
                raise
            raise self._connect_error from e
        self._proto = proto
        if proto.trace is not None:
            proto.trace.add("connect", self._reactor.seconds() - started)
        self._transcript.note(f"connected to {name or endpoint}")
        self._server_name = name
        try:
            greeting = await proto.greeting
        except BaseException as e:
            self._connect_error = e
            raise
        if greeting.code != 220:
            proto.close()
            self._connect_error = SMTPConnectError(greeting.code, greeting.message)
            raise SMTPConnectError(greeting.code, greeting.message)
        return greeting

    async def _log_transaction(
        self, envelope: Envelope, transaction: Coroutine[Any, Any, dict[str, Reply]]
    ) -> dict[str, Reply]:
        """
        Run one ``sendmail`` transaction and end it with its event (see
        :func:`txsmtpclient._log.log_transaction`), sent or not.
        """
        proto = self._proto
        if proto is not None and proto.trace is None and self._tracing():
            # Asked for after connecting: from this transaction on.
            proto.trace = Trace()
        result: dict[str, Reply] | None = None
        error: BaseException | None = None
        try:
            result = await transaction
            return result
        except BaseException as e:
            error = e
            raise
        finally:
            proto = self._proto
            if proto is not None and proto.trace is not None:
                log_transaction(
                    proto.trace,
                    self._server_name,
                    envelope.sender,
                    len(envelope.recipients),
                    result,
                    error,
                )

    # -- commands ------------------------------------------------------------------

    async def _command(self, line: bytes, kind: Kind = Kind.COMMAND) -> Reply:
        return await self._connection().send(Command(kind, line))

    def docmd(self, cmd: str, argstring: str = "") -> Deferred[Reply]:
        """
        Send one command and read its reply, for private extensions and
        tests.  ``argstring`` is appended after a space.

        :returns: a Deferred firing with the reply, whatever its code.
        :raises SMTPArgumentError: for control characters, or non-ASCII
            without the server's SMTPUTF8.
        """
        check_argument(cmd, "cmd")
        check_argument(argstring, "argstring")

        async def op() -> Reply:
            line = encode_command(cmd, argstring, utf8=self.has_option("smtputf8"))
            return await self._command(line)

        return self._call(op)

    def _hostname_argument(self, name: str | None) -> str | None:
        return check_argument(name, "hostname") if name is not None else None

    async def _hello_name(self, name: str | None) -> str:
        if name:
            return name
        if self.local_hostname:
            return self.local_hostname
        fqdn = await _local_fqdn(self._reactor)
        if "." not in fqdn:
            # RFC 5321 section 4.1.4: without a real domain name, an address
            # literal of the connection's own address.
            proto = self._connection()
            address = proto.transport.getHost() if proto.transport is not None else None
            if isinstance(address, IPv4Address):
                fqdn = f"[{address.host}]"
            elif isinstance(address, IPv6Address):
                fqdn = f"[IPv6:{address.host}]"
            else:
                fqdn = fqdn or "localhost.localdomain"
        self.local_hostname = fqdn
        return fqdn

    def helo(self, name: str | None = None) -> Deferred[Reply]:
        """
        Say ``HELO``.

        :param name: the name to give; :attr:`local_hostname` by default.
        :returns: a Deferred firing with the reply, whatever its code.
        """
        checked = self._hostname_argument(name)
        return self._call(lambda: self._helo(checked))

    async def _helo(self, name: str | None) -> Reply:
        line = encode_command("HELO", await self._hello_name(name))
        reply = await self._command(line, Kind.HELO)
        self.helo_resp = reply.message
        return reply

    def ehlo(self, name: str | None = None) -> Deferred[Reply]:
        """
        Say ``EHLO`` and record the extensions the server lists (see
        :meth:`has_option` and :attr:`esmtp_features`).

        :param name: the name to give; :attr:`local_hostname` by default.
        :returns: a Deferred firing with the reply, whatever its code.
        """
        checked = self._hostname_argument(name)
        return self._call(lambda: self._ehlo(checked))

    async def _ehlo(self, name: str | None) -> Reply:
        self.esmtp_features = _NO_FEATURES
        line = encode_command(self.ehlo_msg, await self._hello_name(name))
        reply = await self._command(line, Kind.EHLO)
        self.ehlo_resp = reply.message
        # Features count only from a 250 (RFC 5321 section 4.1.1.1).
        self.does_esmtp = reply.code == 250
        if self.does_esmtp:
            self.esmtp_features = _extensions(reply.message)
        return reply
