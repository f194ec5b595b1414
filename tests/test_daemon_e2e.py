"""
End-to-end tests of the sending daemon: the service ``twist txsmtp`` builds
(:func:`txsmtpclient.tap.makeService`), on the real reactor, against an
aiosmtpd server on loopback (``servers.py``).  Waits are bounded: the server
wakes Deferreds as messages arrive, and spool states are polled with a bound.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_twisted
from servers import AiosmtpdServer, ServerScript
from twisted.application.service import MultiService
from twisted.internet.task import deferLater

from txsmtpclient import tap
from txsmtpclient.spool.envelope import Entry, State
from txsmtpclient.spool.service import SpoolService
from txsmtpclient.spool.store import Spool

REPO = Path(__file__).resolve().parent.parent
SENDER = "sender@example.test"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class Once(dict[str, str]):
    """A refusal table whose every refusal is given once, then the address is accepted."""

    def get(self, key: str, default: Any = None) -> Any:
        return self.pop(key, default)


def _message(n: int | str) -> bytes:
    return (
        f"From: {SENDER}\r\nSubject: test {n}\r\nMessage-ID: <m{n}@example.test>\r\n\r\n"
        f"Body {n}\r\n"
    ).encode()


async def _until(
    check: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``check`` every 50 ms, at most ``timeout`` seconds."""
    reactor = _reactor()
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await deferLater(reactor, 0.05, lambda: None)


class Daemon:
    """The daemon under test and its spool."""

    def __init__(self, service: MultiService, spool: Spool) -> None:
        self.service = service
        self.spool = spool

    @property
    def spool_service(self) -> SpoolService:
        s = self.service.getServiceNamed("spool")
        assert isinstance(s, SpoolService)
        return s

    def entry(self, entry_id: str) -> Entry:
        return self.spool.get(entry_id)

    async def until_state(self, entry_id: str, state: State, timeout: float = 10.0) -> Entry:
        try:
            await _until(
                lambda: self.entry(entry_id).state is state, timeout, f"{entry_id} {state}"
            )
        except AssertionError as e:
            service = self.spool_service
            # What was the daemon doing?  A send still waiting for its reply
            # shows in "sending"; a spool call stuck in a thread does not.
            raise AssertionError(
                f"{e}; entry {self.entry(entry_id)}; counts {self.spool.counts()}; "
                f"in flight {list(service.in_flight)}; "
                f"sending {list(service.deliverer.sending)}"
            ) from None
        return self.entry(entry_id)


@pytest_twisted.async_yield_fixture()  # type: ignore[untyped-decorator]
async def make_daemon(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Any]]:
    started: list[Daemon] = []

    async def make(relay: str, *extra: str, start: bool = True) -> Daemon:
        folder = tmp_path / "spool"
        options = tap.Options()
        options.parseOptions(  # type: ignore[no-untyped-call]
            [
                "--relay",
                relay,
                "--spool",
                str(folder),
                "--tls",
                "never",
                "--poll-interval",
                "0.1",
                "--retry-schedule",
                "0.2s,0.5s",
                "--grace",
                "5",
                "--concurrency",
                "4",
                *extra,
            ]
        )
        daemon = Daemon(tap.makeService(options), Spool(folder))
        if start:
            daemon.service.startService()
            started.append(daemon)
            # Recovery clears this process's unfinished files in tmp/: enqueue after it.
            await daemon.spool_service.when_ready()
        return daemon

    yield make
    for daemon in started:
        await daemon.service.stopService()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_due_now_and_later(
    smtp_server: AiosmtpdServer, make_daemon: Callable[..., Any]
) -> None:
    """A message due now goes at once; one due in 1.5 s goes no sooner."""
    daemon = await make_daemon(smtp_server.address)
    now_id = daemon.spool.enqueue(_message("now"), SENDER, ["a@example.test"])
    due = time.time() + 1.5
    later_id = daemon.spool.enqueue(_message("later"), SENDER, ["b@example.test"], at=due)
    daemon.spool_service.wake()
    first = await smtp_server.when_messages(1, timeout=10, reactor=_reactor())
    assert first[0].content == _message("now")
    assert daemon.entry(later_id).state is State.QUEUED
    messages = await smtp_server.when_messages(2, timeout=10, reactor=_reactor())
    assert time.time() >= due
    assert messages[1].content == _message("later")
    assert messages[1].rcpt_tos == ("b@example.test",)
    done = await daemon.until_state(now_id, State.DONE)
    assert done.attempts[-1].code == 250
    await daemon.until_state(later_id, State.DONE)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_recurring_message_is_sent_again(
    smtp_server: AiosmtpdServer, make_daemon: Callable[..., Any]
) -> None:
    """A message recurring every second is sent, queued again, and sent again."""
    daemon = await make_daemon(smtp_server.address)
    entry_id = daemon.spool.enqueue(
        _message("tick"), SENDER, ["a@example.test"], recurrence="every 1s"
    )
    messages = await smtp_server.when_messages(2, timeout=10, reactor=_reactor())
    assert [m.content for m in messages[:2]] == [_message("tick")] * 2
    await _until(lambda: daemon.entry(entry_id).occurrences >= 2, what="two occurrences")
    assert daemon.entry(entry_id).state in (State.QUEUED, State.SENDING)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_temporary_refusal_is_retried(
    smtp_server_factory: Callable[..., AiosmtpdServer], make_daemon: Callable[..., Any]
) -> None:
    """A 451 to RCPT is retried after the backoff and then accepted."""
    server = smtp_server_factory(
        ServerScript(refuse_recipients=Once({"a@example.test": "451 4.3.0 Try again later"}))
    )
    daemon = await make_daemon(server.address)
    entry_id = daemon.spool.enqueue(_message(1), SENDER, ["a@example.test"])
    messages = await server.when_messages(1, timeout=10, reactor=_reactor())
    assert messages[0].rcpt_tos == ("a@example.test",)
    done = await daemon.until_state(entry_id, State.DONE)
    assert [a.code for a in done.attempts] == [451, 250]
    assert done.attempts[0].temporary
    assert done.attempts[1].at - done.attempts[0].at >= 0.2 * 0.8


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_permanent_refusal_fails_at_once(
    smtp_server_factory: Callable[..., AiosmtpdServer], make_daemon: Callable[..., Any]
) -> None:
    """A 550 to RCPT fails the message after one attempt; nothing arrives."""
    server = smtp_server_factory(
        ServerScript(refuse_recipients={"bad@example.test": "550 5.1.1 No such user"})
    )
    daemon = await make_daemon(server.address)
    entry_id = daemon.spool.enqueue(_message(1), SENDER, ["bad@example.test"])
    failed = await daemon.until_state(entry_id, State.FAILED)
    assert len(failed.attempts) == 1
    assert failed.outcome is not None and failed.outcome.code == 550
    assert server.messages == []


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_partial_refusal(
    smtp_server_factory: Callable[..., AiosmtpdServer], make_daemon: Callable[..., Any]
) -> None:
    """Accepted recipients are done, 4xx ones retried alone, 5xx ones recorded failed."""
    server = smtp_server_factory(
        ServerScript(
            refuse_recipients=Once(
                {
                    "later@example.test": "450 4.2.1 Mailbox busy",
                    "bad@example.test": "550 5.1.1 No such user",
                }
            )
        )
    )
    daemon = await make_daemon(server.address)
    entry_id = daemon.spool.enqueue(
        _message(1), SENDER, ["ok@example.test", "later@example.test", "bad@example.test"]
    )
    messages = await server.when_messages(2, timeout=10, reactor=_reactor())
    assert messages[0].rcpt_tos == ("ok@example.test",)
    assert messages[1].rcpt_tos == ("later@example.test",)
    done = await daemon.until_state(entry_id, State.DONE)
    assert set(done.delivered) == {"ok@example.test", "later@example.test"}
    assert done.failed == ("bad@example.test",)
    assert len(server.messages) == 2


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_sendmail_entry_point_feeds_the_daemon(
    smtp_server: AiosmtpdServer, make_daemon: Callable[..., Any], tmp_path: Path
) -> None:
    """A message piped to ``python -m txsmtpclient sendmail`` is delivered by the daemon."""
    daemon = await make_daemon(smtp_server.address, start=False)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    body = b"To: rcpt@example.test\nSubject: via sendmail\n\nHello from sendmail(1)\n"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "txsmtpclient",
            "sendmail",
            "--spool",
            str(tmp_path / "spool"),
            "-i",
            "-f",
            SENDER,
            "-t",
        ],
        input=body,
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    daemon.service.startService()
    try:
        messages = await smtp_server.when_messages(1, timeout=10, reactor=_reactor())
        assert messages[0].mail_from == SENDER
        assert messages[0].rcpt_tos == ("rcpt@example.test",)
        assert b"Hello from sendmail(1)\r\n" in messages[0].content
        await _until(lambda: daemon.spool.counts()["done"] == 1, what="done")
    finally:
        await daemon.service.stopService()


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_http_status_endpoint(
    smtp_server: AiosmtpdServer, make_daemon: Callable[..., Any]
) -> None:
    """The status endpoint answers GET with queue counts by state as JSON."""
    import urllib.request

    from twisted.internet.threads import deferToThread

    def fetch(url: str) -> tuple[int, str | None, bytes]:
        # urllib in a thread: twisted.web.client's header cache trips
        # BytesWarning under python -bb.
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["content-type"], response.read()

    daemon = await make_daemon(smtp_server.address, "--status-port", "tcp:0:interface=127.0.0.1")
    daemon.spool.enqueue(_message(1), SENDER, ["a@example.test"])
    daemon.spool.enqueue(_message(2), SENDER, ["b@example.test"], at=time.time() + 3600)
    await smtp_server.when_messages(1, timeout=10, reactor=_reactor())
    await _until(lambda: daemon.spool.counts()["done"] == 1, what="done")
    status_service: Any = daemon.service.getServiceNamed("status")
    port = await status_service.when_listening()
    url = f"http://127.0.0.1:{port.getHost().port}/"
    code, content_type, raw = await deferToThread(fetch, url)
    assert code == 200
    assert content_type == "application/json"
    body = json.loads(raw)
    assert body["counts"]["queue"] == 1
    assert body["counts"]["done"] == 1
    assert body["counts"]["sending"] == 0
    assert body["handled"] == {"delivered": 1}


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_relay_down_then_up(tmp_path: Path, make_daemon: Callable[..., Any]) -> None:
    """A refused connection is a temporary failure: the message goes once the relay is up."""
    server = AiosmtpdServer(ServerScript()).start()
    address = server.address
    server.stop()
    # Nothing listens on the port now: every attempt is refused.
    daemon = await make_daemon(address)
    entry_id = daemon.spool.enqueue(_message(1), SENDER, ["a@example.test"])
    await _until(lambda: len(daemon.entry(entry_id).attempts) >= 1, what="an attempt")
    entry = daemon.entry(entry_id)
    assert entry.attempts[0].code is None
    assert entry.attempts[0].temporary
    assert entry.state in (State.QUEUED, State.SENDING)


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_each_attempt_logs_the_transaction_event(
    smtp_server: AiosmtpdServer, make_daemon: Callable[..., Any]
) -> None:
    """Every delivery attempt ends with a txsmtpclient.transaction event carrying its trace."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "txsmtpclient.transaction":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        daemon = await make_daemon(smtp_server.address)
        entry_id = daemon.spool.enqueue(_message("traced"), SENDER, ["a@example.test"])
        daemon.spool_service.wake()
        await daemon.until_state(entry_id, State.DONE)
    finally:
        globalLogPublisher.removeObserver(observe)
    [event] = events
    assert (event["outcome"], event["code"], event["sender"]) == ("sent", 250, SENDER)
    assert {"envelope", "final"} <= set(event["timings"]) and event["bytes_sent"] > 0
    assert [reply[0] for reply in event["replies"]][-1] == 250
