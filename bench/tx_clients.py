"""
The subject: ``txsmtpclient`` on the epoll reactor, run under ``react``.

``txsmtpclient`` awaits each ``sendmail`` before making the next call, as a user of
smtplib or aiosmtplib would.  ``txsmtpclient-queued`` makes up to :data:`WINDOW` calls
on one ``SMTP`` object without awaiting them (calls on one object run in order), which
lets the library pipeline one message's end with the next message's envelope.
Scenario (c) runs 50 ``SMTP`` objects at once on one reactor.

The epoll reactor must be installed before this module is imported.
"""

from __future__ import annotations

import sys
import traceback
from collections import deque
from collections.abc import Iterable

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import react
from workload import (
    LOCAL_HOSTNAME,
    SENDER,
    Meter,
    Workload,
    emit,
    large_message_chunks,
    large_message_size,
    recipients,
    small_message,
)

from txsmtpclient import SMTP, Reply

#: How many sendmail calls ``txsmtpclient-queued`` keeps outstanding on one connection.
WINDOW = 64


async def session(
    reactor: IReactorTime,
    port: int,
    count: int,
    rcpts: list[str],
    message: bytes | Iterable[bytes],
    window: int,
) -> None:
    """
    Send ``count`` messages over one ``SMTP`` connection, then QUIT.

    :param window: how many sendmail calls may be outstanding at once.
    :raises txsmtpclient.errors.SMTPException: if the sink refuses anything.
    """
    smtp = SMTP(local_hostname=LOCAL_HOSTNAME, reactor=reactor)
    await smtp.connect("127.0.0.1", port)
    pending: deque[Deferred[dict[str, Reply]]] = deque()
    for _ in range(count):
        pending.append(smtp.sendmail(SENDER, rcpts, message))
        if len(pending) >= window:
            refused = await pending.popleft()
            assert not refused, refused
    while pending:
        refused = await pending.popleft()
        assert not refused, refused
    await smtp.quit()


async def scenario(reactor: IReactorTime, client: str, workload: Workload, port: int) -> None:
    """
    Run ``workload`` and print its measurement.
    """
    meter = Meter(client, workload)
    meter.baseline()
    rcpts = recipients(workload.recipients)
    window = WINDOW if client == "txsmtpclient-queued" else 1
    if workload.scenario == "d":
        size = large_message_size(workload.message_bytes)
        # Streamed (issue 5, point 1): sendmail reads the generator chunk by chunk
        # under the transport's flow control, so the RSS growth reported is the
        # library's own buffering, not the whole message.
        message: bytes | Iterable[bytes] = large_message_chunks(workload.message_bytes)
    else:
        size = workload.message_bytes
        message = small_message(size)
    meter.start()
    if workload.connection_per_message:
        for _ in range(workload.messages):
            await session(reactor, port, 1, rcpts, message, window)
    else:
        await gatherResults(
            [
                Deferred.fromCoroutine(session(reactor, port, count, rcpts, message, window))
                for count in workload.split()
            ]
        )
    emit(meter.stop(size))


def run(client: str, workload: Workload, port: int) -> None:
    """
    Run ``workload`` with txsmtpclient under ``react`` and print its measurement.

    :param client: ``txsmtpclient`` or ``txsmtpclient-queued``.
    :param port: the sink's port on 127.0.0.1.
    """

    async def main(reactor: IReactorTime) -> None:
        try:
            await scenario(reactor, client, workload, port)
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            raise

    react(main)
