"""
A message's data written to the connection: after DATA (dot-stuffed, the
final dot in the same write as the last bytes) or as BDAT chunks (RFC 3030),
under the transport's flow control, and the replies to its end awaited
(ambiguous when the connection goes after the end was written).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferTimeoutError
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from txsmtpclient._body import CHUNK_SIZE, BodySource
from txsmtpclient.commands import DataEncoder
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

__all__ = ["FlowControl", "gather_replies", "send_bdat", "send_data"]


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
