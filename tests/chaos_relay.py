"""
A fault-injecting SMTP relay for the chaos test: plain asyncio in its own
thread and event loop on loopback, port 0.

Each connection, at random (seeded): a 421 instead of the greeting or to
MAIL; a hang-up in the middle of DATA; a hang-up after the final dot with
the message kept but no reply (the ambiguous case, RFC 5321 section 6.1); a
421 to the final dot (message not kept); a slow reply to the final dot.
Otherwise it accepts with ``250 2.0.0 Ok: queued as Q<n>``.

It records every copy it kept, with the queue id it replied with (none
when it hung up on purpose) and when the final dot arrived.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from dataclasses import dataclass

__all__ = ["ChaosRelay", "Copy", "Faults"]

_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class Faults:
    """
    The chance of each fault, per connection (greeting) or per command.
    """

    greeting_421: float = 0.03
    mail_421: float = 0.04
    cut_in_data: float = 0.04
    drop_after_dot: float = 0.06
    dot_421: float = 0.03
    slow_reply: float = 0.10
    slow_seconds: tuple[float, float] = (0.05, 0.5)


@dataclass
class Copy:
    """
    One copy of a message the relay kept.

    :ivar message_id: its Message-ID.
    :ivar queue_id: the id named in the 250 reply (``None`` if dropped).
    :ivar dropped: the relay hung up on purpose instead of replying.
    :ivar at: ``time.monotonic()`` when the final dot arrived.
    """

    message_id: str
    queue_id: str | None
    dropped: bool
    at: float


class ChaosRelay:
    """
    The relay; :meth:`start`, then point ``twist txsmtp --relay`` at
    :attr:`address`; read :meth:`copies`; :meth:`stop`.
    """

    def __init__(self, seed: int, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._copies: list[Copy] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def copies(self) -> list[Copy]:
        """A snapshot of the copies kept so far."""
        with self._lock:
            return list(self._copies)

    def received_ids(self) -> set[str]:
        with self._lock:
            return {c.message_id for c in self._copies}

    def _chance(self, p: float) -> bool:
        return self._rng.random() < p

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        f = self.faults
        try:
            if self._chance(f.greeting_421):
                writer.write(b"421 4.3.2 chaos: busy, come back later\r\n")
                return
            writer.write(b"220 chaos.test ESMTP\r\n")
            while True:
                line = await reader.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(b"250-chaos.test\r\n250 8BITMIME\r\n")
                elif verb == b"MAIL":
                    if self._chance(f.mail_421):
                        writer.write(b"421 4.7.0 chaos: too busy\r\n")
                        return
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    cut_after = 1 if self._chance(f.cut_in_data) else None
                    body: list[bytes] = []
                    while True:
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        if chunk == b".\r\n":
                            break
                        body.append(chunk)
                        if cut_after is not None and len(body) >= cut_after:
                            writer.transport.abort()
                            return
                    copy = await self._end_of_data(b"".join(body), writer)
                    if copy is None or copy.dropped:
                        return
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    return
                elif verb in (b"RSET", b"NOOP"):
                    writer.write(b"250 2.0.0 Ok\r\n")
                else:
                    writer.write(b"500 5.5.2 chaos: unknown command\r\n")
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _end_of_data(self, body: bytes, writer: asyncio.StreamWriter) -> Copy | None:
        """
        The final dot arrived: refuse, keep and hang up, or keep and reply.
        """
        f = self.faults
        if self._chance(f.dot_421):
            writer.write(b"421 4.3.0 chaos: not taken, closing\r\n")
            return None
        match = _MESSAGE_ID.search(body)
        message_id = match.group(1).decode() if match else "?"
        with self._lock:
            n = len(self._copies)
            dropped = self._chance(f.drop_after_dot)
            copy = Copy(message_id, None if dropped else f"Q{n}", dropped, time.monotonic())
            self._copies.append(copy)
        if dropped:
            # Kept, but the client never hears so: the ambiguous case.
            writer.transport.abort()
            return copy
        if self._chance(f.slow_reply):
            await asyncio.sleep(self._rng.uniform(*f.slow_seconds))
        writer.write(f"250 2.0.0 Ok: queued as {copy.queue_id}\r\n".encode())
        return copy

    def start(self) -> ChaosRelay:
        """
        Listen on 127.0.0.1, port 0; returns once the port is known.

        :raises RuntimeError: if it did not start within 10 seconds.
        """
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            self._server = loop.run_until_complete(
                asyncio.start_server(self._session, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            try:
                loop.run_forever()
            finally:
                self._server.close()
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="chaos-relay", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("chaos relay did not start within 10 seconds")
        return self

    def stop(self) -> None:
        """Stop the loop and end the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop = self._thread = None
