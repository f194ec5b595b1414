"""
The sink's ceiling: a minimal pipelining SMTP client on a raw blocking socket.

It does only what a benchmark needs and checks only reply codes, but it does what
RFC 2920 allows at full speed: the envelope (MAIL, every RCPT, DATA) goes in one
write, and each message's content, its final "." and the next message's envelope (or
QUIT) go in one more, so a message costs one round trip on an open connection.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence

from workload import LOCAL_HOSTNAME, SENDER, stuff_chunk


class ReferenceError(Exception):
    """
    The sink answered with an unexpected code.
    """


class RawClient:
    """
    One SMTP connection on a blocking socket, sending pipelined transactions.
    """

    def __init__(self, port: int) -> None:
        """
        Connect to 127.0.0.1:``port`` and greet it with EHLO.

        :raises ReferenceError: if the greeting or EHLO is refused.
        """
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.replies = self.sock.makefile("rb")
        self._expect([220])
        self.sock.sendall(b"EHLO " + LOCAL_HOSTNAME.encode() + b"\r\n")
        self._expect([250])

    def _expect(self, codes: Sequence[int]) -> None:
        """
        Read one complete reply for each expected code, in order (RFC 5321 4.2.1).

        :raises ReferenceError: on the first reply whose code differs.
        """
        for code in codes:
            line = self.replies.readline()
            while line[3:4] == b"-":
                line = self.replies.readline()
            if line[:3] != b"%d" % code:
                raise ReferenceError(f"expected {code}, got {line!r}")

    def send(self, count: int, rcpts: Sequence[str], message: bytes | Iterable[bytes]) -> None:
        """
        Send ``count`` copies of one message, then QUIT and close.

        :param message: the message in CRLF form: bytes, or an iterable of chunks that
            each start at the start of a line (so each can be dot-stuffed alone).
        :raises ReferenceError: if the sink refuses anything.
        """
        envelope = b"MAIL FROM:<%s>\r\n" % SENDER.encode()
        envelope += b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
        envelope += b"DATA\r\n"
        envelope_replies = [250] * (1 + len(rcpts)) + [354]
        # An unchanging message is stuffed once; chunks are stuffed as they are sent.
        body = stuff_chunk(message) if isinstance(message, bytes) else None
        self.sock.sendall(envelope)
        self._expect(envelope_replies)
        for i in range(count):
            last = i == count - 1
            tail = b".\r\n" + (b"QUIT\r\n" if last else envelope)
            if body is not None:
                self.sock.sendall(body + tail)
            else:
                assert not isinstance(message, bytes)
                for chunk in message:
                    self.sock.sendall(stuff_chunk(chunk))
                self.sock.sendall(tail)
            self._expect([250, 221] if last else [250, *envelope_replies])
        self.replies.close()
        self.sock.close()
