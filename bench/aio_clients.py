"""
The asyncio client: ``aiosmtplib`` on the default asyncio event loop.  Scenario (c)
runs 50 ``SMTP`` objects at once on one loop.
"""

from __future__ import annotations

import asyncio

import aiosmtplib
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


async def session(port: int, count: int, rcpts: list[str], message: bytes) -> None:
    """
    Send ``count`` messages over one aiosmtplib connection, then QUIT.

    :raises aiosmtplib.SMTPException: if the sink refuses anything.
    """
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname=LOCAL_HOSTNAME, start_tls=False
    )
    await smtp.connect()
    for _ in range(count):
        refused, _reply = await smtp.sendmail(SENDER, rcpts, message)
        assert not refused, refused
    await smtp.quit()


async def scenario(workload: Workload, port: int, meter: Meter) -> None:
    """
    Run ``workload`` and print its measurement.
    """
    meter.baseline()
    rcpts = recipients(workload.recipients)
    if workload.scenario == "d":
        size = large_message_size(workload.message_bytes)
        # aiosmtplib takes the message whole (str or bytes).
        message = b"".join(large_message_chunks(workload.message_bytes))
    else:
        size = workload.message_bytes
        message = small_message(size)
    meter.start()
    if workload.connection_per_message:
        for _ in range(workload.messages):
            await session(port, 1, rcpts, message)
    else:
        await asyncio.gather(*(session(port, count, rcpts, message) for count in workload.split()))
    emit(meter.stop(size))


def run(client: str, workload: Workload, port: int) -> None:
    """
    Run ``workload`` with aiosmtplib and print its measurement.

    :param client: ``aiosmtplib``.
    :param port: the sink's port on 127.0.0.1.
    """
    asyncio.run(scenario(workload, port, Meter(client, workload)))
