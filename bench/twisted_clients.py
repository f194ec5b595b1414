"""
Twisted's own client, ``twisted.mail.smtp``, on the epoll reactor.

One message per connection (scenarios b, d, e) goes through ``ESMTPSenderFactory``, the
API its documentation offers.  Several messages per connection (a, c) need a subclass
of ``ESMTPClient`` that hands out the next message from ``getMailFrom``, as
``SenderMixin`` does for one; after each message it sends RSET, as ``SMTPClient``
always does.  ``twisted.mail`` sets TCP_NODELAY on the transport in ``connectionMade``;
``twisted.mail-nagle`` leaves it off to show the delayed-ACK stall of writing each
command and the message in separate small segments.

twisted.mail takes LF text and converts it to CRLF itself (``transformChunk``), so it is
given the LF form of the same messages; the bytes on the wire are the same.

The epoll reactor must be installed before this module is imported:
``twisted.mail.smtp`` imports the reactor.
"""

from __future__ import annotations

import sys
import traceback
from io import BytesIO
from typing import IO, cast

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IConnector, IReactorTCP, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.internet.task import react
from twisted.mail.smtp import SUCCESS, ESMTPClient, ESMTPSender, ESMTPSenderFactory
from twisted.python.failure import Failure
from twisted.python.util import LineLog
from workload import (
    LOCAL_HOSTNAME,
    SENDER,
    ChunkReader,
    Meter,
    Workload,
    emit,
    large_message_chunks,
    large_message_size,
    recipients,
    small_message,
)


class MultiSender(ESMTPClient):
    """
    An ``ESMTPClient`` that sends one message ``count`` times over its connection,
    then QUITs.

    :ivar done: fires when the connection closes; fails if any message was refused or
        the dialogue broke off.
    """

    requireAuthentication = False
    requireTransportSecurity = False

    def __init__(self, count: int, rcpts: list[str], message: bytes, *, nodelay: bool) -> None:
        """
        :param message: the message in LF form.
        :param nodelay: set TCP_NODELAY on the connection.
        """
        ESMTPClient.__init__(self, None, None, LOCAL_HOSTNAME)
        self.remaining = count
        self.rcpts = rcpts
        self.message = message
        self.nodelay = nodelay
        self.error: Exception | None = None
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.nodelay:
            cast(ITCPTransport, self.transport).setTcpNoDelay(True)
        ESMTPClient.connectionMade(self)

    def getMailFrom(self) -> str | None:
        if not self.remaining:
            return None
        self.remaining -= 1
        return SENDER

    def getMailTo(self) -> list[str]:
        return self.rcpts

    def getMailData(self) -> IO[bytes]:
        return BytesIO(self.message)

    def sentMail(
        self, code: int, resp: bytes, numOk: int, addresses: object, log: LineLog
    ) -> None:
        if code not in SUCCESS and self.error is None:
            self.error = RuntimeError(f"message refused: {code} {resp!r}")

    def sendError(self, exc: Exception) -> None:
        self.error = exc
        ESMTPClient.sendError(self, exc)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        ESMTPClient.connectionLost(self, reason)
        if self.error is None and self.remaining:
            self.error = RuntimeError(f"connection lost with {self.remaining} to send")
        if self.error is None:
            self.done.callback(None)
        else:
            self.done.errback(self.error)


class NoDelaySender(ESMTPSender):
    """
    ``ESMTPSender`` with TCP_NODELAY set on its connection.
    """

    def connectionMade(self) -> None:
        cast(ITCPTransport, self.transport).setTcpNoDelay(True)
        ESMTPSender.connectionMade(self)


class OneMessageFactory(ESMTPSenderFactory):
    """
    ``ESMTPSenderFactory`` for one message, without TLS or AUTH, that also says when
    its connection has closed (after the RSET and QUIT that follow the message).

    :ivar sent: fires when the message was accepted, fails if it was not.
    :ivar closed: fires when the connection has closed.
    """

    protocol = NoDelaySender
    domain = LOCAL_HOSTNAME.encode()

    def __init__(self, rcpts: list[str], message: IO[bytes] | ChunkReader) -> None:
        """
        :param message: a file whose content is the message in LF form.
        """
        self.sent: Deferred[object] = Deferred()
        self.closed: Deferred[None] = Deferred()
        ESMTPSenderFactory.__init__(
            self,
            None,
            None,
            SENDER,
            rcpts,
            message,
            self.sent,
            retries=0,
            requireAuthentication=False,
            requireTransportSecurity=False,
        )

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        ESMTPSenderFactory.clientConnectionLost(self, connector, reason)
        self.closed.callback(None)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        ESMTPSenderFactory.clientConnectionFailed(self, connector, reason)
        self.closed.callback(None)


async def send_one(
    reactor: IReactorTCP, port: int, rcpts: list[str], message: IO[bytes] | ChunkReader
) -> None:
    """
    Send one message on a new connection through ``ESMTPSenderFactory``.

    :raises twisted.mail.smtp.SMTPClientError: if it was refused.
    """
    factory = OneMessageFactory(rcpts, message)
    reactor.connectTCP("127.0.0.1", port, factory)
    await factory.sent
    await factory.closed


async def session(
    reactor: IReactorTCP, port: int, count: int, rcpts: list[str], message: bytes, nodelay: bool
) -> None:
    """
    Send ``count`` messages over one connection with :class:`MultiSender`.

    :raises Exception: the first error the connection met.
    """
    sender = MultiSender(count, rcpts, message, nodelay=nodelay)
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), sender)
    await sender.done


async def scenario(reactor: IReactorTCP, client: str, workload: Workload, port: int) -> None:
    """
    Run ``workload`` and print its measurement.
    """
    meter = Meter(client, workload)
    meter.baseline()
    rcpts = recipients(workload.recipients)
    if workload.scenario == "d":
        # twisted.mail reads the message from a file, so it can stream it.
        size = large_message_size(workload.message_bytes)
        meter.start()
        await send_one(
            reactor, port, rcpts, ChunkReader(large_message_chunks(workload.message_bytes, b"\n"))
        )
        emit(meter.stop(size))
        return
    size = workload.message_bytes
    message = small_message(size, b"\n")
    meter.start()
    if workload.connection_per_message:
        for _ in range(workload.messages):
            await send_one(reactor, port, rcpts, BytesIO(message))
    elif workload.recipients > 1:
        await send_one(reactor, port, rcpts, BytesIO(message))
    else:
        nodelay = client != "twisted.mail-nagle"
        await gatherResults(
            [
                Deferred.fromCoroutine(session(reactor, port, count, rcpts, message, nodelay))
                for count in workload.split()
            ]
        )
    emit(meter.stop(size))


def run(client: str, workload: Workload, port: int) -> None:
    """
    Run ``workload`` with twisted.mail under ``react`` and print its measurement.

    :param client: ``twisted.mail`` or ``twisted.mail-nagle``.
    :param port: the sink's port on 127.0.0.1.
    """

    async def main(reactor: IReactorTCP) -> None:
        try:
            await scenario(reactor, client, workload, port)
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            raise

    react(main)
