"""
The blocking clients: Python's ``smtplib`` and the raw-socket reference (the sink's
ceiling).  Scenario (c) runs one thread per connection, as smtplib users do.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from reference import RawClient
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

#: Sends ``count`` copies of a message over one new connection, then QUITs.
Session = Callable[[int, int, list[str], bytes | Iterable[bytes]], None]


def smtplib_session(
    port: int, count: int, rcpts: list[str], message: bytes | Iterable[bytes]
) -> None:
    """
    Send ``count`` messages over one smtplib connection.

    :raises smtplib.SMTPException: if the sink refuses anything.
    """
    assert isinstance(message, bytes), "smtplib takes the message whole"
    with smtplib.SMTP("127.0.0.1", port, local_hostname=LOCAL_HOSTNAME) as smtp:
        for _ in range(count):
            refused = smtp.sendmail(SENDER, rcpts, message)
            assert not refused, refused


def raw_session(port: int, count: int, rcpts: list[str], message: bytes | Iterable[bytes]) -> None:
    """
    Send ``count`` messages over one pipelining raw-socket connection.

    :raises reference.ReferenceError: if the sink refuses anything.
    """
    RawClient(port).send(count, rcpts, message)


SESSIONS: dict[str, Session] = {"smtplib": smtplib_session, "raw": raw_session}


def run(client: str, workload: Workload, port: int) -> None:
    """
    Run ``workload`` with a blocking client and print its measurement.

    :param client: ``smtplib`` or ``raw``.
    :param port: the sink's port on 127.0.0.1.
    """
    session = SESSIONS[client]
    meter = Meter(client, workload)
    meter.baseline()
    rcpts = recipients(workload.recipients)
    message: bytes | Iterable[bytes]
    if workload.scenario == "d":
        size = large_message_size(workload.message_bytes)
        chunks = large_message_chunks(workload.message_bytes)
        # Only the reference streams; smtplib needs the whole message in memory.
        message = chunks if client == "raw" else b"".join(chunks)
    else:
        size = workload.message_bytes
        message = small_message(size)
    meter.start()
    if workload.connection_per_message:
        for _ in range(workload.messages):
            session(port, 1, rcpts, message)
    elif workload.connections == 1:
        session(port, workload.messages, rcpts, message)
    else:
        with ThreadPoolExecutor(workload.connections) as pool:
            futures = [
                pool.submit(session, port, count, rcpts, message) for count in workload.split()
            ]
            for future in futures:
                future.result()
    emit(meter.stop(size))
