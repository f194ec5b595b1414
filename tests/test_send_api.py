"""
One send API (issue 8, item 3 and defect 5): ``SMTP``, the pool and the
one-shot helpers take the same send arguments, ``envelope=`` carries them
all as one :class:`Envelope`, and one parser reads every spelling of a
relay, so the pool accepts any of them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import pytest
from helpers import GREETING, FakeEndpoint, success_result_of
from twisted.internet.endpoints import TCP6ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

import txsmtpclient
from txsmtpclient import SMTP
from txsmtpclient._endpoints import Relay, parse_relay, resolve_endpoint
from txsmtpclient.errors import SMTPArgumentError
from txsmtpclient.pool import SMTPConnectionPool
from txsmtpclient.transaction import DSN, Envelope

# -- the signatures ----------------------------------------------------------------------------


def _parameters(function: Callable[..., Any], skip: int) -> list[inspect.Parameter]:
    return list(inspect.signature(function).parameters.values())[skip:]


def test_sendmail_signatures_are_identical() -> None:
    """SMTP, the pool and the one-shot helper take the same send arguments, in order."""
    smtp = _parameters(SMTP.sendmail, 1)  # after self
    assert [p.name for p in smtp] == [
        "from_addr",
        "to_addrs",
        "msg",
        "mail_options",
        "rcpt_options",
        "dsn_ret",
        "dsn_envid",
        "dsn_notify",
        "dsn_orcpt",
        "dkim",
        "envelope",
    ]
    assert _parameters(SMTPConnectionPool.sendmail, 1) == smtp
    # The one-shot helper: the host, then exactly these, then how to connect.
    assert _parameters(txsmtpclient.sendmail, 1)[: len(smtp)] == smtp


def test_send_message_signatures_are_identical() -> None:
    """send_message: the message, then sendmail's arguments but the data, everywhere."""
    smtp = _parameters(SMTP.send_message, 1)
    assert [p.name for p in smtp][:3] == ["msg", "from_addr", "to_addrs"]
    assert smtp[3:] == _parameters(SMTP.sendmail, 4)
    assert _parameters(SMTPConnectionPool.send_message, 1) == smtp
    assert _parameters(txsmtpclient.send_message, 1)[: len(smtp)] == smtp


def test_one_shot_helpers_take_the_same_connection_options() -> None:
    """txsmtpclient.sendmail and send_message agree on how to connect too."""
    sendmail = _parameters(txsmtpclient.sendmail, 1 + len(_parameters(SMTP.sendmail, 1)))
    send_message = _parameters(
        txsmtpclient.send_message, 1 + len(_parameters(SMTP.send_message, 1))
    )
    assert sendmail == send_message
    assert "port" in [p.name for p in sendmail] and "pool" in [p.name for p in sendmail]


# -- envelope= ---------------------------------------------------------------------------------

_EHLO = b"250-mx.example\r\n250-DSN\r\n250 8BITMIME\r\n"
_REPLIES = [GREETING, _EHLO, b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"]
_FINAL = b"250 2.0.0 queued as X1\r\n"

#: Every send path, given an endpoint, a clock and the send arguments.
Path = Callable[[FakeEndpoint, MemoryReactorClock, dict[str, Any]], Any]


def _smtp(endpoint: FakeEndpoint, clock: MemoryReactorClock, kw: dict[str, Any]) -> Any:
    smtp = SMTP(local_hostname="client.example", reactor=clock, tls="never")
    smtp.connect(endpoint)
    return (
        smtp.send_message(**kw)
        if "msg" in kw and not isinstance(kw["msg"], bytes)
        else (smtp.sendmail(**kw))
    )


def _pool(endpoint: FakeEndpoint, clock: MemoryReactorClock, kw: dict[str, Any]) -> Any:
    pool = SMTPConnectionPool(
        endpoint,
        make_client=lambda: SMTP(local_hostname="client.example", reactor=clock, tls="never"),
        reactor=clock,
    )
    return pool.send_message(**kw) if not isinstance(kw["msg"], bytes) else pool.sendmail(**kw)


def _one_shot(endpoint: FakeEndpoint, clock: MemoryReactorClock, kw: dict[str, Any]) -> Any:
    options = {"local_hostname": "client.example", "reactor": clock, "tls": "never"}
    if isinstance(kw["msg"], bytes):
        return txsmtpclient.sendmail(endpoint, **kw, **options)
    return txsmtpclient.send_message(endpoint, **kw, **options)


PATHS: dict[str, Path] = {"SMTP": _smtp, "pool": _pool, "one-shot": _one_shot}


def _email() -> EmailMessage:
    email = EmailMessage()
    email["From"], email["To"] = "a@x.example", "b@y.example"
    email.set_content("hi")
    return email


def _send(path: Path, kw: dict[str, Any]) -> bytes:
    """Run one transaction against a scripted server; what the client wrote."""
    clock = MemoryReactorClock()
    endpoint = FakeEndpoint()
    d = path(endpoint, clock, kw)
    proto = endpoint.protocol
    assert proto is not None
    for reply in _REPLIES:
        proto.dataReceived(reply)
    proto.dataReceived(_FINAL)
    written = endpoint.transport.io.getvalue() if endpoint.transport else b""
    if endpoint.transport is not None and b"QUIT" in written:
        proto.dataReceived(b"221 bye\r\n")
        from twisted.internet.error import ConnectionDone

        proto.connectionLost(Failure(ConnectionDone()))
    assert success_result_of(d) == {}
    return written.partition(b"QUIT")[0]


DSN_KEYWORDS = {
    "dsn_ret": "HDRS",
    "dsn_envid": "id-1",
    "dsn_notify": ("FAILURE", "DELAY"),
    "dsn_orcpt": True,
}
ENVELOPE = Envelope(
    "a@x.example",
    ("b@y.example",),
    ("BODY=8BITMIME",),
    dsn=DSN("HDRS", "id-1", ("FAILURE", "DELAY"), orcpt=True),
)


@pytest.mark.parametrize("path", PATHS)
def test_envelope_sends_what_the_keywords_send(path: str) -> None:
    """envelope= writes the same bytes as from_addr, to_addrs, options and dsn_*."""
    keywords = _send(
        PATHS[path],
        {
            "from_addr": "a@x.example",
            "to_addrs": ["b@y.example"],
            "msg": b"hi\r\n",
            "mail_options": ["BODY=8BITMIME"],
            **DSN_KEYWORDS,
        },
    )
    envelope = _send(PATHS[path], {"msg": b"hi\r\n", "envelope": ENVELOPE})
    assert envelope == keywords
    assert b"MAIL FROM:<a@x.example> BODY=8BITMIME RET=HDRS ENVID=id-1\r\n" in envelope
    assert b"RCPT TO:<b@y.example> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@y.example\r\n" in envelope


@pytest.mark.parametrize("path", PATHS)
def test_send_message_takes_the_envelope_too(path: str) -> None:
    """send_message(msg, envelope=...): the envelope's addresses, the message's data."""
    written = _send(PATHS[path], {"msg": _email(), "envelope": ENVELOPE})
    assert written.startswith(b"EHLO client.example\r\nMAIL FROM:<a@x.example> BODY=8BITMIME RET")
    assert b"\r\n\r\nhi\r\n.\r\n" in written


@pytest.mark.parametrize(
    "extra",
    [
        {"from_addr": "a@x.example"},
        {"to_addrs": ["b@y.example"]},
        {"mail_options": ["SMTPUTF8"]},
        {"dsn_ret": "FULL"},
    ],
)
def test_envelope_alone_or_not_at_all(extra: dict[str, Any]) -> None:
    """envelope= with any argument it replaces is refused at once, on every path."""
    pool = SMTPConnectionPool("127.0.0.1", reactor=MemoryReactorClock())
    for send in (SMTP(reactor=MemoryReactorClock()).sendmail, pool.sendmail):
        with pytest.raises(SMTPArgumentError, match="alone"):
            send(msg=b"hi", envelope=ENVELOPE, **extra)
    with pytest.raises(SMTPArgumentError, match="alone"):
        txsmtpclient.sendmail("127.0.0.1", msg=b"hi", envelope=ENVELOPE, **extra)


def test_no_envelope_and_no_addresses_is_a_type_error() -> None:
    """Neither envelope= nor from_addr and to_addrs: a TypeError, as a missing argument is."""
    with pytest.raises(TypeError, match="envelope="):
        SMTP(reactor=MemoryReactorClock()).sendmail(msg=b"hi")


@pytest.mark.parametrize(
    "make",
    [
        lambda: Envelope("a@x\r\nRSET", ("b@y",)),
        lambda: Envelope("a@x", ("b@y\n",)),
        lambda: Envelope("a@x", ()),
        lambda: Envelope("a@x", ("b@y",), ("A B",)),
        lambda: Envelope("a@x", ("b@y",), rcpt_options=("X\x00",)),
        lambda: DSN(ret="FULL\r\nRSET"),
        lambda: DSN(notify=("NEVER", "DELAY")),
    ],
)
def test_an_envelope_is_checked_however_it_is_made(make: Callable[[], Any]) -> None:
    """Built directly, not through check(): still checked, so nothing unchecked is sent."""
    with pytest.raises(SMTPArgumentError):
        make()


def test_envelope_normalises_what_it_is_given() -> None:
    """A single address, lists and lower-case DSN words become the canonical value."""
    made = Envelope.check("a@x", "b@y", ["SMTPUTF8"], dsn=DSN("full", notify=("delay",)))
    assert made == Envelope("a@x", ("b@y",), ("SMTPUTF8",), (), DSN("FULL", None, ("DELAY",)))


# -- one relay parser ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "relay"),
    [
        ("mail.example.test", None, Relay("mail.example.test")),
        ("mail.example.test:587", None, Relay("mail.example.test", 587)),
        ("mail.example.test", 587, Relay("mail.example.test", 587)),
        ("mail.example.test:25", 587, Relay("mail.example.test", 587)),
        ("tcp:mail.example.test:587", None, Relay("mail.example.test", 587)),
        ("tcp:host=mx.example.test:port=25", None, Relay("mx.example.test", 25)),
        ("[::1]:25", None, Relay("::1", 25)),
        ("::1", None, Relay("::1")),
        ("tcp6:[::1]:25", None, Relay("::1", 25)),
        ("tcp6:\\:\\:1:25", None, Relay("::1", 25)),
        ("unix:/run/smtp.sock", None, Relay("", None, "unix:/run/smtp.sock")),
        ("tcp:a.test:25:timeout=3", None, Relay("a.test", None, "tcp:a.test:25:timeout=3")),
        (
            "tls:mail.example.test:465",
            None,
            Relay("mail.example.test", None, "tls:mail.example.test:465"),
        ),
    ],
)
def test_parse_relay(host: str, port: int | None, relay: Relay) -> None:
    """Every spelling of a relay is read into one value."""
    assert parse_relay(host, port) == relay


def test_tcp6_bracketed_is_the_same_host_everywhere() -> None:
    """ "tcp6:[::1]:25": host ::1 port 25 for the client's endpoint, the daemon and the pool."""
    endpoint, name = resolve_endpoint(MemoryReactorClock(), "tcp6:[::1]:25", None, 25, 7)
    assert isinstance(endpoint, TCP6ClientEndpoint)
    assert (endpoint._host, endpoint._port, name) == ("::1", 25, "::1")
    assert parse_relay("tcp6:[::1]:25").host == "::1"  # what twist txsmtp verifies TLS against
    assert SMTPConnectionPool("::1", 25, reactor=MemoryReactorClock()).serves("tcp6:[::1]:25")


@pytest.mark.parametrize(
    "spelling",
    ["127.0.0.1:8025", ("127.0.0.1", 8025), "tcp:127.0.0.1:8025", "tcp:host=127.0.0.1:port=8025"],
)
def test_pool_accepts_any_spelling_of_its_relay(spelling: Any) -> None:
    """SMTPConnectionPool("127.0.0.1", 8025) serves sendmail("127.0.0.1:8025", pool=pool)."""
    clock = MemoryReactorClock()
    pool = SMTPConnectionPool("127.0.0.1", 8025, reactor=clock)
    host, port = spelling if isinstance(spelling, tuple) else (spelling, None)
    assert pool.serves(host, port)
    d = txsmtpclient.sendmail(host, "a@x", ["b@y"], b"hi\r\n", port=port, pool=pool)
    assert [(h, p) for h, p, *_ in clock.tcpClients] == [("127.0.0.1", 8025)]
    d.cancel()
    d.addErrback(lambda _: None)


@pytest.mark.parametrize("other", ["127.0.0.1", "127.0.0.1:8026", "127.0.0.2:8025", "unix:/x"])
def test_pool_refuses_another_relay(other: str) -> None:
    """Another host or port than the pool's: SMTPArgumentError at once."""
    clock = MemoryReactorClock()
    pool = SMTPConnectionPool("127.0.0.1", 8025, reactor=clock)
    assert not pool.serves(other)
    with pytest.raises(SMTPArgumentError, match="not the pool's relay"):
        txsmtpclient.sendmail(other, "a@x", ["b@y"], b"hi\r\n", pool=pool)
    assert clock.tcpClients == []


def test_pool_default_port_is_25() -> None:
    """A relay named without a port is port 25, either way round."""
    pool = SMTPConnectionPool("mx.example.test", reactor=MemoryReactorClock())
    assert pool.serves("mx.example.test:25") and pool.serves("mx.example.test")
    assert not pool.serves("mx.example.test:587")
