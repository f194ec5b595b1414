"""
Message bodies of every kind, read chunk by chunk so memory stays flat
whatever the size (:mod:`txsmtpclient._data` writes them to the connection).

A body may be ``bytes``, an ASCII ``str``, a binary file object, an iterable
or async iterable of ``bytes`` chunks, or a
:class:`twisted.web.iweb.IBodyProducer`.
"""

from __future__ import annotations

import io
import os
import stat
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Iterator,
    Sequence,
)
from typing import IO, Any, Union, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer
from twisted.internet.threads import deferToThreadPool
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from txsmtpclient.commands import message_bytes

__all__ = ["CHUNK_SIZE", "Body", "BodySource", "body_source"]

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
