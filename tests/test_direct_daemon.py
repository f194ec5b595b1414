"""
The daemon in direct mode (issue 11, item 2): ``twist txsmtp --direct``.

Real parts: the spool on disk, a ``twisted.names`` DNS server on loopback
(``dnsserver.py``) and scripted MX hosts on their own loopback addresses
(127.0.0.2, 127.0.0.3), all on one port.  The service is built by
``tap.makeService`` with a :class:`~twisted.internet.task.Clock` for its polls
and the per-destination backoff, so "no connection until the backoff passes"
is decided by moving that clock; scripted reply delays run on another Clock
the test moves.  Waits on the real reactor are polls with a bound.  One test
runs ``twist txsmtp --direct`` as a subprocess.  Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from directworld import DirectWorld
from dnsserver import Zone
from servers import POSTFIX_HOSTNAME, TEST_DOMAIN, PostfixInstance
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.names import dns
from twisted.python import usage

from txsmtpclient import tap
from txsmtpclient.direct import DirectResult
from txsmtpclient.direct._gate import Backoff, Destinations
from txsmtpclient.direct._sender import DirectSender, refusal_for
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPConnectError,
    SMTPDestinationDeferred,
    SMTPRoutingError,
    SMTPServerDisconnected,
)
from txsmtpclient.reply import Reply
from txsmtpclient.spool.envelope import Dsn, Entry, RecipientState, State
from txsmtpclient.spool.service import SpoolService
from txsmtpclient.spool.store import Spool
from txsmtpclient.testing import CONNECT, DATA_END, Script

REPO = Path(__file__).resolve().parent.parent
SENDER = "sender@origin.test"


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _message(n: int | str) -> bytes:
    return f"From: {SENDER}\r\nSubject: direct {n}\r\n\r\n.dot {n}\r\nbody\r\n".encode()


async def _until(check: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    """Poll ``check`` on the real reactor, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(_reactor(), 0.02, lambda: None)


class _DelayClock:
    """Listens on the real reactor; scripted reply delays run on a Clock."""

    def __init__(self, reactor: Any, clock: Clock) -> None:
        self._reactor = reactor
        self._clock = clock

    def listenTCP(self, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.listenTCP(*args, **kwargs)

    def callLater(self, *args: Any, **kwargs: Any) -> Any:
        return self._clock.callLater(*args, **kwargs)

    def seconds(self) -> float:
        return self._clock.seconds()


def mx(preference: int, name: str) -> dns.Record_MX:
    return dns.Record_MX(preference, name)


def a(address: str) -> dns.Record_A:
    return dns.Record_A(address)


ZONE: Zone = {
    "one.test": [mx(10, "mx.one.test")],
    "two.test": [mx(10, "mx.two.test")],
    "origin.test": [mx(10, "mx.two.test")],
    "null.test": [mx(0, "")],
    "mx.one.test": [a("127.0.0.2")],
    "mx.two.test": [a("127.0.0.3")],
}


class World(DirectWorld):
    """The DNS server, the MX hosts, and the daemon in direct mode."""

    def __init__(self, tmp_path: Path) -> None:
        self.delays = Clock()
        reactor = _reactor()
        super().__init__(reactor, mx_reactor=_DelayClock(reactor, self.delays))
        self.tmp_path = tmp_path
        self.zone({name: list(records) for name, records in ZONE.items()})
        # The daemon's clock starts a little ahead of the wall clock, so a
        # message enqueued now (wall time) is due.
        self.clock = Clock()
        self.clock.advance(time.time() + 5)
        self.service: Any = None
        self.spool = Spool(tmp_path / "spool", fsync=False)

    def argv(self, *extra: str) -> list[str]:
        assert self.dns is not None
        host, port = self.dns.address
        return [
            "--direct",
            "--dns-server",
            f"{host}:{port}",
            "--mx-port",
            str(self.port),
            "--spool",
            str(self.tmp_path / "spool"),
            "--tls",
            "never",
            "--no-fsync",
            *extra,
        ]

    async def start(self, *extra: str) -> SpoolService:
        options = tap.Options()
        options.parseOptions(self.argv(*extra))  # type: ignore[no-untyped-call]
        self.service = tap.makeService(options, clock=self.clock)
        self.service.startService()
        spool_service = self.service.getServiceNamed("spool")
        assert isinstance(spool_service, SpoolService)
        await spool_service.when_ready()
        return spool_service

    @property
    def spool_service(self) -> SpoolService:
        s = self.service.getServiceNamed("spool")
        assert isinstance(s, SpoolService)
        return s

    @property
    def destinations(self) -> Destinations:
        sender = self.spool_service.sender
        assert isinstance(sender, DirectSender)
        return sender.destinations

    def enqueue(self, message: bytes, recipients: list[str], sender: str = SENDER) -> str:
        entry_id = self.spool.enqueue(message, sender, recipients)
        self.spool_service.wake()
        return entry_id

    def entry(self, entry_id: str) -> Entry:
        return self.spool.get(entry_id)

    async def until_state(
        self, entry_id: str, state: State, attempts: int = 0, due: float | None = None
    ) -> Entry:
        """Wait until the entry is in ``state`` with ``attempts`` or more (and ``due``)."""

        def reached() -> bool:
            entry = self.entry(entry_id)
            return (
                entry.state is state
                and len(entry.attempts) >= attempts
                and (due is None or entry.due == due)
                and entry_id not in self.spool_service.in_flight
            )

        await _until(reached, f"{entry_id} {state}")
        return self.entry(entry_id)

    def advance(self, seconds: float) -> None:
        """Move the daemon's clock and wake it (a poll timer may not be set yet)."""
        self.clock.advance(seconds)
        self.spool_service.wake()


@pytest_twisted.async_yield_fixture()
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    yield w
    if w.service is not None:
        await w.service.stopService()
    await w.close()


# -- the whole daemon, in process --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_domains_in_one_message_each_at_its_own_mx(world: World) -> None:
    """One message to two domains: each MX gets its own recipients, byte-exact."""
    one = world.mx("127.0.0.2")
    two = world.mx("127.0.0.3")
    await world.start()
    message = _message(1)
    entry_id = world.enqueue(message, ["a@one.test", "b@two.test", "c@one.test"])
    done = await world.until_state(entry_id, State.DONE)
    assert [(m.content, m.rcpt_tos) for m in one.messages] == [
        (message, ("a@one.test", "c@one.test"))
    ]
    assert [(m.content, m.rcpt_tos) for m in two.messages] == [(message, ("b@two.test",))]
    assert {r.address: r.state for r in done.recipients} == {
        "a@one.test": RecipientState.DELIVERED,
        "b@two.test": RecipientState.DELIVERED,
        "c@one.test": RecipientState.DELIVERED,
    }
    assert [(a.relay, a.code) for a in done.attempts] == [("direct", 250)]


@pytest_twisted.ensureDeferred
async def test_each_recipient_records_its_own_domains_reply(world: World) -> None:
    """
    Two domains whose MXs answer the final dot with different 250 texts:
    each recipient's record carries its own domain's reply, not the first's.
    """
    ones = Script()
    ones.on(DATA_END, "250 2.0.0 Ok: queued as ONE111")
    twos = Script()
    twos.on(DATA_END, "250 2.0.0 Ok: queued as TWO222")
    world.mx("127.0.0.2", ones)
    world.mx("127.0.0.3", twos)
    await world.start()
    entry_id = world.enqueue(_message(1), ["b@two.test", "a@one.test", "c@one.test"])
    done = await world.until_state(entry_id, State.DONE)
    assert {r.address: str(r.reply) for r in done.recipients} == {
        "a@one.test": "250 2.0.0 Ok: queued as ONE111",
        "b@two.test": "250 2.0.0 Ok: queued as TWO222",
        "c@one.test": "250 2.0.0 Ok: queued as ONE111",
    }


@pytest_twisted.ensureDeferred
async def test_421_backs_the_destination_off_while_others_get_mail(world: World) -> None:
    """
    A 421 from one.test's MX backs one.test off: two.test still gets mail,
    and no new connection is made to one.test until the backoff passes
    (waiting there is not counted as an attempt); then one.test gets it all.
    """
    busy = Script()
    busy.on(CONNECT, "421 4.7.0 too many connections, slow down", times=1)
    one = world.mx("127.0.0.2", busy)
    two = world.mx("127.0.0.3")
    await world.start("--destination-backoff", "60s,10m", "--retry-schedule", "10s,1m")
    first = world.enqueue(_message(1), ["a@one.test", "b@two.test"])
    entry = await world.until_state(first, State.QUEUED, attempts=1)
    replies = {r.address: (r.state, r.reply and r.reply.code) for r in entry.recipients}
    assert replies == {
        "a@one.test": (RecipientState.PENDING, 421),
        "b@two.test": (RecipientState.DELIVERED, 250),
    }
    assert len(one.sessions) == 1 and [m.rcpt_tos for m in two.messages] == [("b@two.test",)]
    opens = world.destinations.open_at("one.test")
    assert opens is not None and opens == pytest.approx(world.clock.seconds() + 60)

    # Meanwhile: mail to two.test goes; mail only to one.test waits, untried.
    second = world.enqueue(_message(2), ["z@one.test"])
    third = world.enqueue(_message(3), ["y@two.test"])
    await world.until_state(third, State.DONE)
    postponed = await world.until_state(second, State.QUEUED, due=opens)
    assert postponed.attempts == ()

    # The first message's retry falls due inside the backoff: postponed, not tried.
    world.advance(15)
    waited = await world.until_state(first, State.QUEUED, due=opens)
    assert len(waited.attempts) == 1
    assert len(one.sessions) == 1

    # The backoff passes: one.test is tried again and takes both messages.
    world.advance(opens - world.clock.seconds() + 1)
    done_first = await world.until_state(first, State.DONE, attempts=2)
    await world.until_state(second, State.DONE)
    assert len(done_first.attempts) == 2
    assert all(r.state is RecipientState.DELIVERED for r in done_first.recipients)
    assert sorted(m.rcpt_tos for m in one.messages) == [("a@one.test",), ("z@one.test",)]
    assert world.destinations.open_at("one.test") is None


@pytest_twisted.ensureDeferred
async def test_destination_concurrency_limit(world: World) -> None:
    """With --destination-concurrency 2, five messages to one domain: two sessions at a time."""
    slow = Script()
    slow.on(DATA_END, delay=10)
    one = world.mx("127.0.0.2", slow)
    await world.start("--destination-concurrency", "2", "--concurrency", "8")
    ids = [world.enqueue(_message(n), [f"r{n}@one.test"]) for n in range(5)]

    def held(sessions: int) -> Callable[[], bool]:
        # ``sessions`` sessions so far, two of them waiting for their reply.
        return lambda: (
            len(one.sessions) == sessions
            and len(world.delays.getDelayedCalls()) == 2
            and sum(not s.closed for s in one.sessions) == 2
        )

    await _until(lambda: len(world.spool_service.in_flight) == 5, "five in flight")
    await _until(held(2), "two sessions held")
    assert world.destinations.active("one.test") == 2
    assert world.destinations.waiting("one.test") == 3
    world.delays.advance(10)
    await _until(held(4), "the next two sessions held")
    assert len(one.messages) == 2
    world.delays.advance(10)
    await _until(lambda: len(world.delays.getDelayedCalls()) == 1, "the last session held")
    world.delays.advance(10)
    for entry_id in ids:
        await world.until_state(entry_id, State.DONE)
    assert len(one.sessions) == 5
    assert sorted(m.rcpt_tos[0] for m in one.messages) == [f"r{n}@one.test" for n in range(5)]


@pytest_twisted.ensureDeferred
async def test_temporary_failure_of_one_recipient_is_retried_alone(world: World) -> None:
    """A 450 for one recipient: the other is delivered; the retry carries only that one."""
    script = Script()
    script.on("RCPT", "450 4.2.0 mailbox busy", match="b@one.test", times=1)
    one = world.mx("127.0.0.2", script)
    await world.start("--retry-schedule", "10s,1m")
    entry_id = world.enqueue(_message(1), ["a@one.test", "b@one.test"])
    entry = await world.until_state(entry_id, State.QUEUED, attempts=1)
    states = {r.address: r.state for r in entry.recipients}
    assert states == {"a@one.test": RecipientState.DELIVERED, "b@one.test": RecipientState.PENDING}
    # A 450 4.2.0 is about a mailbox, not a rate limit: the domain is not backed off.
    assert world.destinations.open_at("one.test") is None
    world.advance(15)
    done = await world.until_state(entry_id, State.DONE, attempts=2)
    assert [m.rcpt_tos for m in one.messages] == [("a@one.test",), ("b@one.test",)]
    assert [a.delivered for a in done.attempts] == [("a@one.test",), ("b@one.test",)]


@pytest_twisted.ensureDeferred
async def test_null_mx_fails_and_the_sender_gets_a_notice(world: World) -> None:
    """A null MX fails its recipient permanently; the failure notice goes out directly too."""
    world.mx("127.0.0.2")
    origin = world.mx("127.0.0.3")
    await world.start("--notify-sender")
    entry_id = world.enqueue(_message(1), ["x@null.test"])
    failed = await world.until_state(entry_id, State.FAILED)
    [recipient] = failed.recipients
    assert recipient.state is RecipientState.FAILED
    assert recipient.reply is not None and recipient.reply.code == 556
    assert "null MX" in recipient.reply.text
    [notice] = await origin.when_messages(1).addTimeout(15, _reactor())
    assert notice.mail_from == "" and notice.rcpt_tos == (SENDER,)
    assert b"x@null.test" in notice.content and b"null MX" in notice.content
    assert world.servers["127.0.0.2"].sessions == []


@pytest_twisted.ensureDeferred
async def test_dsn_and_requiretls_through_the_daemon_to_postfix(
    world: World, postfix: PostfixInstance
) -> None:
    """
    The daemon in direct mode with Postfix as the MX (verified STARTTLS):
    a message with DSN requests arrives exactly and Postfix's success notice
    carries its ENVID; a REQUIRETLS message fails for good (Postfix 3.7 does
    not offer REQUIRETLS) and nothing of it arrives.
    """
    world.zone({TEST_DOMAIN: [mx(10, POSTFIX_HOSTNAME)], POSTFIX_HOSTNAME: [a("127.0.0.1")]})
    world.port = postfix.port
    await world.start("--tls", "required", "--tls-ca", str(postfix.tls.cert_path))
    sender = f"daemon-sender@{TEST_DOMAIN}"
    sent = (
        f"From: <{sender}>\r\nTo: <dsn@{TEST_DOMAIN}>\r\nSubject: daemon dsn\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <txsmtpclient-daemon-dsn@{TEST_DOMAIN}>\r\n\r\nbody-not-returned\r\n"
    ).encode()
    with_dsn = world.spool.enqueue(
        sent,
        sender,
        [f"dsn@{TEST_DOMAIN}"],
        dsn=Dsn(ret="HDRS", envid="daemon-envid-3", notify=("SUCCESS",)),
    )
    strict = world.spool.enqueue(
        sent, sender, [f"strict@{TEST_DOMAIN}"], mail_options=["REQUIRETLS"]
    )
    world.spool_service.wake()
    done = await world.until_state(with_dsn, State.DONE)
    failed = await world.until_state(strict, State.FAILED)
    [delivered] = done.recipients
    assert delivered.reply is not None and "queued as" in delivered.reply.text
    [refused] = failed.recipients
    assert refused.reply is not None and refused.reply.code >= 500
    assert "REQUIRETLS" in refused.reply.text
    # RFC 8689 section 5: "REQUIRETLS support required".
    assert refused.reply.text.startswith("5.7.30 ")
    messages = await postfix.when_messages(2)
    by_rcpt = {m.delivered_to: m for m in messages}
    assert set(by_rcpt) == {f"dsn@{TEST_DOMAIN}", sender}
    assert by_rcpt[f"dsn@{TEST_DOMAIN}"].original == sent.replace(b"\r\n", b"\n")
    notice = by_rcpt[sender].original
    assert b"Original-Envelope-Id: daemon-envid-3" in notice
    assert b"text/rfc822-headers" in notice and b"body-not-returned" not in notice


@pytest_twisted.ensureDeferred
async def test_subprocess_twist_txsmtp_direct(world: World) -> None:
    """``twist txsmtp --direct`` as its own process delivers a queued message to the MX."""
    one = world.mx("127.0.0.2")
    message = _message("subprocess")
    world.spool.enqueue(message, SENDER, ["a@one.test"])
    ended: Deferred[None] = Deferred()

    class Watch(protocol.ProcessProtocol):
        output = b""

        def outReceived(self, data: bytes) -> None:
            self.output += data

        errReceived = outReceived

        def processEnded(self, reason: Any) -> None:
            ended.callback(None)

    watch = Watch()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = world.reactor.spawnProcess(
        watch,
        sys.executable,
        [sys.executable, "-m", "twisted", "txsmtp", *world.argv("--poll-interval", "0.1")],
        env=env,
        path=str(REPO),
    )
    try:
        [received] = await one.when_messages(1).addTimeout(30, world.reactor)
    finally:
        process.signalProcess("TERM")
        await ended
    assert received.content == message and received.rcpt_tos == ("a@one.test",)
    assert b"Traceback" not in watch.output


def test_direct_with_relay_is_a_one_line_usage_error() -> None:
    """--direct and --relay together, in process and from ``twist``: one line, exit 64."""
    import subprocess

    options = tap.Options()
    with pytest.raises(usage.UsageError, match="--direct and --relay exclude each other"):
        options.parseOptions(["--direct", "--relay", "mx.example.test:25"])  # type: ignore[no-untyped-call]
    result = subprocess.run(
        [sys.executable, "-m", "twisted", "txsmtp", "--direct", "--relay", "a.test:25"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 64
    # twist's one-line form since the start-up checks (see tests/test_tap.py).
    assert result.stderr.splitlines() == [
        "twist txsmtp: error: --direct and --relay exclude each other: give one of them"
        " (see 'twist txsmtp --help')"
    ]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dns-server", "dns.example.test"], "--dns-server: expected IP"),
        (["--dane-resolver", "192.0.2.1:53"], "must be on loopback"),
        (["--mx-port", "0"], "--mx-port must be from 1"),
        (["--destination-concurrency", "none"], "whole number"),
        (["--destination-backoff", "1m"], "INITIAL,MAXIMUM"),
        (["--destination-backoff", "10m,1m"], "initial <= maximum"),
    ],
)
def test_bad_direct_options_are_usage_errors(argv: list[str], message: str) -> None:
    """Each bad direct-mode value is a usage error naming the option."""
    with pytest.raises(usage.UsageError, match=message):
        tap.Options().parseOptions(["--direct", "--spool", "/tmp/x", *argv])  # type: ignore[no-untyped-call]


def test_help_says_where_mail_goes_without_direct() -> None:
    """``--help`` says that without --direct mail goes to the relay, and names its default."""
    from txsmtpclient._tapconfig import DEFAULTS

    text = " ".join(str(tap.Options()).split())
    assert (
        "instead of through --relay [default: off: through --relay, which is "
        f"{DEFAULTS['relay']} when not given]"
    ) in text
    assert f"tcp:mail.example.com:587 [default: {DEFAULTS['relay']}]" in text


def test_direct_defaults() -> None:
    """--direct alone: system resolvers, no DANE, MTA-STS on, port 25, 20 per destination."""
    options = tap.Options()
    options.parseOptions(["--direct", "--spool", "/tmp/x"])  # type: ignore[no-untyped-call]
    s = options.settings
    assert s["direct"] is True and s["dns_server"] is None and s["dane_resolver"] is None
    assert s["mta_sts"] is True and s["mx_port"] == 25
    assert s["destination_concurrency"] == 20
    assert s["destination_backoff"] == Backoff(60.0, 1800.0, 2.0)
    plain = tap.Options()
    plain.parseOptions(["--spool", "/tmp/x"])  # type: ignore[no-untyped-call]
    assert plain.settings["direct"] is False


# -- the gate and the mapping, without I/O ------------------------------------------------


def _result(recipient: str = "r@one.test", **kwargs: Any) -> DirectResult:
    fields: dict[str, Any] = {"delivered": False, "final": False, **kwargs}
    return DirectResult(recipient, **fields)


def test_gate_backs_off_exponentially_and_resets_on_success() -> None:
    """421s back a destination off 10, 20, 40 (capped) seconds; a delivery resets it."""
    clock = Clock()
    gate = Destinations(clock, concurrency=3, backoff=Backoff(10, 30))
    busy = {"r": _result(reply=Reply(421, b"4.7.0 slow down"))}
    rests = []
    for _ in range(3):
        gate.enter("one.test")
        gate.leave("one.test", busy)
        opens = gate.open_at("one.test")
        assert opens is not None
        rests.append(opens - clock.seconds())
        deferred = gate.enter("one.test")
        failure = []
        deferred.addErrback(failure.append)
        assert failure and failure[0].check(SMTPDestinationDeferred)
        clock.advance(opens - clock.seconds())
    assert rests == [10, 20, 30]
    # Open again, but probing: one session at a time until a delivery.
    gate.enter("one.test")
    second = gate.enter("one.test")
    assert not second.called and gate.waiting("one.test") == 1
    gate.leave("one.test", {"r": _result(delivered=True, final=True)})
    assert second.called and gate.open_at("one.test") is None
    third = gate.enter("one.test")
    assert third.called and gate.active("one.test") == 2
    # A 5xx about a mailbox is an answer from a working destination: it resets too.
    gate.leave("one.test", busy)
    gate.leave("one.test", {})
    clock.advance(10)
    gate.enter("one.test")
    assert not gate.enter("one.test").called
    gate.leave("one.test", {"r": _result(final=True, reply=Reply(550, b"5.1.1 no such user"))})
    assert gate.active("one.test") == 1
    gate.enter("one.test")
    assert gate.active("one.test") == 2


def test_gate_throttles_on_4_7_and_lost_connections_only() -> None:
    """4.7.x and failed connections back off; a 450 4.2.0 or a DNS failure does not."""
    cases = [
        (_result(reply=Reply(450, b"4.7.28 rate limited")), True),
        (_result(error=SMTPServerDisconnected("could not connect")), True),
        (_result(error=SMTPConnectError(421, b"4.3.2 busy")), True),
        (_result(reply=Reply(450, b"4.2.0 mailbox busy")), False),
        (_result(error=SMTPRoutingError("SERVFAIL", temporary=True)), False),
        (_result(error=SMTPAmbiguousDelivery("lost after the dot")), False),
    ]
    for result, throttled in cases:
        gate = Destinations(Clock())
        gate.enter("d.test")
        gate.leave("d.test", {"r": result})
        assert (gate.open_at("d.test") is not None) is throttled, result


def test_gate_fails_waiters_when_the_destination_backs_off() -> None:
    """Deliveries queued behind a session that meets a 421 are deferred, not sent."""
    gate = Destinations(Clock(), concurrency=1)
    gate.enter("d.test")
    waiting = gate.enter("d.test")
    errors: list[Any] = []
    waiting.addErrback(errors.append)
    gate.leave("d.test", {"r": _result(reply=Reply(421, b"4.3.2 closing"))})
    assert errors and errors[0].check(SMTPDestinationDeferred)
    assert gate.active("d.test") == 0


def test_cancelled_wait_leaves_the_queue() -> None:
    """A cancelled wait (the daemon stopping) leaves the destination's queue."""
    gate = Destinations(Clock(), concurrency=1)
    gate.enter("d.test")
    waiting = gate.enter("d.test")
    waiting.addErrback(lambda f: None)
    waiting.cancel()
    assert gate.waiting("d.test") == 0
    gate.leave("d.test", {})
    assert gate.active("d.test") == 0


def test_refusal_for_maps_each_outcome_onto_the_spool() -> None:
    """Final outcomes get 5xx records, temporary ones 4xx, ambiguity a 4xx that says so."""
    null_mx = SMTPRoutingError("556 5.1.10 null.test publishes a null MX", temporary=False)
    assert refusal_for(_result(final=True, error=null_mx)) == Reply(
        556, b"5.1.10 null.test publishes a null MX"
    )
    servfail = SMTPRoutingError("DNS lookup failed", temporary=True)
    assert refusal_for(_result(error=servfail)).code == 451
    refused = Reply(550, b"5.1.1 no such user")
    assert refusal_for(_result(final=True, reply=refused)) is refused
    lost = refusal_for(_result(error=SMTPAmbiguousDelivery("lost")))
    assert lost.code == 451 and b"outcome unknown" in lost.message


def test_sender_never_reports_an_ambiguous_delivery_as_sent() -> None:
    """Nothing delivered and the outcome unknown: the whole send fails as ambiguous."""
    sender = DirectSender(Destinations(Clock()), resolver=object())  # type: ignore[arg-type]
    ambiguous = {"a@one.test": _result("a@one.test", error=SMTPAmbiguousDelivery("lost"))}
    from txsmtpclient.direct._route import group_by_domain

    with pytest.raises(SMTPAmbiguousDelivery):
        sender._judge(ambiguous, group_by_domain(["a@one.test"]), {})
    mixed = {
        **ambiguous,
        "b@two.test": _result("b@two.test", delivered=True, final=True),
    }
    refused = sender._judge(mixed, group_by_domain(list(mixed)), {})
    assert list(refused) == ["a@one.test"] and refused["a@one.test"].code == 451


# -- the Deliverer and a deferred destination ----------------------------------------------


def _deliverer(tmp_path: Path, lifetime: float) -> tuple[Any, Spool, Clock, Any]:
    from test_delivery import ScriptedSender, inline

    from txsmtpclient.spool.delivery import Deliverer
    from txsmtpclient.spool.schedule import RetryPolicy

    clock = Clock()
    clock.advance(1_800_000_000.0)
    spool = Spool(tmp_path / "spool", clock=clock.seconds, fsync=False)
    sender = ScriptedSender(SMTPDestinationDeferred("one.test", clock.seconds() + 300, "421"))
    policy = RetryPolicy(initial=60.0, maximum=600.0, lifetime=lifetime)
    deliverer = Deliverer(
        spool, sender, relay="direct", clock=clock, blocking=inline, policy=policy
    )
    return deliverer, spool, clock, sender


def test_deferred_destination_postpones_without_an_attempt(tmp_path: Path) -> None:
    """Every destination backed off: queued again for when it opens, no attempt counted."""
    from helpers import success_result_of

    from txsmtpclient.spool.delivery import DeliveryAction

    deliverer, spool, clock, _ = _deliverer(tmp_path, lifetime=3600.0)
    entry_id = spool.enqueue(_message(1), SENDER, ["a@one.test"])
    claimed = spool.claim(entry_id)
    assert claimed is not None
    report = success_result_of(deliverer.deliver(claimed))
    assert report.action is DeliveryAction.POSTPONED and report.attempt is None
    entry = spool.get(entry_id)
    assert entry.state is State.QUEUED and entry.attempts == ()
    assert entry.due == clock.seconds() + 300


def test_deferred_destination_past_the_lifetime_expires(tmp_path: Path) -> None:
    """Past the maximum queue lifetime a deferral is an attempt, and the message expires."""
    from helpers import success_result_of

    from txsmtpclient.spool.delivery import DeliveryAction

    deliverer, spool, clock, _ = _deliverer(tmp_path, lifetime=60.0)
    entry_id = spool.enqueue(_message(1), SENDER, ["a@one.test"])
    clock.advance(120)
    claimed = spool.claim(entry_id)
    assert claimed is not None
    report = success_result_of(deliverer.deliver(claimed))
    assert report.action is DeliveryAction.EXPIRED
    entry = spool.get(entry_id)
    assert entry.state is State.FAILED and len(entry.attempts) == 1
    assert "backed off" in entry.attempts[0].text


def test_tls_reports_are_logged_as_structured_events_and_counted() -> None:
    """Each domain's TLSRPT-shaped records become one log event each, and reach the hook."""
    from twisted.logger import capturedLogs

    from txsmtpclient.direct import TLSReportEntry
    from txsmtpclient.direct._route import group_by_domain

    seen: list[TLSReportEntry] = []
    sender = DirectSender(
        Destinations(Clock()),
        resolver=object(),  # type: ignore[arg-type]
        on_tls_report=seen.append,
    )
    entry = TLSReportEntry("sts", "one.test", "validation-failure", "mx.one.test", "no match")
    results = {
        r: _result(r, delivered=True, final=True, tls_report=(entry,))
        for r in ("a@one.test", "b@one.test")
    }
    with capturedLogs() as events:
        refused = sender._judge(results, group_by_domain(list(results)), {})
    assert refused == {}
    reports = [e["tls_report"] for e in events if "tls_report" in e]
    assert reports == [entry.as_json()]
    assert seen == [entry]


# -- stopping mid-send ----------------------------------------------------------------------


async def _stop(world: World, grace: float) -> Destinations:
    """
    Stop the daemon: not before its grace period is over, and soon after it.

    :returns: its per-destination gate, to look at afterwards.
    """
    gate = world.destinations
    stopping = world.service.stopService()
    world.service = None
    world.clock.advance(grace - 1)
    assert not stopping.called
    world.clock.advance(1)
    await stopping.addTimeout(15, _reactor())
    return gate


@pytest.mark.parametrize("stage", ["EHLO", "MAIL", DATA_END])
@pytest_twisted.ensureDeferred
async def test_stop_mid_send_ends_within_the_grace_and_keeps_the_message(
    world: World, stage: str
) -> None:
    """
    Stopped while an MX that greeted stalls (at EHLO, MAIL or the final
    dot): the stop ends once the grace is over, and the message is queued
    again untouched: no attempt recorded, nothing reported delivered.
    """
    stall = Script()
    stall.on(stage, delay=3600)  # on world.delays, which the test never moves
    one = world.mx("127.0.0.2", stall)
    await world.start("--grace", "5s")
    entry_id = world.enqueue(_message(1), ["a@one.test"])
    await _until(
        lambda: len(one.sessions) == 1 and bool(world.delays.getDelayedCalls()),
        f"the MX stalling at {stage}",
    )
    gate = await _stop(world, 5)
    entry = world.entry(entry_id)
    assert entry.state is State.QUEUED and entry.attempts == ()
    assert [r.state for r in entry.recipients] == [RecipientState.PENDING]
    assert one.messages == [] and all(s.closed for s in one.sessions)
    assert gate.active("one.test") == 0


@pytest_twisted.ensureDeferred
async def test_stop_keeps_what_another_domain_already_took(world: World) -> None:
    """
    Stopped while one.test's MX stalls and two.test's has taken the message:
    b@two.test is recorded delivered (not sent again after a restart),
    a@one.test stays pending.
    """
    stall = Script()
    stall.on("MAIL", delay=3600)
    one = world.mx("127.0.0.2", stall)
    two = world.mx("127.0.0.3")
    await world.start("--grace", "5s")
    entry_id = world.enqueue(_message(1), ["a@one.test", "b@two.test"])
    await _until(
        lambda: (
            bool(world.delays.getDelayedCalls())
            and len(two.messages) == 1
            and world.destinations.active("two.test") == 0
        ),
        "two.test delivered, one.test stalling",
    )
    await _stop(world, 5)
    entry = world.entry(entry_id)
    assert {r.address: r.state for r in entry.recipients} == {
        "a@one.test": RecipientState.PENDING,
        "b@two.test": RecipientState.DELIVERED,
    }
    [attempt] = entry.attempts
    assert attempt.delivered == ("b@two.test",)
    assert "cancelled" in attempt.refused["a@one.test"].text
    assert one.messages == [] and [m.rcpt_tos for m in two.messages] == [("b@two.test",)]


@pytest_twisted.ensureDeferred
async def test_stop_cancels_sessions_and_queued_waits_back_to_the_queue(world: World) -> None:
    """
    Stopping past the grace period: the message in a session and those waiting
    for their destination's slot all go back to the queue untried; the gate is left clean.
    """
    slow = Script()
    slow.on("RCPT", delay=3600)
    one = world.mx("127.0.0.2", slow)
    await world.start("--destination-concurrency", "1", "--grace", "5s")
    ids = [world.enqueue(_message(n), [f"r{n}@one.test"]) for n in range(3)]
    await _until(
        lambda: (
            bool(world.delays.getDelayedCalls()) and world.destinations.waiting("one.test") == 2
        ),
        "one session held, two waiting",
    )
    gate = await _stop(world, 5)
    for entry_id in ids:
        entry = world.entry(entry_id)
        assert entry.state is State.QUEUED and entry.attempts == ()
    assert gate.active("one.test") == 0
    assert gate.waiting("one.test") == 0
    assert one.messages == [] and len(one.sessions) == 1


@pytest_twisted.ensureDeferred
async def test_stop_during_a_dane_lookup_starts_nothing_more(world: World) -> None:
    """
    Stopped while the DANE resolver has not answered mx1's TLSA query: the
    cancelled lookup is not taken for a failed one, so mx2 is not tried
    after the stop; the message stays queued untried.
    """
    world.mx("127.0.0.2")
    second = world.mx("127.0.0.3")
    assert world.dns is not None
    authority = world.dns.authority
    authority.zone.update(
        {
            "dane.test": [mx(10, "mx1.dane.test"), mx(20, "mx2.dane.test")],
            "mx1.dane.test": [a("127.0.0.2")],
            "mx2.dane.test": [a("127.0.0.3")],
        }
    )
    world.dns.secure.add("dane.test")
    tlsa = f"_{world.port}._tcp.mx1.dane.test"
    authority.stall.add(tlsa)
    host, port = world.dns.address
    await world.start("--grace", "5s", "--dane-resolver", f"{host}:{port}", "--no-mta-sts")
    entry_id = world.enqueue(_message(1), ["a@dane.test"])
    await _until(lambda: (tlsa, 52) in world.dns.queries, "the TLSA query")
    gate = await _stop(world, 5)
    entry = world.entry(entry_id)
    assert entry.state is State.QUEUED and entry.attempts == ()
    assert gate.active("dane.test") == 0
    assert second.sessions == []
    assert (f"_{world.port}._tcp.mx2.dane.test", 52) not in world.dns.queries
