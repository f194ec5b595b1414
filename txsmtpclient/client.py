"""
:class:`SMTP`: smtplib's SMTP object for Twisted.

Every method that talks to the server returns a Deferred.  Calls need not
wait for each other: each is queued and runs when the one before it has
finished, so ``s = SMTP("localhost"); s.sendmail(f, t, m); d = s.quit()``
works as the blocking original does.  A call that fails does not stop the
queue; a later call that needs what failed (a connection, say) fails with an
error naming the earlier cause.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Coroutine, Sequence
from email.message import Message
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

from txsmtpclient._body import Body, BodySource, body_source, send_bdat, send_data
from txsmtpclient._calls import CallQueue
from txsmtpclient._endpoints import resolve_endpoint
from txsmtpclient._exchange import (
    authenticate,
    reset_after_failure,
    send_envelope,
    tls_handshake,
)
from txsmtpclient._log import Transcript
from txsmtpclient._tls import TLSPolicy, check_policy, client_tls_options
from txsmtpclient.auth import (
    choose_mechanism,
    mechanism_for,
)
from txsmtpclient.commands import (
    check_argument,
    check_options,
    encode_command,
    quote_address,
)
from txsmtpclient.errors import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupportedError,
    SMTPProtocolError,
    SMTPServerDisconnected,
    SMTPTimeoutError,
    SMTPTLSError,
)
from txsmtpclient.extensions import Extensions
from txsmtpclient.message import prepare_message
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, SMTPClientProtocol, Timeouts
from txsmtpclient.reply import Reply
from txsmtpclient.session import Command, Kind
from txsmtpclient.transaction import (
    DSN,
    Envelope,
    Plan,
    Refused,
    plan_transaction,
)

__all__ = ["SMTP", "SMTP_SSL"]

T = TypeVar("T")

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


class SMTP:
    """
    An SMTP client session, with smtplib's methods.

    :param host: when given, :meth:`connect` starts at once with ``host`` and
        ``port``; its failure is reported by the calls queued after it.
    :param port: the port; see :meth:`connect`.
    :param local_hostname: the name sent with EHLO/HELO; by default the
        local host's fully qualified name (looked up in a thread), or the
        connection's address literal when that name has no dot.
    :param timeout: a :class:`Timeouts` for each stage, or one number of
        seconds for all (as smtplib's ``timeout``); defaults to RFC 5321's.
    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``; the global
        reactor when ``None``.
    :param tls: ``"opportunistic"`` (the default) upgrades with STARTTLS
        whenever the server offers it; ``"required"`` fails closed with
        :class:`SMTPTLSError` when it does not or the handshake fails, never
        falling back to plaintext; ``"never"`` stays in the clear.
        Certificates are always verified.
    :param tls_options: TLS client options (``optionsForClientTLS(...)``),
        for a private CA or a client certificate.
    :param server_hostname: the name to verify the certificate against, when
        the connection was given as an endpoint.
    :param allow_plaintext_auth: let :meth:`login` send credentials over a
        connection without TLS.
    :param bdat_threshold: with CHUNKING, messages larger than this (and
        streams of unknown size) go by BDAT instead of DATA.

    :ivar esmtp_features: the extensions of the last EHLO reply.
    :ivar does_esmtp: whether the last EHLO succeeded.
    :ivar ehlo_resp: the message of the last EHLO reply, or ``None``.
    :ivar helo_resp: the message of the last HELO reply, or ``None``.
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
    ) -> None:
        self.tls: TLSPolicy = check_policy(tls)
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
        self._last_plan: (
            tuple[tuple[Envelope, Extensions | None, int | None, bool], Plan] | None
        ) = None
        self._reset_session()
        if host is not None:
            # Nobody holds this Deferred: its failure is reported by the
            # next call that needs the connection.
            self.connect(host, port).addErrback(lambda _: None)

    # -- the queue of calls ---------------------------------------------------

    def _call(self, op: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        return self._calls.call(op)

    # -- state ------------------------------------------------------------------

    def _reset_session(self) -> None:
        self.helo_resp: bytes | None = None
        self.ehlo_resp: bytes | None = None
        self.esmtp_features: Extensions = Extensions()
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
                )
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
        timestamps.  Credentials and AUTH payloads are never logged.
        """
        self._transcript.level = int(debuglevel)

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

    def _new_protocol(self) -> SMTPClientProtocol:
        return SMTPClientProtocol(
            clock=self._reactor, timeouts=self.timeouts, transcript=self._transcript
        )

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
            long; ``OSError`` subclasses when the connection is refused.
        """
        endpoint, name = resolve_endpoint(
            self._reactor,
            host,
            port,
            self.default_port,
            self.timeouts.connect,
            self._implicit_tls,
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
            self._connect_error = e
            raise
        self._proto = proto
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
        self.esmtp_features = Extensions()
        line = encode_command(self.ehlo_msg, await self._hello_name(name))
        reply = await self._command(line, Kind.EHLO)
        self.ehlo_resp = reply.message
        # Features count only from a 250 (RFC 5321 section 4.1.1.1).
        self.does_esmtp = reply.code == 250
        if self.does_esmtp:
            self.esmtp_features = _extensions(reply.message)
        return reply

    async def _ehlo_or_helo_if_needed(self, tls_policy: bool = True) -> None:
        if self.helo_resp is None and self.ehlo_resp is None:
            reply = await self._ehlo(None)
            if not 200 <= reply.code < 300:
                if self.ehlo_msg != "EHLO":
                    raise SMTPHeloError(reply.code, reply.message)
                reply = await self._helo(None)
                if not 200 <= reply.code < 300:
                    raise SMTPHeloError(reply.code, reply.message)
        if tls_policy:
            await self._apply_tls_policy()

    def ehlo_or_helo_if_needed(self) -> Deferred[None]:
        """
        Say EHLO, or HELO when EHLO is refused, unless one was said already.

        :raises SMTPHeloError: when the server refuses both.
        """
        return self._call(lambda: self._ehlo_or_helo_if_needed())

    def help(self, args: str = "") -> Deferred[bytes]:
        """
        Ask for ``HELP``.

        :returns: a Deferred firing with the reply's message, as smtplib.
        """
        check_argument(args, "args")

        async def op() -> bytes:
            return (await self._command(encode_command("HELP", args))).message

        return self._call(op)

    def rset(self) -> Deferred[Reply]:
        """
        Send ``RSET``: abandon the current mail transaction.
        """
        return self._call(lambda: self._command(b"RSET\r\n", Kind.RSET))

    def noop(self) -> Deferred[Reply]:
        """
        Send ``NOOP``.
        """
        return self._call(lambda: self._command(b"NOOP\r\n"))

    def _address_command(self, verb: str, address: str) -> Deferred[Reply]:
        check_argument(address, "address")
        # smtplib sends the bare address, without angle brackets.
        bare = quote_address(address)[1:-1]

        async def op() -> Reply:
            line = encode_command(verb, bare, utf8=self.has_option("smtputf8"))
            return await self._command(line)

        return self._call(op)

    def verify(self, address: str) -> Deferred[Reply]:
        """
        Ask the server about ``address`` with ``VRFY``.

        :returns: a Deferred firing with the reply (250 with the full
            address when valid; 4xx/5xx otherwise; many servers say 252).
        """
        return self._address_command("VRFY", address)

    vrfy = verify

    def expn(self, address: str) -> Deferred[Reply]:
        """
        Expand a mailing list with ``EXPN``.
        """
        return self._address_command("EXPN", address)

    def mail(self, sender: str, options: Sequence[str] = ()) -> Deferred[Reply]:
        """
        Send ``MAIL FROM:`` with ``options`` (sent only after a successful
        EHLO, as smtplib).

        :returns: a Deferred firing with the reply, whatever its code.
        :raises SMTPNotSupportedError: for SMTPUTF8 or a non-ASCII address
            when the server lacks SMTPUTF8.
        """
        return self._envelope_command("MAIL", "FROM:", sender, options, Kind.MAIL)

    def rcpt(self, recip: str, options: Sequence[str] = ()) -> Deferred[Reply]:
        """
        Send ``RCPT TO:`` with ``options``.

        :returns: a Deferred firing with the reply, whatever its code.
        """
        return self._envelope_command("RCPT", "TO:", recip, options, Kind.RCPT)

    def _envelope_command(
        self, verb: str, prefix: str, address: str, options: Sequence[str], kind: Kind
    ) -> Deferred[Reply]:
        quoted = quote_address(address)
        checked = check_options(options, f"{verb.lower()} option")

        async def op() -> Reply:
            opts = checked if self.does_esmtp else ()
            utf8 = not quoted.isascii() or any(o.upper() == "SMTPUTF8" for o in opts)
            if utf8 and not self.has_option("smtputf8"):
                raise SMTPNotSupportedError("SMTPUTF8 is not supported by the server")
            tail = "".join(" " + o for o in opts)
            line = encode_command(verb, f"{prefix}{quoted}{tail}", utf8=utf8)
            return await self._command(line, kind)

        return self._call(op)

    def data(self, msg: Body) -> Deferred[Reply]:
        """
        Send ``DATA`` and then the message: line endings made CRLF, lines
        starting with "." doubled, the final ``CRLF.CRLF`` added.

        :param msg: ``bytes``, an ASCII ``str``, a binary file, an iterable
            or async iterable of ``bytes``, or an ``IBodyProducer``; read
            chunk by chunk under flow control.
        :returns: a Deferred firing with the reply to the final dot,
            whatever its code.
        :raises SMTPDataError: when the reply to DATA is not 354.
        """
        source = body_source(msg)

        async def op() -> Reply:
            proto = self._connection()
            # A stream's first chunk is read (and its type checked) first.
            await source.prime(self._reactor)
            reply = await proto.send(Command(Kind.DATA, b"DATA\r\n"))
            if reply.code != 354:
                raise SMTPDataError(reply.code, reply.message)
            return (await send_data(proto, source, self._reactor))[0]

        return self._call(op)

    # -- sendmail ------------------------------------------------------------------

    def sendmail(
        self,
        from_addr: str,
        to_addrs: str | Sequence[str],
        msg: Body,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        *,
        options: Sequence[str] = (),
        dsn_ret: str | None = None,
        dsn_envid: str | None = None,
        dsn_notify: Sequence[str] | None = None,
        dsn_orcpt: bool = False,
    ) -> Deferred[dict[str, Reply]]:
        """
        Send one message: EHLO (or HELO) if not yet said, STARTTLS as the TLS
        policy asks, MAIL, one RCPT per recipient, then DATA (or BDAT when
        the server offers CHUNKING and the message is large or
        ``BODY=BINARYMIME``).  MAIL, RCPT and DATA go in one write when the
        server offers PIPELINING (RFC 2920).

        ESMTP options are passed only when their extension is advertised;
        ``SIZE=`` is added when SIZE is, ``SMTPUTF8`` for non-ASCII
        addresses, ``BODY=8BITMIME`` for 8-bit data.

        :param from_addr: the envelope sender.
        :param to_addrs: one address or a sequence of addresses.
        :param msg: ``bytes``, an ASCII ``str``, a binary file, an iterable
            or async iterable of ``bytes``, or an ``IBodyProducer``.
        :param mail_options: MAIL parameters (smtplib's name; ``options`` is
            accepted too, as in the original documentation).
        :param rcpt_options: RCPT parameters for every recipient.
        :param dsn_ret: RFC 3461 ``RET``: ``"FULL"`` or ``"HDRS"``.
        :param dsn_envid: RFC 3461 ``ENVID``, sent as xtext.
        :param dsn_notify: RFC 3461 ``NOTIFY``: some of ``"SUCCESS"``,
            ``"FAILURE"``, ``"DELAY"``, or ``("NEVER",)``.
        :param dsn_orcpt: send each recipient's address as ``ORCPT``.
        :returns: a Deferred firing, when at least one recipient was
            accepted, with ``{address: reply}`` for each refused recipient:
            a :class:`~txsmtpclient.transaction.Refused`, a dict that also
            holds the reply to the end of the message as ``.final`` (with
            the relay's queue id).
        :raises SMTPArgumentError: (at once) for bad arguments.
        :raises SMTPHeloError: when the server refuses EHLO and HELO.
        :raises SMTPSenderRefused: when MAIL is refused (or the message is
            over the server's SIZE limit: 552, before MAIL is sent).
        :raises SMTPRecipientsRefused: when every recipient is refused.
        :raises SMTPDataError: when the message is refused.
        :raises SMTPNotSupportedError: for non-ASCII addresses or 8-bit data
            the server cannot take, or TLS the policy requires and the server
            lacks.
        """
        dsn = DSN.check(dsn_ret, dsn_envid, dsn_notify, dsn_orcpt)
        envelope = Envelope.check(
            from_addr,
            to_addrs,
            # Checked before joining: tuple("SMTPUTF8") would split a bare
            # string into letters instead of refusing it.
            check_options(mail_options, "mail option") + check_options(options, "mail option"),
            rcpt_options,
            dsn,
        )
        return self._send_checked(envelope, body_source(msg))

    def _send_checked(self, envelope: Envelope, source: BodySource) -> Deferred[dict[str, Reply]]:
        """
        :meth:`sendmail` for arguments already checked (the pool checks them
        before it takes a connection, and need not pay for it twice).
        """
        return self._call(lambda: self._sendmail(envelope, source))

    def send_message(
        self,
        msg: Message,
        from_addr: str | None = None,
        to_addrs: str | Sequence[str] | None = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
    ) -> Deferred[dict[str, Reply]]:
        """
        Send an :class:`email.message.Message` (or ``EmailMessage``) as
        smtplib does: the sender from ``Sender`` or ``From`` and the
        recipients from ``To``, ``Cc`` and ``Bcc`` (the latest ``Resent-*``
        block when there is one) unless given; ``Bcc`` and ``Resent-Bcc``
        left out of what is sent; SMTPUTF8 when an address needs it.

        :returns: as :meth:`sendmail`.
        :raises SMTPArgumentError: when no sender or recipient can be found.
        :raises ValueError: for more than one ``Resent-`` block.
        """
        prepared = prepare_message(msg, from_addr, to_addrs)
        mail_options = check_options(mail_options, "mail option")
        return self.sendmail(
            prepared.sender,
            prepared.recipients,
            prepared.data,
            prepared.options_with(mail_options),
            rcpt_options,
        )

    async def _sendmail(self, envelope: Envelope, source: BodySource) -> dict[str, Reply]:
        # A stream's first chunk is read (and its type checked) before
        # anything is sent, so a wrong type raises with the session intact.
        await source.prime(self._reactor)
        await self._ehlo_or_helo_if_needed()
        proto = self._connection()
        features = self.esmtp_features if self.does_esmtp else None
        eight_bit = source.eight_bit
        # A stream's content is unknown before MAIL: declare 8BITMIME when
        # the server has it, otherwise check each chunk as it is read.
        streamed_8bit = eight_bit is None and features is not None and features.has("8bitmime")
        key = (envelope, features, source.size, bool(eight_bit) or streamed_8bit)
        cached = self._last_plan
        if cached is not None and cached[0] == key:
            # The same envelope to the same server again (a batch of mail
            # to one list): its command lines depend on nothing else.
            plan = cached[1]
        else:
            plan = plan_transaction(*key)
            self._last_plan = (key, plan)
        if plan.dropped:
            self._transcript.note(
                f"options not advertised by the server, left out: {plan.dropped}"
            )
        refuse_8bit = eight_bit is None and not streamed_8bit and not plan.binary
        bdat = (
            features is not None
            and features.has("chunking")
            and (plan.binary or source.size is None or source.size > self.bdat_threshold)
        )
        pipelining = features is not None and features.has("pipelining")
        recipients = envelope.recipients
        refused = await send_envelope(proto, plan, envelope.sender, recipients, pipelining, bdat)
        accepted = [r for r in recipients if r not in refused]
        expected = self._final_reply_count(len(accepted))
        try:
            if bdat:
                finals = await send_bdat(
                    proto,
                    source,
                    self._reactor,
                    expected,
                    pipelining,
                    plan.binary,
                    refuse_8bit,
                )
            else:
                finals = await send_data(proto, source, self._reactor, expected, refuse_8bit)
        except SMTPDataError:
            await self._reset_after_failure()
            raise
        return await self._judge_final(accepted, refused, finals)

    def _final_reply_count(self, accepted: int) -> int:
        """
        Replies to the end of the message: one for SMTP.
        """
        return 1

    async def _judge_final(
        self, accepted: list[str], refused: dict[str, Reply], finals: list[Reply]
    ) -> Refused:
        final = finals[0]
        if final.code != 250:
            await self._reset_after_failure()
            raise SMTPDataError(final.code, final.message)
        return Refused.with_replies(refused, finals)

    async def _reset_after_failure(self) -> None:
        if self._proto is not None:
            await reset_after_failure(self._proto)

    # -- TLS and AUTH ------------------------------------------------------------

    def starttls(self, context: IOpenSSLClientConnectionCreator | None = None) -> Deferred[Reply]:
        """
        Switch the connection to TLS (RFC 3207), then say EHLO again: the
        feature list from before TLS is dropped.

        :param context: TLS client options (``optionsForClientTLS(...)``);
            by default the ones given to the constructor, or options that
            verify the certificate against the system's trust roots and the
            server's host name.
        :returns: a Deferred firing with the reply to STARTTLS.
        :raises SMTPNotSupportedError: when the server does not offer
            STARTTLS.
        :raises SMTPTLSError: when the handshake fails (the connection is
            closed).
        """
        return self._call(lambda: self._starttls(context))

    def _server_tls_options(self) -> IOpenSSLClientConnectionCreator:
        if self._tls_options is not None:
            return self._tls_options
        name = self.server_hostname or self._server_name
        if not name:
            raise SMTPTLSError(
                "cannot verify the server's certificate: no host name is known for it; "
                "pass server_hostname= or tls_options="
            )
        return client_tls_options(name)

    async def _starttls(self, context: IOpenSSLClientConnectionCreator | None) -> Reply:
        await self._ehlo_or_helo_if_needed(tls_policy=False)
        proto = self._connection()
        if proto.tls:
            raise SMTPException("TLS is already active on this connection")
        if not self.has_option("starttls"):
            raise SMTPNotSupportedError("STARTTLS extension not supported by server.")
        reply = await proto.starttls(context or self._server_tls_options())
        if reply.code != 220:
            return reply
        self._reset_session()
        await tls_handshake(proto, self.timeouts.command, self._reactor)
        ehlo = await self._ehlo(None)
        if ehlo.code != 250:
            raise SMTPHeloError(ehlo.code, ehlo.message)
        return reply

    async def _apply_tls_policy(self) -> None:
        proto = self._connection()
        if proto.tls or self.tls == "never":
            return
        if self.has_option("starttls"):
            reply = await self._starttls(None)
            if reply.code == 220 or self.tls != "required":
                return
            refusal = f"the server refused STARTTLS: {reply.code} {reply.text}"
        else:
            refusal = "the server does not offer STARTTLS"
        if self.tls == "required":
            proto.close()
            raise SMTPTLSError(f'tls="required" but {refusal}; nothing was sent in the clear')

    def login(
        self,
        user: str,
        password: str,
        mechanism: str | None = None,
        *,
        initial_response_ok: bool = True,
    ) -> Deferred[Reply]:
        """
        Authenticate (RFC 4954) with the strongest mechanism both sides
        have among SCRAM-SHA-256, CRAM-MD5, PLAIN and LOGIN, or the one named
        (``"XOAUTH2"`` with an OAuth 2.0 token as ``password``).

        Refused over a connection without TLS unless the SMTP object was
        made with ``allow_plaintext_auth=True``.  Credentials and AUTH
        payloads never reach the debug log.

        :returns: a Deferred firing with the 235 reply.
        :raises SMTPNotSupportedError: when the server offers no AUTH, or no
            mechanism in common, or the connection is not encrypted.
        :raises SMTPAuthenticationError: when the server refuses the
            credentials (with its reply), or its SCRAM proof is wrong.
        """
        check_argument(user, "user")
        if not isinstance(password, str):
            raise TypeError(f"password must be str, not {type(password).__name__}")
        return self._call(lambda: self._login(user, password, mechanism, initial_response_ok))

    async def _login(
        self, user: str, password: str, mechanism: str | None, initial_response_ok: bool
    ) -> Reply:
        await self._ehlo_or_helo_if_needed()
        proto = self._connection()
        if not self.has_option("auth"):
            raise SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
        if not proto.tls and not self.allow_plaintext_auth:
            raise SMTPNotSupportedError(
                "refusing to send credentials over a connection without TLS: use STARTTLS "
                "or implicit TLS, or pass allow_plaintext_auth=True"
            )
        offered = self.esmtp_features.auth_mechanisms
        if mechanism is None:
            name = choose_mechanism(offered)
        else:
            name = mechanism.upper()
            if name not in offered:
                raise SMTPNotSupportedError(
                    f"the server does not offer AUTH {name}; it offers {sorted(offered)}"
                )
        mech = mechanism_for(name, user, password)
        reply = await authenticate(proto, mech, initial_response_ok)
        if reply.code not in (235, 503):
            raise SMTPAuthenticationError(reply.code, reply.message)
        return reply

    # -- ending ---------------------------------------------------------------------

    def quit(self) -> Deferred[Reply]:
        """
        Send ``QUIT`` and close the connection.

        :returns: a Deferred firing with the reply to QUIT.
        """

        async def op() -> Reply:
            proto = self._connection()
            try:
                reply = await proto.send(Command(Kind.QUIT, b"QUIT\r\n"))
            finally:
                proto.close()
                self._reset_session()
            await proto.closed
            return reply

        return self._call(op)

    def close(self) -> Deferred[None]:
        """
        Close the connection without QUIT, once the calls queued before
        this one have finished.

        :returns: a Deferred firing with ``None`` once the connection is gone.
        """

        async def op() -> None:
            proto = self._proto
            self._reset_session()
            if proto is not None:
                proto.close()
                await proto.closed

        return self._call(op)


class SMTP_SSL(SMTP):
    """
    SMTP over implicit TLS (RFC 8314, port 465): the connection is
    encrypted from its first byte, the certificate verified against the host
    name (or ``server_hostname``).

    :param context: TLS client options; by default ones that verify the
        certificate against the system's trust roots.  Other parameters as
        :class:`SMTP`.
    """

    default_port: ClassVar[int] = 465

    def __init__(
        self,
        host: str | IStreamClientEndpoint | None = None,
        port: int | None = None,
        local_hostname: str | None = None,
        timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
        reactor: IReactorTime | None = None,
        *,
        context: IOpenSSLClientConnectionCreator | None = None,
        server_hostname: str | None = None,
        allow_plaintext_auth: bool = False,
        bdat_threshold: int = 64 * 1024,
    ) -> None:
        # The connection is TLS from its first byte: no STARTTLS on top.
        super().__init__(
            host,
            port,
            local_hostname,
            timeout,
            reactor,
            tls="never",
            tls_options=context,
            server_hostname=server_hostname,
            allow_plaintext_auth=allow_plaintext_auth,
            bdat_threshold=bdat_threshold,
        )

    def _implicit_tls(self, host: str) -> IOpenSSLClientConnectionCreator:
        """
        :raises SMTPTLSError: when no host name is known to verify the
            certificate against.
        """
        if self._tls_options is not None:
            return self._tls_options
        name = self.server_hostname or host
        if not name:
            raise SMTPTLSError(
                "cannot verify the server's certificate: no host name is known for it; "
                "pass server_hostname= or context="
            )
        return client_tls_options(name)
