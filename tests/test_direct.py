"""
Direct delivery (issue 11, MX routing): a ``twisted.names`` DNS server on
loopback serves the zones, and each MX host is a scripted SMTP server on its
own loopback address (127.0.0.2, 127.0.0.3 ...), all on one port.  What
arrives is checked byte for byte; nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import pytest_twisted
from directworld import DirectWorld
from dnsserver import Zone
from helpers import assert_no_result, failure_result_of, success_result_of
from servers import POSTFIX_HOSTNAME, TEST_DOMAIN, PostfixInstance
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.names import dns

from txsmtpclient.direct import DirectResult, send_direct
from txsmtpclient.direct._results import Stop, gather
from txsmtpclient.direct._route import group_by_domain, lookup_name, order_mx
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPArgumentError,
    SMTPNotSupportedError,
    SMTPRoutingError,
)
from txsmtpclient.reply import Reply
from txsmtpclient.testing import CONNECT, DATA_END, Script

MSG = b"Subject: direct\r\n\r\n.dot\r\nbody\r\n"


# -- routing, pure -------------------------------------------------------------------------


def test_order_mx_by_preference() -> None:
    """Lower preference first; duplicates dropped; trailing dots ignored."""
    records = [(20, "b.example."), (10, "a.example"), (30, "c.example"), (20, "b.example")]
    assert order_mx(records, "example", random.Random(1)) == [
        "a.example",
        "b.example",
        "c.example",
    ]


def test_order_mx_shuffles_equal_preferences() -> None:
    """Equal preferences come in both orders across random draws (RFC 5321 section 5.1)."""
    records = [(10, "one.example"), (10, "two.example")]
    orders = {tuple(order_mx(records, "example", random.Random(seed))) for seed in range(40)}
    assert orders == {("one.example", "two.example"), ("two.example", "one.example")}


def test_null_mx_is_permanent() -> None:
    """A null MX (RFC 7505) refuses the domain permanently, even beside other records."""
    for records in ([(0, ".")], [(0, ""), (10, "mx.example")]):
        with pytest.raises(SMTPRoutingError, match="null MX") as info:
            order_mx(records, "example", random.Random(0))
        assert not info.value.temporary


def test_order_mx_caps_hostile_answers() -> None:
    """Thousands of MX records are cut to a few hosts; invalid names are skipped."""
    records = [(i, f"mx{i}.example") for i in range(5000)] + [(0, "x" * 300)]
    hosts = order_mx(records, "example", random.Random(0))
    assert hosts == [f"mx{i}.example" for i in range(10)]


def test_group_by_domain_keeps_order_and_literals() -> None:
    """Recipients group by lower-cased domain; address literals need no lookup; IDNA applied."""
    groups = group_by_domain(
        ["a@X.example", "b@y.example", "c@x.example", "d@[127.0.0.2]", "e@bü.example"]
    )
    assert [(g.domain, g.recipients) for g in groups] == [
        ("x.example", ("a@X.example", "c@x.example")),
        ("y.example", ("b@y.example",)),
        ("[127.0.0.2]", ("d@[127.0.0.2]",)),
        ("bü.example", ("e@bü.example",)),
    ]
    assert groups[2].literal == "127.0.0.2" and groups[2].lookup is None
    assert groups[3].lookup == "xn--b-eha.example"


@pytest.mark.parametrize("address", ["nodomain", "a@", "a@[999.1.1.1]", "a@bad..example"])
def test_bad_recipient_domains_fail_before_anything(address: str) -> None:
    """An address that cannot be routed is a permanent SMTPRoutingError at once."""
    with pytest.raises(SMTPRoutingError) as info:
        send_direct("s@example.test", [address], MSG, resolver=object())  # type: ignore[arg-type]
    assert not info.value.temporary


@pytest.mark.parametrize(
    ("sender", "options"), [("bad\r\nRSET@example.test", ()), ("s@example.test", ("BAD OPTION",))]
)
def test_bad_envelope_fails_before_any_lookup(sender: str, options: tuple[str, ...]) -> None:
    """A CR/LF in the sender or a malformed option is SMTPArgumentError at once, not per host."""
    with pytest.raises(SMTPArgumentError):
        send_direct(sender, ["r@example.test"], MSG, options, resolver=object())  # type: ignore[arg-type]


def test_lookup_name_refuses_overlong_labels() -> None:
    """A label over 63 characters cannot be looked up."""
    with pytest.raises(SMTPRoutingError):
        lookup_name("a" * 64 + ".example")


# -- end to end: DNS server + MX hosts on loopback -------------------------------------


@pytest_twisted.async_yield_fixture()
async def world() -> AsyncIterator[DirectWorld]:
    from twisted.internet import reactor

    w = DirectWorld(reactor, MSG, {"tls": "never", "timeout": 5})
    yield w
    await w.close()


def mx(preference: int, name: str) -> dns.Record_MX:
    return dns.Record_MX(preference, name)


def a(address: str) -> dns.Record_A:
    return dns.Record_A(address)


def two_mx() -> Zone:
    """dest.test with mx1 (preference 10) on 127.0.0.2 and mx2 (20) on 127.0.0.3."""
    return {
        "dest.test": [mx(20, "mx2.dest.test"), mx(10, "mx1.dest.test")],
        "mx1.dest.test": [a("127.0.0.2")],
        "mx2.dest.test": [a("127.0.0.3")],
    }


def _only(results: dict[str, DirectResult]) -> DirectResult:
    [result] = results.values()
    return result


@pytest_twisted.ensureDeferred
async def test_delivers_to_the_preferred_mx(world: DirectWorld) -> None:
    """The lowest-preference MX gets the message, byte-exact; the other gets nothing."""
    first = world.mx("127.0.0.2")
    second = world.mx("127.0.0.3")
    world.zone(two_mx())
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.delivered and result.final and result.mx == "mx1.dest.test"
    assert result.reply is not None and result.reply.code == 250
    [message] = first.messages
    assert message.content == MSG and message.rcpt_tos == ("rcpt@dest.test",)
    assert second.messages == []


@pytest_twisted.ensureDeferred
async def test_falls_back_after_a_refused_connection(world: DirectWorld) -> None:
    """Nothing listens on the first MX's address: the second MX takes the message."""
    await world.free_port_on("127.0.0.3")
    second = world.mx("127.0.0.3")
    world.zone(two_mx())
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.delivered and result.mx == "mx2.dest.test"
    assert len(second.messages) == 1


@pytest.mark.parametrize(
    "command,reply",
    [(CONNECT, "421 4.3.2 too busy"), ("EHLO", "451 4.3.0 later")],
    ids=["greeting", "ehlo"],
)
@pytest_twisted.ensureDeferred
async def test_falls_back_after_a_4xx(world: DirectWorld, command: str, reply: str) -> None:
    """A 4xx greeting, or a 4xx to EHLO and HELO, moves on to the next MX."""
    busy = Script()
    busy.on(command, reply)
    busy.on("HELO", reply)
    first = world.mx("127.0.0.2", busy)
    second = world.mx("127.0.0.3")
    world.zone(two_mx())
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.delivered and result.mx == "mx2.dest.test"
    assert first.messages == [] and len(second.messages) == 1


@pytest_twisted.ensureDeferred
async def test_stops_on_a_5xx(world: DirectWorld) -> None:
    """A 5xx to RCPT is final: the next MX is not tried."""
    refusing = Script()
    refusing.on("RCPT", "550 5.1.1 no such user")
    world.mx("127.0.0.2", refusing)
    second = world.mx("127.0.0.3")
    world.zone(two_mx())
    result = _only(await world.send(["rcpt@dest.test"]))
    assert not result.delivered and result.final and result.mx == "mx1.dest.test"
    assert result.reply is not None and result.reply.code == 550
    assert second.sessions == []


@pytest_twisted.ensureDeferred
async def test_4xx_to_rcpt_is_temporary_without_trying_elsewhere(world: DirectWorld) -> None:
    """A 4xx to the transaction is the destination's answer: temporary, no other MX."""
    greylisting = Script()
    greylisting.on("RCPT", "450 4.2.0 greylisted")
    world.mx("127.0.0.2", greylisting)
    second = world.mx("127.0.0.3")
    world.zone(two_mx())
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.temporary and result.reply is not None and result.reply.code == 450
    assert second.sessions == []


@pytest_twisted.ensureDeferred
async def test_implicit_mx(world: DirectWorld) -> None:
    """A domain with no MX but an A record is its own mail host."""
    server = world.mx("127.0.0.2")
    world.zone({"dest.test": [a("127.0.0.2")]})
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.delivered and result.mx == "dest.test"
    assert len(server.messages) == 1


@pytest_twisted.ensureDeferred
async def test_null_mx_sends_nothing(world: DirectWorld) -> None:
    """A null MX fails its recipients permanently and no connection is made."""
    server = world.mx("127.0.0.2")
    world.zone({"dest.test": [mx(0, ""), a("127.0.0.2")]})
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.final and not result.delivered
    assert isinstance(result.error, SMTPRoutingError) and "null MX" in str(result.error)
    assert server.sessions == []


@pytest_twisted.ensureDeferred
async def test_domain_that_does_not_exist(world: DirectWorld) -> None:
    """NXDOMAIN is permanent."""
    world.zone({"other.test": [a("127.0.0.2")]})
    await world.free_port_on("127.0.0.2")
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.final and not result.delivered and "does not exist" in str(result.error)


@pytest_twisted.ensureDeferred
async def test_domain_with_no_records_at_all(world: DirectWorld) -> None:
    """A domain that exists with neither MX nor address fails permanently."""
    world.zone({"dest.test": []})
    await world.free_port_on("127.0.0.2")
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.final and not result.delivered


@pytest_twisted.ensureDeferred
async def test_servfail_is_temporary(world: DirectWorld) -> None:
    """A SERVFAIL (or timeout) fails the recipients temporarily."""
    world.zone({"dest.test": [a("127.0.0.2")]}, servfail=("dest.test",))
    await world.free_port_on("127.0.0.2")
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.temporary and isinstance(result.error, SMTPRoutingError)


@pytest_twisted.ensureDeferred
async def test_recipients_are_grouped_by_domain(world: DirectWorld) -> None:
    """Two domains, two hosts, one transaction each with only their own recipients."""
    one = world.mx("127.0.0.2")
    two = world.mx("127.0.0.3")
    world.zone(
        {
            "one.test": [mx(10, "mx.one.test")],
            "two.test": [mx(10, "mx.two.test")],
            "mx.one.test": [a("127.0.0.2")],
            "mx.two.test": [a("127.0.0.3")],
        }
    )
    results = await world.send(["a@one.test", "b@two.test", "c@one.test"])
    assert all(r.delivered for r in results.values())
    assert [m.rcpt_tos for m in one.messages] == [("a@one.test", "c@one.test")]
    assert [m.rcpt_tos for m in two.messages] == [("b@two.test",)]


@pytest_twisted.ensureDeferred
async def test_lost_after_the_final_dot_is_ambiguous_and_not_resent(world: DirectWorld) -> None:
    """A hang-up after the final dot is not retried at the next MX: it may have arrived."""
    dropping = Script()
    dropping.on(DATA_END, disconnect=True)
    world.mx("127.0.0.2", dropping)
    second = world.mx("127.0.0.3")
    world.zone(two_mx())
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.temporary and isinstance(result.error, SMTPAmbiguousDelivery)
    assert second.sessions == []


@pytest_twisted.ensureDeferred
async def test_postfix_as_the_mx(postfix: PostfixInstance) -> None:
    """Postfix as the MX, found by MX lookup, over verified STARTTLS: it arrives exactly."""
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    world = DirectWorld(reactor)
    world.zone({TEST_DOMAIN: [mx(10, POSTFIX_HOSTNAME)], POSTFIX_HOSTNAME: [a("127.0.0.1")]})
    world.port = postfix.port
    trust = Certificate.loadPEM(postfix.tls.cert_pem)
    # A header block Postfix's cleanup has nothing to add to.
    sent = (
        f"From: <sender@origin.test>\r\nTo: <direct@{TEST_DOMAIN}>\r\nSubject: direct\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <txsmtpclient-direct@{TEST_DOMAIN}>\r\n\r\n.dot\r\nbody\r\n"
    ).encode()
    try:
        results = await world.send(
            [f"direct@{TEST_DOMAIN}"],
            sent,
            tls="required",
            tls_options_for=lambda host: optionsForClientTLS(host, trustRoot=trust),
            timeout=30,
        )
    finally:
        await world.close()
    [result] = results.values()
    assert result.delivered and result.mx == POSTFIX_HOSTNAME
    assert result.reply is not None and b"queued as" in result.reply.message
    [message] = await postfix.when_messages(1)
    assert message.original == sent.replace(b"\r\n", b"\n")
    assert message.delivered_to == f"direct@{TEST_DOMAIN}"


@pytest_twisted.ensureDeferred
async def test_a_failed_address_lookup_is_temporary(world: DirectWorld) -> None:
    """An MX whose A lookup fails (AAAA empty) is no proof it has no address: temporary."""
    world.zone(
        {"dest.test": [mx(10, "mx1.dest.test")], "mx1.dest.test": []},
        servfail=("mx1.dest.test/1",),
    )
    await world.free_port_on("127.0.0.2")
    result = _only(await world.send(["rcpt@dest.test"]))
    assert result.temporary and isinstance(result.error, SMTPRoutingError)


def _postfix_world(postfix: PostfixInstance) -> DirectWorld:
    """Postfix as the one MX of TEST_DOMAIN, over STARTTLS verified against its certificate."""
    from twisted.internet import reactor
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    trust = Certificate.loadPEM(postfix.tls.cert_pem)
    world = DirectWorld(
        reactor,
        defaults={
            "tls": "required",
            "tls_options_for": lambda host: optionsForClientTLS(host, trustRoot=trust),
            "timeout": 30,
        },
    )
    world.zone({TEST_DOMAIN: [mx(10, POSTFIX_HOSTNAME)], POSTFIX_HOSTNAME: [a("127.0.0.1")]})
    world.port = postfix.port
    return world


@pytest_twisted.ensureDeferred
async def test_postfix_as_the_mx_takes_the_dsn_requests(postfix: PostfixInstance) -> None:
    """
    RET, ENVID and NOTIFY reach Postfix as the MX: the message arrives
    exactly, and Postfix's success notice to the sender carries the ENVID
    and returns only the headers (RET=HDRS).
    """
    sender = f"dsn-sender@{TEST_DOMAIN}"
    sent = (
        f"From: <{sender}>\r\nTo: <dsn@{TEST_DOMAIN}>\r\nSubject: direct dsn\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <txsmtpclient-direct-dsn@{TEST_DOMAIN}>\r\n\r\n"
        "body-marker-not-returned\r\n"
    ).encode()
    world = _postfix_world(postfix)
    try:
        results = await world.send(
            [f"dsn@{TEST_DOMAIN}"],
            sent,
            sender=sender,
            dsn_ret="HDRS",
            dsn_envid="direct-envid-7",
            dsn_notify=["SUCCESS"],
        )
    finally:
        await world.close()
    [result] = results.values()
    assert result.delivered and result.mx == POSTFIX_HOSTNAME
    messages = await postfix.when_messages(2)
    by_rcpt = {m.delivered_to: m for m in messages}
    assert by_rcpt[f"dsn@{TEST_DOMAIN}"].original == sent.replace(b"\r\n", b"\n")
    notice = by_rcpt[sender].original
    assert b"Original-Envelope-Id: direct-envid-7" in notice
    assert b"Action: delivered" in notice and f"dsn@{TEST_DOMAIN}".encode() in notice
    assert b"text/rfc822-headers" in notice and b"Subject: direct dsn" in notice
    assert b"body-marker-not-returned" not in notice


@pytest_twisted.ensureDeferred
async def test_requiretls_to_postfix_without_it_sends_nothing(postfix: PostfixInstance) -> None:
    """
    REQUIRETLS to an MX that does not advertise it (Postfix 3.7): refused for
    good before MAIL, nothing arrives; a plain message after it does.
    """
    world = _postfix_world(postfix)
    # A header block Postfix's cleanup has nothing to add to.
    plain = (
        f"From: <sender@origin.test>\r\nTo: <plain@{TEST_DOMAIN}>\r\n"
        "Subject: after requiretls\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"Message-ID: <txsmtpclient-direct-plain@{TEST_DOMAIN}>\r\n\r\nbody\r\n"
    ).encode()
    try:
        refused = await world.send(
            [f"requiretls@{TEST_DOMAIN}"],
            b"Subject: r\r\n\r\nx\r\n",
            mail_options=["REQUIRETLS"],
        )
        accepted = await world.send([f"plain@{TEST_DOMAIN}"], plain)
    finally:
        await world.close()
    [result] = refused.values()
    assert not result.delivered and result.final
    assert isinstance(result.error, SMTPNotSupportedError)
    assert "REQUIRETLS" in str(result.error)
    [ok] = accepted.values()
    assert ok.delivered
    [message] = await postfix.when_messages(1)
    assert message.delivered_to == f"plain@{TEST_DOMAIN}" and message.original == plain.replace(
        b"\r\n", b"\n"
    )


@pytest_twisted.ensureDeferred
async def test_requiretls_goes_over_verified_tls_to_an_mx_that_offers_it(
    world: DirectWorld,
) -> None:
    """REQUIRETLS to an MX advertising it: MAIL carries it, over verified TLS; byte-exact."""
    script = Script()
    script.advertise("REQUIRETLS")
    first = world.mx("127.0.0.2", script, name="mx1.dest.test", tls=True)
    world.zone(two_mx())
    result = _only(
        await world.send(
            ["rcpt@dest.test"],
            mail_options=["REQUIRETLS"],
            tls="required",
            tls_options_for=world.tls_options_for,
        )
    )
    assert result.delivered and result.mx == "mx1.dest.test"
    [session] = first.sessions
    assert session.tls and session.commands == [
        b"EHLO client.origin.test",
        b"STARTTLS",
        b"EHLO client.origin.test",
        b"MAIL FROM:<sender@origin.test> SIZE=31 REQUIRETLS",
        b"RCPT TO:<rcpt@dest.test>",
        b"DATA",
        b"QUIT",
    ]
    assert [m.content for m in first.messages] == [MSG]


# -- gathering domains' results, and cancelling, without I/O --------------------------------


def _slow_part(closing: Deferred[None]) -> Deferred[dict[str, DirectResult]]:
    """A domain's delivery that, cancelled, ends only once ``closing`` fires."""

    async def part() -> dict[str, DirectResult]:
        try:
            await Deferred()
        finally:
            await closing
        raise AssertionError("not reached")

    return Deferred.fromCoroutine(part())


def test_cancelled_gather_waits_for_every_session_to_close() -> None:
    """Cancelled, the gather fires only once each domain's delivery has ended."""
    closing: Deferred[None] = Deferred()
    stop = Stop()
    destinations = group_by_domain(["a@one.test"])
    gathered = Deferred.fromCoroutine(gather(stop, destinations, [_slow_part(closing)]))
    gathered.cancel()
    assert stop.cancelled
    assert_no_result(gathered)
    closing.callback(None)
    failure_result_of(gathered, CancelledError)


def test_cancelled_gather_keeps_what_is_decided() -> None:
    """A domain already delivered keeps its result; the cancelled one is temporary."""
    destinations = group_by_domain(["a@one.test", "b@two.test", "c@two.test"])
    delivered = DirectResult("a@one.test", True, True, Reply(250, b"2.0.0 ok"), "mx.one.test")
    refused = DirectResult("b@two.test", False, True, Reply(550, b"5.1.1 no"), "mx.two.test")
    waiting = DirectResult("c@two.test", False, False, Reply(450, b"4.2.0 busy"), "mx.two.test")
    two: Deferred[dict[str, DirectResult]] = Deferred()
    gathered = Deferred.fromCoroutine(
        gather(Stop(), destinations, [succeed({"a@one.test": delivered}), two])
    )
    gathered.cancel()
    results = success_result_of(gathered)
    assert results["a@one.test"] is delivered
    assert results["b@two.test"].temporary and results["c@two.test"].temporary
    # A domain that ended before the cancel keeps only its final results.
    three: Deferred[dict[str, DirectResult]] = Deferred()
    gathered = Deferred.fromCoroutine(
        gather(
            Stop(),
            group_by_domain(["b@two.test", "c@two.test", "d@three.test"]),
            [
                succeed({"b@two.test": refused, "c@two.test": waiting}),
                three,
            ],
        )
    )
    gathered.cancel()
    results = success_result_of(gathered)
    assert results["b@two.test"] is refused
    assert results["c@two.test"].temporary and "cancelled" in str(results["c@two.test"].error)
