"""
DKIM signing of a message source just before it is sent (``dkim=`` on a
send call; the signing itself is :mod:`txsmtpclient.dkim`).

Why two passes for a stream: the ``DKIM-Signature`` header goes before the
message, and it holds the body's hash, known only once the whole body was
read.  Memory holds one chunk and the header block whatever the size:

* a seekable file is read twice: a first pass hashes it, then it is sent
  from its start after the signature headers (it must not change
  meanwhile);
* any other stream (an iterable, a producer, a pipe) is read once, and its
  normalised bytes are copied to an anonymous temporary file (in
  ``tempfile.gettempdir()``, so ``TMPDIR``; on a tmpfs that copy is in RAM)
  as they are hashed; the file is sent after the signature and dropped.

Reading, hashing and writing run in the reactor's thread pool, never in its
thread.  A message already in memory is signed in one call (in the thread
pool when it is over one chunk).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import IO, Any, TypeVar

from twisted.internet.threads import deferToThreadPool

from txsmtpclient._body import CHUNK_SIZE, BodySource, body_source
from txsmtpclient.dkim import DKIMSigner, MessageHasher, sign_message

__all__ = ["SignedSource", "signed_source"]

T = TypeVar("T")


async def _blocking(reactor: Any, f: Callable[..., T], *args: Any) -> T:
    pool = reactor.getThreadPool() if hasattr(reactor, "getThreadPool") else None
    if pool is None:
        # An in-memory test reactor has no threads.
        return f(*args)
    result: T = await deferToThreadPool(reactor, pool, f, *args)
    return result


class SignedSource(BodySource):
    """
    A signed stream: the signature headers, then the message read from
    ``inner`` (the temporary copy, or the file read again), then ``tail``
    (a CRLF when a re-read file did not end with one, so DATA and BDAT both
    send what was hashed).

    :param spool: the temporary copy to close once read (or by
        :meth:`close` when it never is).
    """

    def __init__(
        self,
        signatures: bytes,
        inner: BodySource,
        hasher: MessageHasher,
        tail: bytes = b"",
        spool: IO[bytes] | None = None,
    ) -> None:
        super().__init__(len(signatures) + hasher.size)
        self._signatures = signatures
        self._inner = inner
        self._eight_bit = hasher.eight_bit
        self._tail = tail
        self._spool = spool

    @property
    def eight_bit(self) -> bool | None:
        return self._eight_bit

    def close(self) -> None:
        """
        Drop the temporary copy, if any.
        """
        if self._spool is not None:
            self._spool.close()

    async def _read(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        try:
            yield self._signatures
            async with contextlib.aclosing(self._inner.chunks(reactor)) as chunks:
                async for chunk in chunks:
                    yield chunk
            if self._tail:
                yield self._tail
        finally:
            self.close()

    def chunks(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        return self._read(reactor)


async def signed_source(
    source: BodySource, signers: Sequence[DKIMSigner], reactor: Any
) -> BodySource:
    """
    ``source`` signed by every signer: its line endings made CRLF and the
    ``DKIM-Signature`` headers put first.  Reads a stream whole (see the
    module's docstring); nothing is sent meanwhile.

    :raises DKIMError: when the message cannot be signed (no ``From``, a
        header block over the limit); the source is read no further.
    :raises OSError: when the temporary copy cannot be written.
    """
    data = source.data
    if data is not None:
        if len(data) <= CHUNK_SIZE:
            signed = sign_message(data, signers)
        else:
            signed = await _blocking(reactor, sign_message, data, signers)
        return BodySource(len(signed), signed)
    hasher = MessageHasher(s.body_canonicalization for s in signers)
    first = source.rewound()
    if first is not None:
        return await _two_passes(first, hasher, signers, reactor)
    spool: IO[bytes] = await _blocking(reactor, tempfile.TemporaryFile)

    def take(chunk: bytes) -> None:
        spool.write(hasher.update(chunk))

    def end() -> bytes:
        spool.write(hasher.finish())
        spool.flush()
        spool.seek(0)
        return hasher.signatures(signers)

    try:
        async with contextlib.aclosing(source.chunks(reactor)) as chunks:
            async for chunk in chunks:
                await _blocking(reactor, take, chunk)
        signatures = await _blocking(reactor, end)
    except BaseException:
        spool.close()
        raise
    return SignedSource(signatures, body_source(spool), hasher, spool=spool)


async def _two_passes(
    first: BodySource, hasher: MessageHasher, signers: Sequence[DKIMSigner], reactor: Any
) -> BodySource:
    """
    Hash a re-readable source in a first pass; send it again after the
    signatures.
    """

    def end() -> bytes:
        hasher.finish()
        return hasher.signatures(signers)

    async with contextlib.aclosing(first.chunks(reactor)) as chunks:
        async for chunk in chunks:
            await _blocking(reactor, hasher.update, chunk)
    signatures = await _blocking(reactor, end)
    again = first.rewound()
    assert again is not None  # a source that rewound once rewinds again
    tail = b"\r\n" if hasher.added_crlf else b""
    return SignedSource(signatures, again, hasher, tail)
