"""
REQUIRETLS (RFC 8689), FUTURERELEASE (RFC 4865), DELIVERBY (RFC 2852) and
MT-PRIORITY (RFC 6710): on the envelope, checked when made, sent only when
the server advertises them and otherwise refused before MAIL; then on the
wire through the testing kit's servers.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import pytest_twisted
from helpers import failure_result_of, success_result_of

from txsmtpclient import SMTP
from txsmtpclient.errors import SMTPArgumentError, SMTPNotSupportedError
from txsmtpclient.extensions import Extensions
from txsmtpclient.mailparams import DeliverBy, parse_travel_options
from txsmtpclient.testing import LoopbackServer, MemoryServer, Script
from txsmtpclient.transaction import Envelope, plan_transaction

MSG = b"Subject: travel\r\n\r\nbody\r\n"
UNTIL = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _features(*lines: str) -> Extensions:
    body = "\n".join(["mx.example", *lines]).encode()
    return Extensions.from_ehlo(body)


def _mail(envelope: Envelope, *extensions: str, tls: bool = False) -> bytes:
    return plan_transaction(envelope, _features(*extensions), None, False, tls).mail


def test_raw_options_become_fields() -> None:
    """The spool's raw MAIL options are read into the typed fields; others stay options."""
    envelope = Envelope(
        "a@x",
        ("b@x",),
        ("REQUIRETLS", "HOLDFOR=60", "BY=3600;RT", "MT-PRIORITY=-3", "X-OTHER=1"),
    )
    assert envelope.mail_options == ("X-OTHER=1",)
    assert envelope.require_tls and envelope.hold_for == 60 and envelope.priority == -3
    assert envelope.deliver_by == DeliverBy(3600, "R", True)
    rest, travel = parse_travel_options(["HOLDUNTIL=2030-01-02T03:04:05Z"])
    assert rest == () and travel.hold_until == UNTIL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"priority": 10},
        {"hold_for": -1},
        {"hold_for": 5, "hold_until": UNTIL},
        {"hold_until": datetime(2030, 1, 1)},
        {"mail_options": ("HOLDUNTIL=tomorrow",)},
        {"mail_options": ("HOLDUNTIL=2024-13-01T00:00:00Z",)},
        {"mail_options": ("BY=soon",)},
        {"mail_options": ("MT-PRIORITY=high",)},
        {"priority": 1, "mail_options": ("MT-PRIORITY=2",)},
    ],
    ids=[
        "priority",
        "hold-negative",
        "hold-both",
        "naive",
        "until",
        "until-month-13",
        "by",
        "mt",
        "disagree",
    ],
)
def test_bad_values_are_refused_when_made(kwargs: dict[str, object]) -> None:
    """Every value the RFCs do not allow is an SMTPArgumentError before anything is sent."""
    with pytest.raises(SMTPArgumentError):
        Envelope("a@x", ("b@x",), **kwargs)  # type: ignore[arg-type]


def test_parameters_on_mail_when_advertised() -> None:
    """Each extension's parameter is added to MAIL when the server advertises it."""
    mail = _mail(
        Envelope("a@x", ("b@x",), hold_for=60, deliver_by=DeliverBy(900), priority=4),
        "FUTURERELEASE 604800 2031-01-01T00:00:00Z",
        "DELIVERBY 300",
        "MT-PRIORITY MIXER",
    )
    assert mail == b"MAIL FROM:<a@x> HOLDFOR=60 BY=900;R MT-PRIORITY=4\r\n"
    until = _mail(Envelope("a@x", ("b@x",), hold_until=UNTIL), "FUTURERELEASE 604800")
    assert until == b"MAIL FROM:<a@x> HOLDUNTIL=2030-01-02T03:04:05Z\r\n"


@pytest.mark.parametrize(
    "kwargs,extension",
    [
        ({"require_tls": True}, "REQUIRETLS"),
        ({"hold_for": 60}, "FUTURERELEASE"),
        ({"deliver_by": DeliverBy(600)}, "DELIVERBY"),
        ({"priority": 1}, "MT-PRIORITY"),
    ],
    ids=["requiretls", "futurerelease", "deliverby", "mt-priority"],
)
def test_not_advertised_is_refused(kwargs: dict[str, object], extension: str) -> None:
    """A server without the extension: SMTPNotSupportedError naming it, never dropped."""
    envelope = Envelope("a@x", ("b@x",), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SMTPNotSupportedError, match=extension):
        _mail(envelope, "PIPELINING", tls=True)


def test_limits_the_server_advertises() -> None:
    """A hold past the server's limit, or a deadline under its minimum, is refused."""
    with pytest.raises(SMTPNotSupportedError, match="limit"):
        _mail(Envelope("a@x", ("b@x",), hold_for=700000), "FUTURERELEASE 604800")
    late = UNTIL + timedelta(days=400)
    with pytest.raises(SMTPNotSupportedError, match="limit"):
        _mail(Envelope("a@x", ("b@x",), hold_until=late), "FUTURERELEASE 1 2030-06-01T00:00:00Z")
    with pytest.raises(SMTPNotSupportedError, match="minimum"):
        _mail(Envelope("a@x", ("b@x",), deliver_by=DeliverBy(60)), "DELIVERBY 300")


def test_requiretls_only_over_tls() -> None:
    """REQUIRETLS is refused on a clear session even when advertised (RFC 8689 section 4.1)."""
    envelope = Envelope("a@x", ("b@x",), require_tls=True)
    with pytest.raises(SMTPNotSupportedError, match="TLS session"):
        _mail(envelope, "REQUIRETLS", tls=False)
    assert _mail(envelope, "REQUIRETLS", tls=True) == b"MAIL FROM:<a@x> REQUIRETLS\r\n"


def test_refused_before_mail_on_the_wire() -> None:
    """Against a server without REQUIRETLS nothing of the transaction is written."""
    server = MemoryServer()
    smtp = SMTP(server.endpoint(), local_hostname="client.example", reactor=server.clock)
    d = smtp.sendmail(msg=MSG, envelope=Envelope("a@x", ("b@x",), require_tls=True))
    server.flush()
    failure_result_of(d, SMTPNotSupportedError)
    assert server.sessions[0].commands == [b"EHLO client.example"]


def test_scheduling_parameters_on_the_wire() -> None:
    """Advertised by the kit's server, the parameters arrive in MAIL exactly."""
    script = Script()
    script.advertise("FUTURERELEASE 604800", "DELIVERBY", "MT-PRIORITY")
    server = MemoryServer(script)
    smtp = SMTP(server.endpoint(), local_hostname="client.example", reactor=server.clock)
    envelope = Envelope("a@x", ("b@x",), ("HOLDFOR=30", "MT-PRIORITY=2"), deliver_by=1800)
    d = smtp.sendmail(msg=MSG, envelope=envelope)
    server.flush()
    success_result_of(d)
    [message] = server.messages
    assert message.mail_args == "FROM:<a@x> SIZE=25 HOLDFOR=30 BY=1800;R MT-PRIORITY=2"


@pytest_twisted.ensureDeferred
async def test_requiretls_sent_over_verified_tls() -> None:
    """Over STARTTLS with a verified certificate, MAIL carries REQUIRETLS."""
    from twisted.internet import reactor

    script = Script()
    script.advertise("REQUIRETLS")
    server = LoopbackServer(script, tls=True).start()
    try:
        smtp = SMTP(
            server.address,
            local_hostname="client.example",
            reactor=reactor,
            tls="required",
            tls_options=server.client_tls_options(),
        )
        await smtp.sendmail(msg=MSG, envelope=Envelope("a@x", ("b@x",), require_tls=True))
        await smtp.quit()
    finally:
        await server.stop()
    [message] = server.messages
    assert message.tls and message.mail_options[-1] == "REQUIRETLS"
