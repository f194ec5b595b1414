"""
Streamed message bodies (issue 5, point 1): every accepted kind of body
(bytes, str, a binary file, an iterable or async iterable of chunks, an
``IBodyProducer``) arrives byte for byte; SIZE is declared exactly when the
length is known; wrong types fail before anything is sent; a body that
fails part way (8-bit data the server cannot take, an exception from the
source, a lost connection) is never ended with the final dot; and the
writer obeys the transport's flow control, so memory stays flat however
large the message.

The in-memory tests play the server by hand over a :class:`StringTransport`;
the end-to-end ones send to aiosmtpd on loopback (``servers.py``).
"""

from __future__ import annotations

import io
import re
import resource
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from helpers import EHLO_PIPELINING, GREETING, failure_result_of, success_result_of
from servers import AiosmtpdServer, ServerScript
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from txsmtpclient import SMTP
from txsmtpclient.errors import SMTPNotSupportedError, SMTPServerDisconnected, SMTPTimeoutError
from txsmtpclient.protocol import SMTPClientProtocol, Timeouts

SENDER = "sender@example.test"
RECIPIENT = "rcpt@example.test"
KIB = 1024
MIB = 1024 * KIB


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# -- reference encoding ----------------------------------------------------------


def _wire(message: bytes) -> bytes:
    """
    What the server records for ``message`` (after dot-unstuffing): CRLF line
    ends, and a final CRLF unless the message is empty.  Written with regular
    expressions, independently of the DataEncoder under test.
    """
    normalised = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    return normalised


def _stuffed(message: bytes) -> bytes:
    """
    What goes on the wire after DATA's 354 for ``message``, final dot included,
    computed line by line (RFC 5321 section 4.5.2).
    """
    lines = _wire(message).split(b"\r\n")[:-1] if message else []
    out = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in out) + b".\r\n"


def _message(size: int, seed: int = 0) -> bytes:
    """
    About ``size`` bytes of text: every 7th line starts with ".", some are a
    lone ".", line ends are CRLF, LF and bare CR by turns.
    """
    endings = (b"\r\n", b"\n", b"\r\n", b"\r")
    lines = []
    total = 0
    i = seed
    while total < size:
        if i % 7 == 0:
            line = b"." if i % 21 == 0 else b".dot line %d" % i
        else:
            line = b"line %d " % i + b"x" * (i % 70)
        line += endings[i % len(endings)]
        lines.append(line)
        total += len(line)
        i += 1
    return b"Subject: streamed\r\n\r\n" + b"".join(lines)


def _pieces(data: bytes, sizes: tuple[int, ...] = (1, 2, 3, 4093, 65536, 7)) -> Iterator[bytes]:
    """
    ``data`` cut into chunks of varying sizes, so CR/LF pairs and "\\n."
    fall across chunk boundaries.
    """
    start = 0
    k = 0
    while start < len(data):
        size = sizes[k % len(sizes)]
        yield data[start : start + size]
        start += size
        k += 1


# -- in-memory plumbing ----------------------------------------------------------


class FlowTransport(StringTransport):
    """
    A transport with a send buffer of ``limit`` bytes, as a socket's: once the
    buffer holds more, it pauses the registered producer; the test empties it
    with :meth:`take` and calls :meth:`resume`.  It keeps what was written as
    a list of writes, so a test can also check how the data was split.
    """

    def __init__(self, limit: int = 256 * KIB) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            hostAddress=IPv4Address("TCP", "127.0.0.1", 40000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 25),
        )
        self.limit = limit
        self.parts: list[bytes] = []
        self.buffered = 0
        self.max_buffered = 0
        self.writes = 0
        self.last_write = b""
        self.paused = False
        self.pauses = 0

    def write(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.parts.append(data)
        self.buffered += len(data)
        self.max_buffered = max(self.max_buffered, self.buffered)
        self.writes += 1
        self.last_write = data
        if self.buffered > self.limit and not self.paused and self.producer is not None:
            self.paused = True
            self.pauses += 1
            self.producer.pauseProducing()

    def unregisterProducer(self) -> None:
        super().unregisterProducer()  # type: ignore[no-untyped-call]
        self.paused = False

    def value(self) -> bytes:
        return b"".join(self.parts)

    def take(self) -> bytes:
        """
        Everything buffered, which is then forgotten (sent).
        """
        data = b"".join(self.parts)
        self.parts.clear()
        self.buffered = 0
        return data

    def resume(self) -> None:
        """
        The buffer drained: let the producer go on.
        """
        assert self.paused and self.producer is not None
        self.paused = False
        self.producer.resumeProducing()


@implementer(IStreamClientEndpoint)
class OneEndpoint:
    """
    An endpoint connecting at once to a given transport.
    """

    def __init__(self, transport: StringTransport) -> None:
        self.transport = transport
        self.protocol: SMTPClientProtocol | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 25))
        assert isinstance(proto, SMTPClientProtocol)
        proto.makeConnection(self.transport)
        self.protocol = proto
        return succeed(proto)


class Dialogue:
    """
    An :class:`SMTP` on a :class:`FlowTransport`, greeted and past EHLO.
    """

    def __init__(
        self,
        ehlo: bytes = EHLO_PIPELINING,
        limit: int = 256 * KIB,
        timeout: Timeouts | None = None,
    ) -> None:
        self.clock = MemoryReactorClock()
        self.transport = FlowTransport(limit)
        self.endpoint = OneEndpoint(self.transport)
        self.smtp = SMTP(
            local_hostname="client.example",
            reactor=self.clock,
            tls="never",
            timeout=timeout if timeout is not None else Timeouts(),
        )
        connected = self.smtp.connect(self.endpoint)
        self.feed(GREETING)
        success_result_of(connected)
        self.ehlo = ehlo

    @property
    def proto(self) -> SMTPClientProtocol:
        assert self.endpoint.protocol is not None
        return self.endpoint.protocol

    def feed(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def start(self, msg: Any, recipients: int = 1) -> Deferred[Any]:
        """
        Call sendmail and answer EHLO, MAIL, RCPT and DATA, so the message is
        being written when this returns.
        """
        d = self.smtp.sendmail(SENDER, [RECIPIENT] * recipients, msg)
        assert self.transport.take() == b"EHLO client.example\r\n"
        self.feed(self.ehlo)
        self.envelope = self.transport.take()
        self.feed(b"250 ok\r\n" * (1 + recipients) + b"354 go ahead\r\n")
        return d


class Pump:
    """
    Drives a paused :class:`FlowTransport` to the end of a message, checking
    each drained piece against the expected bytes and discarding it.
    """

    def __init__(self, transport: FlowTransport) -> None:
        self.transport = transport
        self.received = 0

    def run(self, check: Any, max_rounds: int = 1_000_000) -> None:
        """
        Drain and resume until the writer stops asking; ``check(data)`` sees
        every drained piece in order.
        """
        for _ in range(max_rounds):
            data = self.transport.take()
            self.received += len(data)
            check(data)
            if not self.transport.paused:
                return
            self.transport.resume()
        raise AssertionError("the writer never finished")


# -- every body kind arrives byte for byte ---------------------------------------

#: Larger than the writer's in-memory chunk (256 KiB), so every kind streams.
BIG = _message(600 * KIB)


@implementer(IBodyProducer)
class ListProducer:
    """
    An ``IBodyProducer`` writing given chunks one per turn of the reactor,
    pausable, of known or unknown length; it records what was asked of it.
    """

    def __init__(self, chunks: list[bytes], known_length: bool = True, reactor: Any = None):
        self.chunks = list(chunks)
        self.length: Any = sum(map(len, chunks)) if known_length else UNKNOWN_LENGTH
        self.reactor = reactor
        self.consumer: IConsumer | None = None
        self.paused = False
        self.pauses = 0
        self.stopped = False
        self.done: Deferred[None] = Deferred()

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        self.consumer = consumer
        self._step()
        return self.done

    def _step(self) -> None:
        while not self.paused and not self.stopped and self.chunks:
            assert self.consumer is not None
            self.consumer.write(self.chunks.pop(0))
            if self.reactor is not None:
                # One chunk per turn, as a real producer reading a socket.
                self.reactor.callLater(0, self._step)
                return
        if not self.chunks and not self.done.called and not self.stopped:
            self.done.callback(None)

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False
        self._step()

    def stopProducing(self) -> None:
        self.stopped = True


async def _agen(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _body(kind: str, data: bytes, tmp_path: Path) -> tuple[Any, bool]:
    """
    ``data`` as a body of the given kind, and whether its size is known.
    """
    if kind == "bytes":
        return data, True
    if kind == "str":
        return data.decode("ascii"), True
    if kind == "file":
        path = tmp_path / "message.eml"
        path.write_bytes(data)
        return path.open("rb"), True
    if kind == "bytesio":
        return io.BytesIO(data), True
    if kind == "list":
        return list(_pieces(data)), True
    if kind == "generator":
        return _pieces(data), False
    if kind == "async-generator":
        return _agen(list(_pieces(data))), False
    if kind == "file-body-producer":
        return FileBodyProducer(io.BytesIO(data)), True
    if kind == "producer-unknown-length":
        return ListProducer(list(_pieces(data)), known_length=False, reactor=_reactor()), False
    raise AssertionError(kind)


KINDS = [
    "bytes",
    "str",
    "file",
    "bytesio",
    "list",
    "generator",
    "async-generator",
    "file-body-producer",
    "producer-unknown-length",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_every_body_kind_arrives_byte_exact_with_size_when_known(
    smtp_server: AiosmtpdServer, kind: str, tmp_path: Path
) -> None:
    """Each body kind arrives byte for byte; SIZE is declared exactly when the length is known."""
    body, known = _body(kind, BIG, tmp_path)
    smtp = SMTP(local_hostname="client.example", reactor=_reactor(), tls="never")
    await smtp.connect(smtp_server.host, smtp_server.port)
    assert await smtp.sendmail(SENDER, [RECIPIENT], body) == {}
    await smtp.quit()
    if hasattr(body, "close"):
        body.close()
    (message,) = smtp_server.messages
    assert message.content == _wire(BIG)
    sizes = [int(o[5:]) for o in message.mail_options if o.startswith("SIZE=")]
    if known:
        # RFC 1870 section 6: an estimate of the size; ours is the input's
        # length, or its length once line ends are CRLF.
        (size,) = sizes
        assert len(BIG) <= size <= len(_stuffed(BIG))
    else:
        assert sizes == []
    assert message.bdat_chunks is None


@pytest.mark.parametrize("kind", ["file", "generator", "async-generator", "file-body-producer"])
@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_streams_go_by_bdat_chunks_byte_exact(
    smtp_server_factory: Any, kind: str, tmp_path: Path
) -> None:
    """With CHUNKING, a stream goes as several BDAT chunks that join to the exact message."""
    server = smtp_server_factory(ServerScript(chunking=True))
    body, _known = _body(kind, BIG, tmp_path)
    smtp = SMTP(local_hostname="client.example", reactor=_reactor(), tls="never")
    await smtp.connect(server.host, server.port)
    assert await smtp.sendmail(SENDER, [RECIPIENT], body) == {}
    await smtp.quit()
    (message,) = server.messages
    assert message.content == _wire(BIG)
    assert message.bdat_chunks is not None and len(message.bdat_chunks) > 1


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_data_method_streams_a_generator(smtp_server: AiosmtpdServer) -> None:
    """SMTP.data() takes a generator too, after MAIL and RCPT sent by hand."""
    smtp = SMTP(local_hostname="client.example", reactor=_reactor(), tls="never")
    await smtp.connect(smtp_server.host, smtp_server.port)
    await smtp.ehlo()
    assert (await smtp.mail(SENDER)).code == 250
    assert (await smtp.rcpt(RECIPIENT)).code == 250
    reply = await smtp.data(_pieces(BIG))
    assert reply.code == 250
    await smtp.quit()
    (message,) = smtp_server.messages
    assert message.content == _wire(BIG)


# -- wrong types fail before anything is sent ------------------------------------


def test_text_mode_file_is_refused_at_once(tmp_path: Path) -> None:
    """A file opened in text mode raises TypeError from sendmail() itself; nothing is written."""
    path = tmp_path / "m.txt"
    path.write_text("Subject: x\n\nbody\n")
    s = Dialogue()
    with path.open("r") as text_file, pytest.raises(TypeError, match="binary mode"):
        s.smtp.sendmail(SENDER, [RECIPIENT], text_file)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="binary mode"):
        s.smtp.sendmail(SENDER, [RECIPIENT], io.StringIO("x"))  # type: ignore[arg-type]
    assert s.transport.value() == b""


def test_list_with_str_chunk_is_refused_at_once() -> None:
    """A list holding a str chunk raises TypeError from sendmail() itself."""
    s = Dialogue()
    with pytest.raises(TypeError, match="chunks must be bytes, not str"):
        s.smtp.sendmail(SENDER, [RECIPIENT], [b"Subject: x\r\n", "body\r\n"])  # type: ignore[list-item]
    assert s.transport.value() == b""


@pytest.mark.parametrize("asynchronous", [False, True])
def test_stream_of_str_chunks_fails_before_anything_is_sent(asynchronous: bool) -> None:
    """A generator of str chunks fails with TypeError before EHLO; the session stays usable."""
    s = Dialogue()
    chunks = ["Subject: x\r\n", "\r\nbody\r\n"]
    body: Any = _agen(chunks) if asynchronous else iter(chunks)  # type: ignore[arg-type]
    d = s.smtp.sendmail(SENDER, [RECIPIENT], body)
    assert "not str" in str(failure_result_of(d, TypeError))
    assert s.transport.value() == b""
    assert s.smtp.sock is not None
    # The next message goes out on the same connection.
    d2 = s.smtp.sendmail(SENDER, [RECIPIENT], b"ok\r\n")
    assert s.transport.take() == b"EHLO client.example\r\n"
    s.feed(EHLO_PIPELINING)
    assert s.transport.take().startswith(b"MAIL FROM:<sender@example.test> SIZE=4\r\n")
    s.feed(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert s.transport.take() == b"ok\r\n.\r\n"
    s.feed(b"250 queued\r\n")
    assert success_result_of(d2) == {}


def test_binary_file_whose_read_gives_str_fails_before_anything_is_sent() -> None:
    """A file-like object whose read() gives str (not a TextIOBase) is caught on its first read."""

    class Odd:
        def read(self, n: int = -1) -> str:
            return "text"

        def seekable(self) -> bool:
            return False

    s = Dialogue()
    d = s.smtp.sendmail(SENDER, [RECIPIENT], Odd())  # type: ignore[arg-type]
    assert "binary mode" in str(failure_result_of(d, TypeError))
    assert s.transport.value() == b""


# -- a message that cannot be finished is never ended -------------------------------

EHLO_7BIT = b"250-mx.example\r\n250 PIPELINING\r\n"


@pytest.mark.parametrize("asynchronous", [False, True])
def test_8bit_chunk_without_8bitmime_aborts_without_final_dot(asynchronous: bool) -> None:
    """8-bit data part way, no 8BITMIME: SMTPNotSupportedError, no final dot, aborted."""
    s = Dialogue(ehlo=EHLO_7BIT)
    chunks = [b"Subject: x\r\n\r\n", b"plain line\r\n", b"caf\xc3\xa9\r\n", b"more\r\n"]
    d = s.start(_agen(chunks) if asynchronous else iter(chunks))
    assert b"BODY=8BITMIME" not in s.envelope
    assert "8BITMIME" in str(failure_result_of(d, SMTPNotSupportedError))
    sent = s.transport.value()
    assert b"caf" not in sent
    assert not sent.endswith(b"\r\n.\r\n")
    assert s.transport.disconnected  # aborted: the server discards the message
    assert s.smtp.sock is None


def test_8bit_stream_with_8bitmime_declares_body_and_is_sent() -> None:
    """With 8BITMIME a stream is declared BODY=8BITMIME and its 8-bit data sent as is."""
    s = Dialogue()
    d = s.start(iter([b"caf\xc3\xa9\n"]))
    assert b"BODY=8BITMIME" in s.envelope
    assert s.transport.take() == b"caf\xc3\xa9\r\n.\r\n"
    s.feed(b"250 ok\r\n")
    assert success_result_of(d) == {}


@pytest.mark.parametrize("asynchronous", [False, True])
def test_source_exception_part_way_aborts_without_final_dot(asynchronous: bool) -> None:
    """A source that raises part way: its exception, the connection aborted, no final dot."""

    def broken() -> Iterator[bytes]:
        yield b"Subject: x\r\n\r\n"
        yield b"line\r\n" * 1000
        raise ValueError("disk on fire")

    async def abroken() -> AsyncIterator[bytes]:
        for chunk in broken():
            yield chunk

    s = Dialogue()
    d = s.start(abroken() if asynchronous else broken())
    assert str(failure_result_of(d, ValueError)) == "disk on fire"
    sent = s.transport.value()
    assert sent.startswith(b"Subject: x\r\n\r\n")
    assert not sent.endswith(b".\r\n")
    assert s.transport.disconnected
    assert s.smtp.sock is None


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_source_exception_end_to_end_delivers_nothing(smtp_server: AiosmtpdServer) -> None:
    """Against aiosmtpd: a failing source leaves no message and no final dot."""

    def broken() -> Iterator[bytes]:
        yield from _pieces(BIG[: 300 * KIB])
        raise ValueError("disk on fire")

    smtp = SMTP(local_hostname="client.example", reactor=_reactor(), tls="never")
    await smtp.connect(smtp_server.host, smtp_server.port)
    with pytest.raises(ValueError, match="disk on fire"):
        await smtp.sendmail(SENDER, [RECIPIENT], broken())
    await smtp_server.when_connections_closed(reactor=_reactor())
    assert smtp_server.messages == []
    (connection,) = smtp_server.connections()
    assert b"DATA\r\n" in connection.received
    assert not connection.received.endswith(b"\r\n.\r\n")


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_8bit_stream_end_to_end_without_8bitmime_delivers_nothing(
    smtp_server_factory: Any,
) -> None:
    """Against aiosmtpd without 8BITMIME: an 8-bit chunk part way delivers nothing."""
    server = smtp_server_factory(ServerScript(hide_extensions=frozenset({"8BITMIME"})))
    smtp = SMTP(local_hostname="client.example", reactor=_reactor(), tls="never")
    await smtp.connect(server.host, server.port)
    body = [*_pieces(BIG[: 300 * KIB]), b"caf\xc3\xa9\r\n"]
    with pytest.raises(SMTPNotSupportedError):
        await smtp.sendmail(SENDER, [RECIPIENT], iter(body))
    await server.when_connections_closed(reactor=_reactor())
    assert server.messages == []
    (connection,) = server.connections()
    assert b"BODY=8BITMIME" not in connection.received
    assert not connection.received.endswith(b"\r\n.\r\n")


def test_producer_is_stopped_when_the_message_is_abandoned() -> None:
    """An IBodyProducer whose data cannot be sent is told to stop, not left running."""
    s = Dialogue(ehlo=EHLO_7BIT)
    # More chunks than the adapter queues, so the producer is not done yet.
    producer = ListProducer([b"ok\r\n", b"\xff\r\n"] + [b"never\r\n"] * 20, reactor=None)
    d = s.start(producer)
    failure_result_of(d, SMTPNotSupportedError)
    assert producer.stopped
    assert not s.transport.value().endswith(b".\r\n")


# -- flow control ---------------------------------------------------------------------


def test_connection_lost_while_paused_stops_reading_the_source() -> None:
    """Once the transport stops its producer (connection gone), the source is read no further."""
    s = Dialogue(limit=64 * KIB)
    read = [0]

    def endless() -> Iterator[bytes]:
        while True:
            read[0] += 1
            # Bounded, so that a writer ignoring the loss fails rather than hangs.
            assert read[0] < 10_000, "the source is read after the connection is gone"
            yield b"x" * 1000 + b"\r\n"

    d = s.start(endless())
    assert s.transport.paused
    before = read[0]
    # As Twisted's FileDescriptor.connectionLost: the producer is stopped first,
    # then the protocol hears of the loss.
    assert s.transport.producer is not None
    s.transport.producer.stopProducing()
    assert read[0] <= before + 1
    from twisted.internet.error import ConnectionLost
    from twisted.python.failure import Failure

    s.proto.connectionLost(Failure(ConnectionLost()))
    failure_result_of(d, SMTPServerDisconnected)
    assert read[0] <= before + 1
    assert not s.transport.value().endswith(b"\r\n.\r\n")


def test_a_transport_paused_past_the_data_block_timeout_aborts() -> None:
    """A transport that takes no data for the data-block timeout aborts (RFC 5321 4.5.3.2.5)."""
    s = Dialogue(limit=64 * KIB, timeout=Timeouts().with_(data_block=180.0))
    d = s.start(iter([b"y" * 100_000 + b"\r\n"] * 10))
    assert s.transport.paused
    s.clock.advance(179)
    assert not d.called
    s.clock.advance(2)
    assert failure_result_of(d, SMTPTimeoutError).stage == "data_block"
    assert s.transport.disconnected
    assert not s.transport.value().endswith(b".\r\n")


def test_producer_is_paused_while_the_transport_is() -> None:
    """Backpressure reaches an IBodyProducer: paused while the transport is full, resumed after."""
    s = Dialogue(limit=64 * KIB)
    chunks = [bytes([0x61 + i % 26]) * 16 * KIB + b"\r\n" for i in range(200)]
    producer = ListProducer(chunks, known_length=False, reactor=None)
    d = s.start(producer)
    assert s.transport.paused
    assert producer.paused
    # At most the transport's limit, a write, and the source's queue are held.
    assert len(producer.chunks) > 150
    out = bytearray()
    Pump(s.transport).run(out.extend)
    assert producer.pauses > 5 and not producer.chunks
    assert bytes(out) == b"".join(chunks) + b".\r\n"
    s.feed(b"250 ok\r\n")
    assert success_result_of(d) == {}


@pytest.mark.parametrize("kind", ["generator", "async-generator", "list", "big-bytes"])
def test_final_dot_goes_in_the_same_write_as_the_last_data(kind: str) -> None:
    """The end marker leaves with the last bytes of the message, never in a write of its own."""
    data = _message(700 * KIB)
    body: Any = {
        "generator": _pieces(data),
        "async-generator": _agen(list(_pieces(data))),
        "list": list(_pieces(data)),
        "big-bytes": data,
    }[kind]
    s = Dialogue(limit=16 * MIB)
    d = s.start(body)
    assert not s.transport.paused
    parts = list(s.transport.parts)
    assert b"".join(parts) == _stuffed(data)
    assert parts[-1].endswith(b".\r\n") and len(parts[-1]) > len(b".\r\n")
    assert all(not p.endswith(b"\r\n.\r\n") for p in parts[:-1])
    s.feed(b"250 ok\r\n")
    assert success_result_of(d) == {}


def test_bdat_last_goes_in_one_write_with_the_last_chunk() -> None:
    """With CHUNKING the last data leaves with "BDAT n LAST"; the chunks join exactly."""
    ehlo = b"250-mx.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n"
    s = Dialogue(ehlo=ehlo, limit=16 * MIB)
    data = _message(300 * KIB)
    d = s.smtp.sendmail(SENDER, [RECIPIENT], _pieces(data, (65536, 1000)))
    s.transport.take()
    s.feed(ehlo)
    assert s.transport.take() == (
        b"MAIL FROM:<sender@example.test> BODY=8BITMIME\r\nRCPT TO:<rcpt@example.test>\r\n"
    )
    s.feed(b"250 ok\r\n250 ok\r\n")
    parts = list(s.transport.parts)
    joined = b""
    for part in parts:
        header, _, rest = part.partition(b"\r\n")
        words = header.split()
        assert words[0] == b"BDAT" and int(words[1]) == len(rest)
        joined += rest
    assert parts[-1].split(b"\r\n", 1)[0].endswith(b" LAST")
    assert joined == _wire(data)
    s.feed(b"250 ok\r\n" * len(parts))
    assert success_result_of(d) == {}


# -- the memory bound ------------------------------------------------------------------

#: The generated body's size.  2 GiB runs in about 8-10 s here (the DataEncoder
#: does a few bulk bytes operations per chunk); the property is the same at any
#: size, since each round drains what was written and nothing is kept.
HUGE_BODY = 2 << 30
#: The transport's send buffer: above this it pauses the writer.
SEND_BUFFER = 256 * KIB
#: The stated bound: what the transport ever holds, and how far the source is
#: ever read ahead of what was drained.
MEMORY_BOUND = 1 * MIB


def _block() -> bytes:
    """
    A block of about 60 KB: every 7th line starts with ".", one in 21 is a
    lone ".", line ends CRLF, LF and bare CR; it ends with LF so copies of it
    join without merging line ends.
    """
    return _message(60 * KIB, seed=1).replace(b"Subject: streamed", b"X-Block: yes") + b"end\n"


def test_multi_gigabyte_stream_stays_within_the_memory_bound() -> None:
    """
    A 2 GiB generated body through a pausing transport: byte-exact on the wire,
    the transport never holds more than 1 MiB, the source is never read more
    than 1 MiB ahead of what was drained, and peak RSS barely moves.
    """
    block = _block()
    block_wire = _stuffed(block)[: -len(b".\r\n")]
    copies = HUGE_BODY // len(block)
    total_in = copies * len(block)
    total_out = copies * len(block_wire)
    # Chunk sizes that straddle CR/LF pairs and "\n." in ever-changing places.
    sizes = (65536, 65521, 4093, 1, 2, 65536, 31)
    produced = [0]

    def generate() -> Iterator[bytes]:
        doubled = block * 3
        offset = 0
        left = total_in
        k = 0
        while left:
            size = min(sizes[k % len(sizes)], left)
            k += 1
            produced[0] += size
            yield doubled[offset : offset + size]
            offset = (offset + size) % len(block)
            left -= size

    expected = block_wire * (2 + 2 * MIB // len(block_wire))
    position = [0]
    ended = [False]
    max_read_ahead = [0]

    def check(data: bytes) -> None:
        assert not ended[0], "bytes after the final dot"
        pos = position[0]
        body = data[: max(0, total_out - pos)]
        offset = pos % len(block_wire)
        assert body == expected[offset : offset + len(body)], f"mismatch at output byte {pos}"
        position[0] = pos + len(body)
        tail = data[len(body) :]
        if tail:
            assert tail == b".\r\n"
            ended[0] = True
        # Input bytes the drained output stands for (to within one block).
        drained_in = position[0] // len(block_wire) * len(block)
        max_read_ahead[0] = max(max_read_ahead[0], produced[0] - drained_in)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    s = Dialogue(limit=SEND_BUFFER)
    d = s.start(generate())
    assert b"SIZE=" not in s.envelope
    pump = Pump(s.transport)
    pump.run(check)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    assert ended[0] and position[0] == total_out
    assert produced[0] == total_in
    assert s.transport.pauses > 1000  # flow control really was exercised
    assert s.transport.max_buffered <= MEMORY_BOUND, s.transport.max_buffered
    assert max_read_ahead[0] <= MEMORY_BOUND, max_read_ahead[0]
    # ru_maxrss is in KiB on Linux: far less than the body went by.
    assert (rss_after - rss_before) * KIB < 64 * MIB
    # The end marker left with the last data.
    assert s.transport.last_write.endswith(b".\r\n") and len(s.transport.last_write) > 3
    s.feed(b"250 2.0.0 queued\r\n")
    assert success_result_of(d) == {}
