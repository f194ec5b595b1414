"""
DKIM signing of a message source just before it is sent (``dkim=`` on a
send call; the signing itself is :mod:`txsmtpclient.dkim`).

Why two passes for a stream: the ``DKIM-Signature`` header goes before the
message, and it holds the body's hash, known only once the whole body was
read.  So a streamed message is read once, in chunks: each chunk's line
endings are made CRLF, its body part hashed (incrementally, RFC 6376
canonicalisation), and the normalised bytes copied to an anonymous
temporary file.  Then the signature headers and the file are sent.  Memory
holds one chunk and the header block whatever the message's size; the disk
holds one copy until the send ends.  Hashing and writing run in the
reactor's thread pool, never in its thread.  A message already in memory is
signed in one call (in the thread pool when it is over one chunk).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import IO, Any, TypeVar

from twisted.internet.threads import deferToThreadPool

from txsmtpclient._body import CHUNK_SIZE, BodySource, body_source
from txsmtpclient.dkim import DKIMSigner, MessageHasher, sign_message

__all__ = ["SpooledSource", "signed_source"]

T = TypeVar("T")


async def _blocking(reactor: Any, f: Callable[..., T], *args: Any) -> T:
    pool = reactor.getThreadPool() if hasattr(reactor, "getThreadPool") else None
    if pool is None:
        # An in-memory test reactor has no threads.
        return f(*args)
    result: T = await deferToThreadPool(reactor, pool, f, *args)
    return result


class SpooledSource(BodySource):
    """
    A signed streamed message: the signature headers, then the normalised
    message from its temporary file, which is closed once read (or by
    :meth:`close` when it never is).
    """

    def __init__(self, signatures: bytes, spool: IO[bytes], size: int, eight_bit: bool) -> None:
        super().__init__(len(signatures) + size)
        self._signatures = signatures
        self._spool = spool
        self._eight_bit = eight_bit

    @property
    def eight_bit(self) -> bool | None:
        return self._eight_bit

    def close(self) -> None:
        """
        Drop the temporary copy.
        """
        self._spool.close()

    async def _read(self, reactor: Any) -> AsyncGenerator[bytes, None]:
        try:
            yield self._signatures
            inner = body_source(self._spool)
            async with contextlib.aclosing(inner.chunks(reactor)) as chunks:
                async for chunk in chunks:
                    yield chunk
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
    return SpooledSource(signatures, spool, hasher.size, hasher.eight_bit)
