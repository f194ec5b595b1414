"""
Message bodies of every kind, read chunk by chunk, and written to the
connection under its flow control so memory stays flat whatever the size.

A body may be ``bytes``, an ASCII ``str``, a binary file object, an iterable
or async iterable of ``bytes`` chunks, or a
:class:`twisted.web.iweb.IBodyProducer`.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Iterable,
    Iterator,
    Sequence,
)
from typing import IO, Any, Union, cast

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from txsmtpclient.commands import DataEncoder, message_bytes
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPDataError,
    SMTPNotSupportedError,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from txsmtpclient.protocol import SMTPClientProtocol
from txsmtpclient.reply import Reply
from txsmtpclient.session import Command, Kind

__all__ = ["Body", "BodySource", "FlowControl", "body_source"]

#: What ``sendmail``, ``data`` and ``send_message`` take as a message.
# Union, not "|": zope interfaces do not support the operator.
Body = Union[bytes, str, IO[bytes], Iterable[bytes], AsyncIterable[bytes], IBodyProducer]  # noqa: UP007

#: Bytes read or written at a time: large enough that per-chunk costs vanish,
#: small enough that a paused transport holds little.
CHUNK_SIZE = 256 * 1024


def crlf_size(data: bytes) -> int:
    """
    The length of ``data`` once every line ending is CRLF: what RFC 1870
    section 4 asks SIZE to declare (stuffed dots and the end marker aside).
    Each bare CR or LF gains one byte.
    """
    crlf = data.count(b"\r\n")
    return len(data) + data.count(b"\n") + data.count(b"\r") - 2 * crlf


class BodySource:
    """
    One message body, readable once as an async iterator of chunks.

    :ivar size: the length in bytes when known in advance (for SIZE).
    :ivar data: the whole body when it is already in memory.
    """

    def __init__(self, size: int | None, data: bytes | None = None) -> None:
        self.size = size
        self.data = data

    @property
    def eight_bit(self) -> bool | None:
        """
        Whether the body holds bytes over 127; ``None`` when not known before
        reading it.
        """
        return None if self.data is None else not self.data.isascii()

    async def prime(self, reactor: Any) -> None:
        """
        Read ahead what must be checked before anything is sent: a stream's
        first chunk, so that a wrong type (``str`` chunks, a text file)
        raises ``TypeError`` before the transaction starts.

        :raises TypeError: for a chunk that is not bytes.
        """

    def chunks(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        """
        The body's chunks, in order.
        """
        return self._memory_chunks()

    def rewound(self) -> BodySource | None:
        """
        A source that reads the same bytes again from the start, once this
        one was read whole, when that is possible (a seekable file: DKIM
        signing reads it twice); ``None`` otherwise.
        """
        return None

    async def _memory_chunks(self) -> AsyncGenerator[bytes, None]:
        assert self.data is not None
        view = memoryview(self.data)
        for start in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[start : start + CHUNK_SIZE])


def _file_size(file: IO[bytes]) -> int | None:
    """
    The bytes left to read in ``file``, when that can be known without
    reading: a regular file's size (not a pipe's or a device's), or a
    seekable in-memory file's length.
    """
    try:
        if not file.seekable():
            return None
        here = file.tell()
        try:
            info = os.fstat(file.fileno())
        except (OSError, io.UnsupportedOperation):
            # No descriptor (BytesIO): seeking to the end is cheap and exact.
            end = file.seek(0, io.SEEK_END)
            file.seek(here)
            return max(end - here, 0)
        return max(info.st_size - here, 0) if stat.S_ISREG(info.st_mode) else None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None


class _FileSource(BodySource):
    def __init__(self, file: IO[bytes]) -> None:
        super().__init__(_file_size(file))
        self._file = file
        self._first: bytes | None = None
        try:
            self._start: int | None = file.tell() if file.seekable() else None
        except (OSError, ValueError, io.UnsupportedOperation):
            self._start = None

    def rewound(self) -> BodySource | None:
        if self._start is None:
            return None
        # lseek only: no data is read, so the reactor's thread may do it.
        self._file.seek(self._start)
        return _FileSource(self._file)

    async def _read_one(self, reactor: Any) -> bytes:
        pool = reactor.getThreadPool() if hasattr(reactor, "getThreadPool") else None
        # Disk reads happen in a thread: never block the reactor.
        if pool is not None:
            chunk = await deferToThreadPool(reactor, pool, self._file.read, CHUNK_SIZE)
        else:
            chunk = self._file.read(CHUNK_SIZE)
        if not isinstance(chunk, bytes):
            raise TypeError(
                f"a file message must be opened in binary mode ('rb'); its read() gave "
                f"{type(chunk).__name__}"
            )
        return chunk

    async def prime(self, reactor: Any) -> None:
        if self._first is None:
            self._first = await self._read_one(reactor)

    async def _read(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        chunk, self._first = self._first, None
        while True:
            if chunk is None:
                chunk = await self._read_one(reactor)
            if not chunk:
                return
            yield chunk
            chunk = None

    def chunks(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        return self._read(reactor)


#: What a primed iterator gives when it is already exhausted.
_END: Any = object()


class _IterableSource(BodySource):
    def __init__(self, iterable: Iterable[bytes] | AsyncIterable[bytes]) -> None:
        super().__init__(None)
        self._iterable = iterable
        self._iterator: Iterator[bytes] | AsyncIterator[bytes] | None = None
        self._first: bytes | None = None

    async def prime(self, reactor: Any) -> None:
        if self._iterator is not None:
            return
        first: object
        if isinstance(self._iterable, AsyncIterable):
            self._iterator = aiter(self._iterable)
            first = await anext(self._iterator, _END)
        else:
            self._iterator = iter(self._iterable)
            first = next(self._iterator, _END)
        self._first = b"" if first is _END else _check_chunk(first)

    async def _iterate(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        await self.prime(reactor)
        iterator = self._iterator
        if self._first:
            yield self._first
        self._first = None
        if isinstance(iterator, AsyncIterator):
            async for chunk in iterator:
                yield _check_chunk(chunk)
        else:
            assert iterator is not None
            for chunk in iterator:
                yield _check_chunk(chunk)

    def chunks(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        return self._iterate(reactor)


class _SequenceSource(BodySource):
    """
    A list or tuple of chunks: already in memory, so every chunk is checked
    at once and the size is known.
    """

    def __init__(self, chunks: Sequence[object]) -> None:
        checked = [_check_chunk(chunk) for chunk in chunks]
        super().__init__(sum(len(chunk) for chunk in checked))
        self._chunks = checked

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        for chunk in self._chunks:
            yield chunk

    def chunks(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        return self._iterate()


def _check_chunk(chunk: object) -> bytes:
    if isinstance(chunk, bytes):
        return chunk
    if isinstance(chunk, (bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"message chunks must be bytes, not {type(chunk).__name__}")


@implementer(IConsumer)
class _ProducerSource(BodySource):
    """
    Adapts an ``IBodyProducer``: it writes into this consumer; chunks() hands
    its writes on, pausing the producer while too much is waiting.
    """

    _HIGH_WATER = 4

    def __init__(self, producer: Any) -> None:
        from twisted.web.iweb import UNKNOWN_LENGTH

        length = producer.length
        super().__init__(None if length is UNKNOWN_LENGTH else int(length))
        self._producer = producer
        self._queue: deque[bytes] = deque()
        self._wake: Deferred[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._paused = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self._queue.append(_check_chunk(data))
        if len(self._queue) >= self._HIGH_WATER and not self._paused:
            self._paused = True
            self._producer.pauseProducing()
        self._poke()

    def _poke(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    def _finished(self, result: object) -> None:
        self._done = True
        if isinstance(result, BaseException):
            self._error = result
        self._poke()

    async def _drain(self) -> AsyncGenerator[bytes, None]:
        d = self._producer.startProducing(self)
        d.addCallbacks(self._finished, lambda f: self._finished(f.value))
        try:
            while True:
                if self._queue:
                    chunk = self._queue.popleft()
                    if self._paused and len(self._queue) < self._HIGH_WATER // 2:
                        self._paused = False
                        self._producer.resumeProducing()
                    yield chunk
                elif self._done:
                    if self._error is not None:
                        raise self._error
                    return
                else:
                    self._wake = Deferred()
                    await self._wake
        finally:
            if not self._done:
                self._producer.stopProducing()

    def chunks(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        return self._drain()


def body_source(msg: Body) -> BodySource:
    """
    Wrap a caller's message.

    :raises TypeError: for a type that is none of the accepted ones, a
        text-mode file, or a list or tuple holding something other than
        bytes.  (A stream's chunks are checked as they are read: the first
        by :meth:`BodySource.prime`, before the transaction starts.)
    :raises SMTPArgumentError: for a ``str`` with non-ASCII characters.
    """
    if isinstance(msg, (str, bytes, bytearray, memoryview)):
        data = message_bytes(msg)
        return BodySource(crlf_size(data), data)
    if IBodyProducer.providedBy(msg):
        return _ProducerSource(msg)
    if hasattr(msg, "read"):
        if isinstance(msg, io.TextIOBase):
            raise TypeError("a file message must be opened in binary mode ('rb')")
        return _FileSource(cast(IO[bytes], msg))
    if isinstance(msg, (list, tuple)):
        return _SequenceSource(msg)
    if isinstance(msg, (AsyncIterable, Iterable)):
        return _IterableSource(cast(Iterable[bytes] | AsyncIterable[bytes], msg))
    raise TypeError(
        "message must be bytes, str, a binary file, an iterable or async iterable of bytes, "
        f"or an IBodyProducer, not {type(msg).__name__}"
    )


@implementer(IPushProducer)
class FlowControl:
    """
    Registered with the transport while a body is written: the transport
    pauses it when its buffer is full, and the writer waits in
    :meth:`wait` until it drains.
    """

    def __init__(self) -> None:
        self.paused = False
        self.stopped = False
        self._waiting: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.stopped = True
        self.resumeProducing()

    def wait(self) -> Deferred[None]:
        """
        Fires once the transport will take more.
        """
        if not self.paused:
            return succeed(None)
        if self._waiting is None:
            self._waiting = Deferred()
        return self._waiting


async def gather_replies(deferreds: Sequence[Deferred[Reply]]) -> list[Reply]:
    """
    Await every Deferred, so that none is left with an unhandled failure;
    raise the first failure once all have fired.
    """
    replies: list[Reply] = []
    first: Exception | None = None
    for d in deferreds:
        try:
            replies.append(await d)
        except Exception as e:  # re-raised below, after the rest
            if first is None:
                first = e
    if first is not None:
        raise first
    return replies


class _Writer:
    """
    Writes encoded chunks under the transport's flow control, holding the
    last chunk back so that it leaves in one write with the end marker.
    """

    def __init__(self, proto: SMTPClientProtocol, reactor: Any) -> None:
        self.proto = proto
        self.reactor = reactor
        self.flow = FlowControl()
        self.transport: Any = proto.transport
        self.registered = False

    def __enter__(self) -> _Writer:
        self.transport.registerProducer(self.flow, True)
        self.registered = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.registered:
            self.registered = False
            with contextlib.suppress(RuntimeError, AttributeError):
                self.transport.unregisterProducer()

    async def drained(self) -> None:
        """
        Wait while the transport's buffer is full, at most the data-block
        timeout (RFC 5321 section 4.5.3.2.5).
        """
        if self.flow.paused:
            waiting = self.flow.wait()
            timeout = self.proto.timeouts.data_block
            if timeout is not None:
                waiting.addTimeout(timeout, self.reactor)
            try:
                await waiting
            except DeferTimeoutError:
                self.proto.abort(
                    SMTPTimeoutError(
                        f"the server took no message data for {timeout:g} seconds", "data_block"
                    )
                )
        failure = self.proto.failure
        if failure is not None:
            # The connection's own error (SMTPTimeoutError, say), as every
            # other call on it gets.
            raise failure
        if self.flow.stopped:
            # The transport stops its producer as the connection goes, before
            # the protocol hears of it: stop reading the source now.
            raise SMTPServerDisconnected("connection lost while sending the message")


def _eight_bit_refused() -> SMTPNotSupportedError:
    return SMTPNotSupportedError(
        "the message holds 8-bit data and the server does not advertise 8BITMIME; "
        "the transaction was abandoned before the message was ended"
    )


async def send_data(
    proto: SMTPClientProtocol,
    source: BodySource,
    reactor: Any,
    replies: int = 1,
    refuse_8bit: bool = False,
) -> list[Reply]:
    """
    Send a message after DATA's 354: CRLF line endings, dot-stuffing, and the
    final dot in the same write as the last bytes.

    :param replies: how many replies the final dot gets (LMTP: one per
        accepted recipient).
    :param refuse_8bit: abort (without ending the message, so nothing is
        delivered) if the body turns out to hold 8-bit data.
    :returns: the replies to the final dot.
    :raises SMTPNotSupportedError: for 8-bit data with ``refuse_8bit``.
    """
    encoder = DataEncoder()
    data = source.data
    if data is not None and len(data) <= CHUNK_SIZE:
        # One write, one waiter for every reply to the final dot.
        written = proto.usable
        batch = proto.send_batch(
            [Command(Kind.MESSAGE_END, encoder.encode(data) + encoder.finish(), replies=replies)]
        )
        return await _final_replies(batch, written)
    try:
        with _Writer(proto, reactor) as writer:
            pending = b""
            async with contextlib.aclosing(source.chunks(reactor)) as chunks:
                async for chunk in chunks:
                    if refuse_8bit and not chunk.isascii():
                        raise _eight_bit_refused()
                    out = encoder.encode(chunk)
                    if pending:
                        proto.write_data(pending)
                    pending = out
                    await writer.drained()
            written = proto.usable
            finals = proto.send_batch(
                [Command(Kind.MESSAGE_END, pending + encoder.finish(), replies=replies)]
            )
    except BaseException as e:
        # Never end a message that was not read whole: drop the connection
        # so the server discards what it has.
        proto.abort(SMTPServerDisconnected(f"message abandoned part way: {e!r}"))
        raise
    return await _final_replies(finals, written)


async def send_bdat(
    proto: SMTPClientProtocol,
    source: BodySource,
    reactor: Any,
    replies: int = 1,
    pipelining: bool = False,
    binary: bool = False,
    refuse_8bit: bool = False,
) -> list[Reply]:
    """
    Send a message as BDAT chunks (RFC 3030): no dot-stuffing; line endings
    made CRLF unless ``binary`` (BODY=BINARYMIME); the last chunk marked
    LAST.  Chunks are pipelined when the server offers PIPELINING,
    otherwise each waits for its 250.

    :returns: the replies to ``BDAT ... LAST``.
    :raises SMTPDataError: when the server refuses a chunk.
    """
    encoder = None if binary else DataEncoder(dot_stuff=False)
    chunk_replies: list[Deferred[Reply]] = []
    try:
        with _Writer(proto, reactor) as writer:
            pending: bytes | None = None
            async with contextlib.aclosing(source.chunks(reactor)) as chunks:
                async for chunk in chunks:
                    if refuse_8bit and not chunk.isascii():
                        raise _eight_bit_refused()
                    out = chunk if encoder is None else encoder.encode(chunk)
                    if not out:
                        continue
                    if pending is not None:
                        d = proto.send(Command(Kind.BDAT, b"BDAT %d\r\n" % len(pending) + pending))
                        if pipelining:
                            chunk_replies.append(d)
                        else:
                            reply = await d
                            if reply.code != 250:
                                raise SMTPDataError(reply.code, reply.message)
                    pending = out
                    await writer.drained()
            last = (pending or b"") + (encoder.finish() if encoder is not None else b"")
            written = proto.usable
            finals = proto.send_batch(
                [Command(Kind.BDAT_LAST, b"BDAT %d LAST\r\n" % len(last) + last, replies=replies)]
            )
    except SMTPDataError:
        raise
    except BaseException as e:
        proto.abort(SMTPServerDisconnected(f"message abandoned part way: {e!r}"))
        # The pipelined chunks' replies fail with the abort; this error is
        # the one to report, not theirs.
        for d in chunk_replies:
            d.addErrback(lambda _: None)
        raise
    for reply in await gather_replies(chunk_replies):
        if reply.code != 250:
            await finals
            raise SMTPDataError(reply.code, reply.message)
    return await _final_replies(finals, written)


async def _final_replies(replies: Awaitable[list[Reply]], written: bool) -> list[Reply]:
    """
    Await the replies to the end of a message.

    :param written: whether the end of the message was really written (the
        connection was still usable when it was sent).
    :raises SMTPAmbiguousDelivery: when the connection failed after the end
        of the message was written and before its replies came, or the send
        was cancelled then (which aborts the connection): the server may
        hold the message (RFC 5321 section 6.1), so it is not "sent", and a
        caller that retries must know it may deliver it twice.
    """
    try:
        return await replies
    except CancelledError as e:
        if not written:
            raise
        raise SMTPAmbiguousDelivery(
            "the send was cancelled after the end of the message was written; "
            "the server may or may not have accepted it"
        ) from e
    except SMTPServerDisconnected as e:
        if not written or isinstance(e, SMTPAmbiguousDelivery):
            raise
        raise SMTPAmbiguousDelivery(
            f"the end of the message was sent but no reply came ({e}); "
            "the server may or may not have accepted it"
        ) from e
