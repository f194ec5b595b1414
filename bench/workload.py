"""
The benchmark's scenarios, the messages they send, and how a client process is measured.

Every client implementation (one per library, in ``bench/*_clients.py``) imports this
module, so all of them send the same bytes, to the same addresses, in the same number
of messages and connections, and are measured the same way.  It imports nothing from
Twisted or asyncio, so it costs every client process the same.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Final, Literal

SENDER: Final = "sender@bench.example"
LOCAL_HOSTNAME: Final = "bench.localhost"
SCENARIOS: Final = ("a", "b", "c", "d", "e")

#: The unit of each scenario's headline number; "s" is lower-is-better, the rest higher.
Metric = Literal["msgs/s", "MB/s", "s"]

#: Which scenarios each client can run.  The Nagle variant of twisted.mail exists only
#: to show the delayed-ACK stall of scenario (a); the queued txsmtpclient variant only
#: differs from the awaited one where several messages share a connection.
CLIENT_SCENARIOS: Final[dict[str, tuple[str, ...]]] = {
    "txsmtpclient": SCENARIOS,
    "txsmtpclient-queued": ("a", "c"),
    "smtplib": SCENARIOS,
    "aiosmtplib": SCENARIOS,
    "twisted.mail": SCENARIOS,
    "twisted.mail-nagle": ("a",),
    "raw": SCENARIOS,
}
CLIENTS: Final = tuple(CLIENT_SCENARIOS)

#: The client every other one is compared with.
SUBJECT: Final = "txsmtpclient"


@dataclass(frozen=True, slots=True)
class Workload:
    """
    What one client process sends in one scenario.

    :ivar scenario: the scenario's letter, ``a`` to ``e``.
    :ivar title: one line saying what the scenario is.
    :ivar messages: messages sent in all.
    :ivar connections: connections open at once; ``messages`` is split evenly among them.
    :ivar connection_per_message: open (and QUIT) a new connection for every message.
    :ivar recipients: RCPT TO addresses per message.
    :ivar message_bytes: size of each message in CRLF form, before dot-stuffing.
    :ivar metric: the unit of the headline number.
    """

    scenario: str
    title: str
    messages: int
    connections: int = 1
    connection_per_message: bool = False
    recipients: int = 1
    message_bytes: int = 1024
    metric: Metric = "msgs/s"

    def split(self) -> list[int]:
        """
        :returns: how many messages each of the ``connections`` connections sends.
        """
        share, extra = divmod(self.messages, self.connections)
        return [share + (1 if i < extra else 0) for i in range(self.connections)]


_FULL: Final = {
    "a": Workload("a", "10,000 1 KB messages over one connection", 10_000),
    "b": Workload("b", "3,000 1 KB messages, a new connection each", 3_000, 1, True),
    "c": Workload("c", "10,000 1 KB messages over 50 connections at once", 10_000, 50),
    "d": Workload(
        "d",
        'one 100 MB message, every 7th line starting with "."',
        1,
        message_bytes=100_000_000,
        metric="MB/s",
    ),
    "e": Workload("e", "one 1 KB message to 1,000 recipients", 1, recipients=1_000, metric="s"),
}

#: Every scenario shrunk to run in well under a second, for CI.
_SMOKE: Final = {
    "a": replace(_FULL["a"], messages=20),
    "b": replace(_FULL["b"], messages=5),
    "c": replace(_FULL["c"], messages=100),
    "d": replace(_FULL["d"], message_bytes=1_000_000),
    "e": replace(_FULL["e"], recipients=50),
}

#: Without TCP_NODELAY twisted.mail waits ~40 ms per command for a delayed ACK, so a full
#: scenario (a) would take minutes; its rate is as clear from 200 messages (~9 s).
_NAGLE_MESSAGES: Final = {False: 200, True: 5}


def workload_for(scenario: str, client: str, *, smoke: bool) -> Workload:
    """
    :param scenario: a letter from :data:`SCENARIOS`.
    :param client: a name from :data:`CLIENTS`.
    :param smoke: the tiny CI version instead of the real one.
    :returns: what ``client`` sends in ``scenario``.
    :raises KeyError: for an unknown scenario.
    """
    workload = (_SMOKE if smoke else _FULL)[scenario]
    if client == "twisted.mail-nagle":
        workload = replace(workload, messages=min(workload.messages, _NAGLE_MESSAGES[smoke]))
    return workload


def recipients(count: int) -> list[str]:
    """
    :returns: ``count`` distinct recipient addresses.
    """
    if count == 1:
        return ["rcpt@bench.example"]
    return [f"rcpt{i}@bench.example" for i in range(count)]


def small_message(size: int = 1024, newline: bytes = b"\r\n") -> bytes:
    """
    A message of exactly ``size`` bytes in CRLF form.

    :param newline: ``b"\\n"`` for clients that take LF text and convert it
        (twisted.mail); the bytes on the wire are then the same.
    :returns: the message, headers and body, ending in a newline.
    """
    headers = [
        b"From: Bench Sender <" + SENDER.encode() + b">",
        b"To: rcpt@bench.example",
        b"Subject: txsmtpclient benchmark message",
        b"Date: Thu, 01 Jan 2026 00:00:00 +0000",
        b"Message-ID: <bench@bench.example>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=us-ascii",
        b"",
    ]
    head = b"\r\n".join(headers) + b"\r\n"
    body = bytearray()
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghij."
    while len(head) + len(body) + len(line) + 2 <= size - 4:
        body += line + b"\r\n"
    body += b"x" * (size - len(head) - len(body) - 2) + b"\r\n"
    message = head + bytes(body)
    assert len(message) == size, len(message)
    return message.replace(b"\r\n", newline)


#: One block of the large message: 7 lines of 78 bytes (CRLF form), the first starting
#: with "." so that every 7th line of the message needs dot-stuffing (RFC 5321 4.5.2).
_BLOCK_LINES: Final = [
    (b"." if i == 0 else b"") + b"%d-" % i + b"Lorem ipsum dolor sit amet, consectetur "
    b"adipiscing elit, sed do eiusmod tempor."
    for i in range(7)
]
_BLOCKS_PER_CHUNK: Final = 120


def large_message_chunks(size: int, newline: bytes = b"\r\n") -> Iterator[bytes]:
    """
    The large message of scenario (d), generated chunk by chunk.

    Every chunk starts at the start of a line and ends with a newline, and all body
    chunks are the same object, so generating the message costs neither memory nor
    time: a client that streams holds one chunk at a time.

    :param size: the message's size in CRLF form; it is rounded up to whole chunks.
    :param newline: ``b"\\n"`` for clients that take LF text (twisted.mail).
    :returns: an iterator of chunks (header first).
    """
    head = small_message(256, newline).split(newline + newline)[0] + newline * 2
    block = b"".join(line.ljust(76) + newline for line in _BLOCK_LINES)
    chunk = block * _BLOCKS_PER_CHUNK
    crlf_chunk = len(chunk) + chunk.count(b"\n") * (len(b"\r\n") - len(newline))
    yield head
    for _ in range(-(-size // crlf_chunk)):
        yield chunk


def large_message_size(size: int) -> int:
    """
    :returns: the size in CRLF form, before dot-stuffing, of ``large_message_chunks(size)``.
    """
    return sum(len(chunk) for chunk in large_message_chunks(size))


class ChunkReader:
    """
    A read-only binary file over an iterable of chunks, for APIs that take a file
    (twisted.mail's ``SMTPSenderFactory``) without materialising the message.
    """

    def __init__(self, chunks: Iterable[bytes]) -> None:
        """
        :param chunks: the file's content, in order.
        """
        self._chunks = iter(chunks)
        self._buffer = b""
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        """
        :param size: how many bytes at most; negative for all that remain.
        :returns: the next bytes; ``b""`` at the end.
        """
        if size < 0:
            rest = self._buffer[self._position :] + b"".join(self._chunks)
            self._buffer, self._position = b"", 0
            return rest
        while len(self._buffer) - self._position < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer = self._buffer[self._position :] + chunk
            self._position = 0
        data = self._buffer[self._position : self._position + size]
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """
        twisted.mail rewinds the file before a retry; the benchmark never retries.

        :raises OSError: unless it is a no-op rewind at the very start.
        """
        if (offset, whence, self._position, self._buffer) != (0, 0, 0, b""):
            raise OSError("ChunkReader cannot seek")
        return 0


def current_rss() -> int:
    """
    :returns: this process's resident set size now, in bytes (Linux ``/proc``).
    """
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """
    :returns: the highest resident set size this process has had, in bytes.
    """
    # ru_maxrss is the kernel's high-water mark, so no sampling can miss a spike; on
    # Linux it is in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    """
    :returns: user plus system CPU time this process (all its threads) has used.
    """
    # What os.times() reports, but from getrusage, whose microseconds resolve a fast
    # scenario that os.times()'s 10 ms clock ticks would round to zero.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(slots=True)
class Meter:
    """
    Measures one client process: RSS before the message exists, then wall-clock time,
    CPU time and peak RSS from the first connection to the last QUIT.
    """

    client: str
    workload: Workload
    rss_before: int = 0
    _wall_start: float = field(default=0.0, repr=False)
    _cpu_start: float = field(default=0.0, repr=False)

    def baseline(self) -> None:
        """
        Record the RSS to compare the peak with.  Call it after imports and before the
        large message of scenario (d) is built, so a client that cannot stream pays for
        holding the whole message.
        """
        self.rss_before = current_rss()

    def start(self) -> None:
        """
        Start the clocks, just before the first connection is opened.
        """
        self._cpu_start = cpu_seconds()
        self._wall_start = time.perf_counter()

    def stop(self, message_bytes: int) -> dict[str, object]:
        """
        Stop the clocks, after every message was accepted and every connection closed.

        :param message_bytes: the size of each message in CRLF form.
        :returns: the measurement, as the JSON object the driver reads.
        """
        seconds = time.perf_counter() - self._wall_start
        cpu = cpu_seconds() - self._cpu_start
        peak = peak_rss()
        messages = self.workload.messages
        mib = 1024 * 1024
        return {
            "client": self.client,
            "workload": asdict(self.workload),
            "seconds": seconds,
            "msgs_per_s": messages / seconds,
            "mb_per_s": messages * message_bytes / 1e6 / seconds,
            "cpu_s": cpu,
            "cpu_ms_per_msg": cpu * 1000 / messages,
            "rss_before_mib": self.rss_before / mib,
            "peak_rss_mib": peak / mib,
            "rss_growth_mib": (peak - self.rss_before) / mib,
            "message_bytes": message_bytes,
        }


def emit(result: dict[str, object]) -> None:
    """
    Print the measurement as the one JSON line the driver reads from stdout.
    """
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def stuff_chunk(chunk: bytes) -> bytes:
    """
    Dot-stuff (RFC 5321 4.5.2) a CRLF chunk that starts at the start of a line.

    :returns: the chunk with every line's leading "." doubled.
    """
    stuffed = chunk.replace(b"\r\n.", b"\r\n..")
    return b"." + stuffed if stuffed[:1] == b"." else stuffed
