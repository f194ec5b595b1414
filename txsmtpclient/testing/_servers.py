"""
The two test servers: :class:`MemoryServer` (no sockets; driven by the test
with a clock) and :class:`LoopbackServer` (a real listening port on
127.0.0.1).  Both play a :class:`~._script.Script` and record what arrives.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from txsmtpclient.testing._record import ReceivedMessage, ServerSession
from txsmtpclient.testing._script import Script
from txsmtpclient.testing._server import ScriptedServerFactory, ScriptedServerProtocol
from txsmtpclient.testing._tls import TestCertificate

__all__ = ["LoopbackServer", "MemoryServer"]


class _Recorded:
    """What both servers share: the script and the sessions recorded."""

    _factory: ScriptedServerFactory

    @property
    def script(self) -> Script:
        """
        The script the server follows; change it at any time.
        """
        return self._factory.script

    @property
    def sessions(self) -> list[ServerSession]:
        """
        Every connection so far, oldest first.
        """
        return list(self._factory.sessions)

    @property
    def messages(self) -> list[ReceivedMessage]:
        """
        Every message accepted so far, in order, across sessions.
        """
        return [m for s in self._factory.sessions for m in s.messages]

    def send_unsolicited(self, data: bytes, session: int = -1) -> None:
        """
        Write raw bytes to a client now, such as ``b"421 4.3.2 shutting
        down\\r\\n"`` while it is idle.

        :param session: which connection, by index (default the newest).
        :raises IndexError: when there is no such connection.
        """
        self._factory.protocols[session].send(data)


@implementer(IStreamClientEndpoint)
class _MemoryEndpoint:
    def __init__(self, server: MemoryServer) -> None:
        self._server = server

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return succeed(self._server.connect_protocol(protocolFactory))


class MemoryServer(_Recorded):
    """
    A scripted SMTP server in memory: no sockets, no reactor.  Each
    connection made through :meth:`endpoint` is joined to the client by a
    pair of in-memory transports; bytes move when the test calls
    :meth:`flush`, and time moves when it calls :meth:`advance`.

    Give the client the same clock (``SMTP(server.endpoint(),
    reactor=server.clock)``) so its timeouts run on it too.  TLS is not
    simulated here: use :class:`LoopbackServer` for STARTTLS.

    :param script: how to behave (default: a plain ESMTP server that
        accepts everything).
    :param clock: the clock delays and the client's timeouts run on.
    """

    def __init__(self, script: Script | None = None, *, clock: Clock | None = None) -> None:
        self.clock = clock if clock is not None else Clock()
        self._factory = ScriptedServerFactory(script or Script(), self.clock)
        self._pumps: list[IOPump] = []

    def endpoint(self) -> IStreamClientEndpoint:
        """
        An endpoint whose every ``connect`` is a new session with this server.
        """
        return _MemoryEndpoint(self)

    def connect_protocol(self, factory: IProtocolFactory) -> IProtocol:
        """
        Build a client protocol with ``factory`` and join it to a new server
        session; the greeting is sent at the next :meth:`flush`.
        """
        server_address = IPv4Address("TCP", "127.0.0.1", 25)
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self._pumps))
        client = factory.buildProtocol(server_address)
        if client is None:
            raise ValueError("the protocol factory built no protocol")
        server: ScriptedServerProtocol = self._factory.buildProtocol(client_address)
        server_transport = FakeTransport(server, True, server_address, client_address)
        client_transport = FakeTransport(client, False, client_address, server_address)
        pump = connect(server, server_transport, client, client_transport, greet=False)
        self._pumps.append(pump)
        return client

    def flush(self) -> None:
        """
        Move bytes both ways on every connection until none are left (a
        scripted delay waits for :meth:`advance`).
        """
        moved = True
        while moved:
            moved = False
            for pump in self._pumps:
                moved = pump.pump() or moved

    def advance(self, seconds: float) -> None:
        """
        Let ``seconds`` pass on the clock, then :meth:`flush`.
        """
        self.flush()
        self.clock.advance(seconds)
        self.flush()


class LoopbackServer(_Recorded):
    """
    A scripted SMTP server listening on ``127.0.0.1`` and a free port, on the
    running reactor.  Use :attr:`host` and :attr:`port` (or :attr:`address`,
    ``"127.0.0.1:PORT"``) to connect.

    :param script: how to behave.
    :param tls: offer STARTTLS with a freshly generated certificate (trust it
        with :meth:`client_tls_options`).
    :param implicit_tls: speak TLS from the first byte (port 465 style)
        instead of offering STARTTLS.
    :param reactor: the reactor to listen on (default: the global one).
    :param interface: the loopback address to listen on (any of 127.0.0.0/8
        on Linux, to play several hosts).
    :param port: the port (default: one the kernel picks).
    :param hostnames: the names the generated certificate is valid for
        (default ``localhost`` and ``127.0.0.1``).
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        tls: bool = False,
        implicit_tls: bool = False,
        reactor: Any = None,
        interface: str = "127.0.0.1",
        port: int = 0,
        hostnames: tuple[str, ...] = (),
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self.certificate = TestCertificate.generate(*hostnames) if tls or implicit_tls else None
        options = self.certificate.server_options() if self.certificate is not None else None
        self._implicit = implicit_tls
        self._interface = interface
        self._wanted_port = port
        clock: IReactorTime = reactor
        self._factory = ScriptedServerFactory(
            script or Script(), clock, None if implicit_tls else options, self._wake, implicit_tls
        )
        self._server_options = options
        self._port: IListeningPort | None = None
        self._waiters: list[tuple[int, Deferred[list[ReceivedMessage]]]] = []

    def start(self) -> LoopbackServer:
        """
        Listen on a free loopback port (at once: listening does not wait).

        :returns: this server.
        """
        factory: IProtocolFactory = self._factory
        if self._implicit and self._server_options is not None:
            from twisted.protocols.tls import TLSMemoryBIOFactory

            factory = TLSMemoryBIOFactory(self._server_options, False, self._factory)
        self._port = self._reactor.listenTCP(self._wanted_port, factory, interface=self._interface)
        return self

    @property
    def host(self) -> str:
        """
        The address listened on, ``"127.0.0.1"`` by default.
        """
        return self._interface

    @property
    def port(self) -> int:
        """
        The port the server listens on.

        :raises RuntimeError: before :meth:`start`.
        """
        if self._port is None:
            raise RuntimeError("the server is not listening: call start() first")
        address = self._port.getHost()
        assert isinstance(address, IPv4Address)
        return address.port

    @property
    def address(self) -> str:
        """
        ``"HOST:PORT"``, as ``SMTP(...)`` and ``sendmail(...)`` take it.
        """
        return f"{self.host}:{self.port}"

    def client_tls_options(self, hostname: str = "127.0.0.1") -> IOpenSSLClientConnectionCreator:
        """
        Client TLS options trusting this server's generated certificate.

        :raises RuntimeError: when the server was made without TLS.
        """
        if self.certificate is None:
            raise RuntimeError("the server has no certificate: make it with tls=True")
        return self.certificate.client_options(hostname)

    def when_messages(self, count: int) -> Deferred[list[ReceivedMessage]]:
        """
        A Deferred that fires with the accepted messages once there are at
        least ``count`` (bound it with ``addTimeout``).
        """
        d: Deferred[list[ReceivedMessage]] = Deferred()
        self._waiters.append((count, d))
        self._wake()
        return d

    def _wake(self, message: ReceivedMessage | None = None) -> None:
        messages = self.messages
        waiting = []
        for count, d in self._waiters:
            if d.called:
                continue
            if len(messages) >= count:
                d.callback(messages)
            else:
                waiting.append((count, d))
        self._waiters = waiting

    def stop(self) -> Deferred[None]:
        """
        Drop every connection and stop listening.
        """
        for protocol in self._factory.protocols:
            if protocol.transport is not None and not protocol.session.closed:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
        port, self._port = self._port, None
        if port is None:
            return succeed(None)
        result: Deferred[None] = Deferred()
        stopped = port.stopListening()
        if stopped is None:
            return succeed(None)
        stopped.addBoth(lambda _: result.callback(None))
        return result
