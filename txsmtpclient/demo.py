"""
``python -m txsmtpclient demo``: the sending daemon at work, with nothing to
configure.

It starts a small SMTP sink on ``127.0.0.1`` (a port the kernel picks),
makes a temporary spool, queues a message due a few seconds ahead, runs the
same service ``twist txsmtp`` runs (:func:`txsmtpclient.tap.makeService`)
pointed at the sink, prints what happens, and exits 0 once the message has
arrived and the spool has recorded its delivery (1 on failure or timeout).
"""

from __future__ import annotations

import email.utils
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater, react
from twisted.internet.threads import deferToThread
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.protocols.basic import LineReceiver
from zope.interface import provider

from txsmtpclient.spool.envelope import State
from txsmtpclient.spool.schedule import ScheduleError, parse_duration
from txsmtpclient.spool.store import Spool
from txsmtpclient.tap import Options, makeService

__all__ = ["SinkMessage", "SinkProtocol", "main"]


@dataclass
class SinkMessage:
    """
    One message the sink accepted.
    """

    sender: str
    recipients: list[str]
    data: bytes


@dataclass
class _Session:
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)


def _path(argument: bytes) -> str:
    # "FROM:<a@b> SIZE=10" -> "a@b" (RFC 5321 section 4.1.1.2).
    text = argument.decode("utf-8", "replace")
    start, end = text.find("<"), text.find(">")
    return text[start + 1 : end] if 0 <= start < end else text.partition(":")[2].strip()


class SinkProtocol(LineReceiver):
    """
    A minimal SMTP server (RFC 5321 section 4.1) that accepts every message
    and hands it to ``on_message``: just enough for the demo.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 1_000_000

    def __init__(self, on_message: Callable[[SinkMessage], None]) -> None:
        self.on_message = on_message
        self.session = _Session()
        self.in_data = False
        self.count = 0

    def _reply(self, line: bytes) -> None:
        self.sendLine(line)  # type: ignore[no-untyped-call]

    def connectionMade(self) -> None:
        self._reply(b"220 sink.localhost ESMTP txsmtpclient demo sink")

    def lineReceived(self, line: bytes) -> None:
        if self.in_data:
            if line == b".":
                self.in_data = False
                self.count += 1
                s = self.session
                # RFC 5321 section 4.5.2: undo the dot-stuffing.
                data = b"".join(
                    (ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in s.lines
                )
                self.session = _Session()
                self._reply(f"250 2.0.0 Ok: queued as SINK{self.count}".encode())
                self.on_message(SinkMessage(s.sender or "", s.recipients, data))
            else:
                self.session.lines.append(line)
            return
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        if verb == b"EHLO":
            self._reply(b"250-sink.localhost\r\n250-8BITMIME\r\n250 SIZE 10000000")
        elif verb == b"HELO":
            self._reply(b"250 sink.localhost")
        elif verb == b"MAIL":
            self.session = _Session(sender=_path(argument))
            self._reply(b"250 2.1.0 Ok")
        elif verb == b"RCPT":
            self.session.recipients.append(_path(argument))
            self._reply(b"250 2.1.5 Ok")
        elif verb == b"DATA":
            if self.session.sender is None or not self.session.recipients:
                self._reply(b"503 5.5.1 Error: need MAIL and RCPT")
            else:
                self.in_data = True
                self._reply(b"354 End data with <CR><LF>.<CR><LF>")
        elif verb in (b"RSET", b"NOOP"):
            self.session = _Session()
            self._reply(b"250 2.0.0 Ok")
        elif verb == b"QUIT":
            self._reply(b"221 2.0.0 Bye")
            if self.transport is not None:
                self.transport.loseConnection()
        else:
            self._reply(b"502 5.5.2 Command not recognised")


def _message(now: float) -> bytes:
    return (
        "From: Demo <demo@localhost>\r\n"
        "To: You <you@localhost>\r\n"
        "Subject: Hello from the txsmtp spool\r\n"
        f"Date: {email.utils.formatdate(now, localtime=True)}\r\n"
        f"Message-ID: {email.utils.make_msgid(domain='demo.localhost')}\r\n"
        "\r\n"
        "This message waited in a spool until it was due, then the\r\n"
        "txsmtp daemon sent it to this sink.\r\n"
    ).encode("ascii")


def _when(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}"


async def _run(reactor: Any, delay: float, timeout: float, out: TextIO) -> int:
    arrived: Deferred[SinkMessage] = Deferred()

    def on_message(message: SinkMessage) -> None:
        if not arrived.called:
            arrived.callback(message)

    @provider(ILogObserver)
    def show(event: LogEvent) -> None:
        namespace = event.get("log_namespace", "")
        if namespace.startswith("txsmtpclient.spool") and "id" in event:
            print(f"[{_when(event['log_time'])}] daemon: {formatEvent(event)}", file=out)

    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port: IListeningPort = await endpoint.listen(
        Factory.forProtocol(lambda: SinkProtocol(on_message))
    )
    address = port.getHost()
    folder = tempfile.mkdtemp(prefix="txsmtp-demo-")
    spool = Spool(folder)
    print(f"Sink listening on 127.0.0.1:{address.port}", file=out)  # type: ignore[attr-defined]
    print(f"Temporary spool: {folder}", file=out)
    globalLogPublisher.addObserver(show)
    service = None
    try:
        now = reactor.seconds()
        due = now + delay
        entry_id = await deferToThread(
            spool.enqueue, _message(now), "demo@localhost", ["you@localhost"], at=due
        )
        print(f"Enqueued {entry_id}, due at {_when(due)} (in {delay:g}s)", file=out)
        options = Options()
        options.parseOptions(
            [
                "--relay",
                f"tcp:127.0.0.1:{address.port}",  # type: ignore[attr-defined]
                "--spool",
                folder,
                "--tls",
                "never",
                "--concurrency",
                "1",
                "--poll-interval",
                "0.2s",
                "--grace",
                "5s",
            ]
        )
        service = makeService(options)
        service.startService()
        print(f"Daemon started (as 'twist txsmtp' would run it) at {_when(now)}", file=out)
        arrived.addTimeout(timeout, reactor)
        try:
            message = await arrived
        except Exception:
            print(f"FAILED: the message did not arrive within {timeout:g}s", file=out)
            return 1
        print(
            f"[{_when(reactor.seconds())}] sink: message arrived from <{message.sender}> "
            f"to {', '.join(f'<{r}>' for r in message.recipients)}:",
            file=out,
        )
        for line in message.data.decode("utf-8", "replace").splitlines():
            print(f"    {line}", file=out)
        # The daemon records the delivery after the sink's reply to the final
        # dot; wait (bounded) until the spool shows it.
        deadline = reactor.seconds() + timeout
        while True:
            entry = await deferToThread(spool.get, entry_id)
            if entry.state is State.DONE or reactor.seconds() > deadline:
                break
            await deferLater(reactor, 0.05, lambda: None)
        if entry.state is not State.DONE:
            print(f"FAILED: the spool shows {entry_id} as {entry.state.value}", file=out)
            return 1
        outcome = entry.outcome
        queue_id = outcome.queue_id if outcome is not None else None
        print(
            f"Spool entry {entry_id} is done (relay queue id {queue_id}); "
            f"attempts: {len(entry.attempts)}",
            file=out,
        )
        return 0
    finally:
        globalLogPublisher.removeObserver(show)
        if service is not None:
            stopping = service.stopService()
            if stopping is not None:
                await stopping
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
        shutil.rmtree(folder, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """
    Run the demo.

    :param argv: the arguments after the program name (default
        ``sys.argv[1:]``): ``--in DURATION`` (default ``3s``) and
        ``--timeout SECONDS`` (default 30).
    :returns: 0 once the message arrived, 1 on failure or timeout, 64 for a
        bad command line (one line on stderr, as the other commands).
    """
    from txsmtpclient.spool.cli import CommandParser

    parser = CommandParser(
        prog="python -m txsmtpclient demo",
        description="Queue a message in a temporary spool and watch the daemon "
        "deliver it to a local sink when it falls due.",
    )
    parser.add_argument("--in", dest="delay", default="3s", help="delay before due (3s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="give up after (30)")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        try:
            delay = parse_duration(args.delay)
        except ScheduleError as e:
            parser.error(f"--in: {e}")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    out = sys.stdout
    result: list[int] = []

    async def run(reactor: Any) -> None:
        result.append(await _run(reactor, delay, args.timeout, out))

    try:
        react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            return int(e.code) if isinstance(e.code, int) else 1
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
