"""
MTA-STS (RFC 8461) for direct delivery: the record and policy parsers, MX
patterns and the cache in the pure tier; then end to end with a
``twisted.names`` DNS server, a policy served over HTTPS on loopback with a
trustme certificate, and MX hosts on 127.0.0.2/3 offering STARTTLS.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import trustme
from directworld import DirectWorld
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from txsmtpclient.direct import (
    MTASTS,
    Mode,
    PolicyCache,
    PolicyError,
    STSPolicy,
)
from txsmtpclient.direct._mtasts import mx_matches, parse_policy, parse_sts_record
from txsmtpclient.errors import SMTPRoutingError
from txsmtpclient.testing import LoopbackServer, Script

MSG = b"Subject: sts\r\n\r\nbody\r\n"
POLICY = b"version: STSv1\r\nmode: %s\r\nmx: %s\r\nmax_age: 86400\r\n"


# -- pure ----------------------------------------------------------------------------------


def test_record_id() -> None:
    """The id of the one v=STSv1 record; none, or two, mean no policy."""
    assert parse_sts_record(["v=STSv1; id=20240101T000000;"]) == "20240101T000000"
    assert parse_sts_record(["v=spf1 -all"]) is None
    assert parse_sts_record(["v=STSv1; id=a;", "v=STSv1; id=b;"]) is None
    with pytest.raises(PolicyError):
        parse_sts_record(["v=STSv1; id=not-alphanumeric!;"])


def test_policy_parsing() -> None:
    """A policy's fields, CRLF or LF, unknown keys ignored, several mx lines kept."""
    policy = parse_policy(
        b"version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.example.net\n"
        b"max_age: 604800\nextension: ignored\n"
    )
    assert policy == STSPolicy(Mode.ENFORCE, ("mail.example.com", "*.example.net"), 604800)


@pytest.mark.parametrize(
    "body",
    [
        b"version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
        b"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n",
        b"version: STSv1\nmode: enforce\nmax_age: 1\n",
        b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 31557601\n",
        b"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
        b"version: STSv1\nno colon here\n",
        b"\xff\xfe",
        b"x" * (64 * 1024 + 1),
    ],
    ids=["version", "mode", "no-mx", "max-age-big", "max-age-negative", "syntax", "utf8", "size"],
)
def test_bad_policies(body: bytes) -> None:
    """Every malformed policy is a PolicyError."""
    with pytest.raises(PolicyError):
        parse_policy(body)


def test_mx_patterns() -> None:
    """A wildcard stands for exactly one left-most label (RFC 8461 section 4.1)."""
    assert mx_matches("mx1.example.net", "*.example.net")
    assert not mx_matches("a.b.example.net", "*.example.net")
    assert not mx_matches("example.net", "*.example.net")
    assert mx_matches("MAIL.Example.com.", "mail.example.com")
    assert not mx_matches("mail.example.com.evil", "mail.example.com")


def test_cache_expires_after_max_age() -> None:
    """A cached policy is used until max_age and then forgotten."""
    cache = PolicyCache()
    policy = STSPolicy(Mode.ENFORCE, ("mx.example",), 60)
    cache.put("example", policy, "id1", now=1000)
    assert cache.get("example", 1059) == (policy, "id1")
    assert cache.get("example", 1060) is None


# -- end to end ----------------------------------------------------------------------------


class _Policy(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = b""
        self.code = 200
        self.requests = 0

    def render_GET(self, request: Request) -> bytes:
        self.requests += 1
        request.setResponseCode(self.code)
        if self.code in (301, 302):
            request.setHeader(b"Location", b"https://elsewhere.test/")
        request.setHeader(b"Content-Type", b"text/plain")
        return self.body


class StsWorld(DirectWorld):
    """DNS, an HTTPS policy server on 127.0.0.4, and MX hosts on 127.0.0.2/3."""

    def __init__(self, reactor: Any) -> None:
        self.ca = trustme.CA()
        self.policy = _Policy()
        cert = self.ca.issue_cert("mta-sts.dest.test")
        server_pem = cert.private_key_and_cert_chain_pem.bytes()
        options = PrivateCertificate.loadPEM(server_pem).options()
        self.https = reactor.listenSSL(0, Site(self.policy), options, interface="127.0.0.4")
        self.sts = MTASTS(
            tls_options_for=self.tls_options_for,
            clock=Clock(),
            port=self.https.getHost().port,
            timeout=10,
        )
        defaults = {"timeout": 10, "mta_sts": self.sts, "tls_options_for": self.tls_options_for}
        super().__init__(reactor, MSG, defaults)

    def tls_options_for(self, host: str) -> IOpenSSLClientConnectionCreator:
        server = self.servers.get(host)
        if server is not None and server.certificate is not None:
            return server.client_tls_options(host)
        return optionsForClientTLS(host, trustRoot=Certificate.loadPEM(self.ca.cert_pem.bytes()))

    def sts_mx(
        self, name: str, address: str, script: Script | None = None, tls: bool = True
    ) -> LoopbackServer:
        return self.mx(address, script, name=name, tls=tls)

    def sts_zone(self, record_id: str = "1") -> None:
        self.zone(
            {
                "dest.test": [
                    dns.Record_MX(10, "mx1.dest.test"),
                    dns.Record_MX(20, "mx2.dest.test"),
                ],
                "mx1.dest.test": [dns.Record_A("127.0.0.2")],
                "mx2.dest.test": [dns.Record_A("127.0.0.3")],
                "mta-sts.dest.test": [dns.Record_A("127.0.0.4")],
                "_mta-sts.dest.test": [dns.Record_TXT(f"v=STSv1; id={record_id};".encode())],
            }
        )

    def serve(self, mode: str, mx: str) -> None:
        self.policy.body = POLICY % (mode.encode(), mx.encode())

    async def close(self) -> None:
        await super().close()
        await self.https.stopListening()


@pytest_twisted.async_yield_fixture()
async def sts() -> AsyncIterator[StsWorld]:
    from twisted.internet import reactor

    world = StsWorld(reactor)
    yield world
    await world.close()


@pytest_twisted.ensureDeferred
async def test_enforce_skips_an_mx_the_policy_does_not_name(sts: StsWorld) -> None:
    """Under enforce, mx1 (not in the policy) is passed over; mx2 gets it over verified TLS."""
    first = sts.sts_mx("mx1.dest.test", "127.0.0.2")
    second = sts.sts_mx("mx2.dest.test", "127.0.0.3")
    sts.sts_zone()
    sts.serve("enforce", "mx2.dest.test")
    [result] = (await sts.send()).values()
    assert result.delivered and result.mx == "mx2.dest.test"
    assert first.sessions == []
    assert second.messages[0].tls and second.messages[0].content == MSG
    assert [(e.result_type, e.receiving_mx_hostname) for e in result.tls_report] == [
        ("validation-failure", "mx1.dest.test")
    ]


@pytest_twisted.ensureDeferred
async def test_enforce_without_starttls_stays_temporary(sts: StsWorld) -> None:
    """Under enforce, an MX without STARTTLS is not used, and the failure is temporary."""
    plain = sts.sts_mx("mx1.dest.test", "127.0.0.2", tls=False)
    sts.sts_zone()
    sts.serve("enforce", "*.dest.test")
    [result] = (await sts.send()).values()
    assert result.temporary and not result.final
    assert plain.messages == []
    kinds = {e.result_type for e in result.tls_report}
    assert "starttls-not-supported" in kinds


@pytest_twisted.ensureDeferred
async def test_enforce_with_no_matching_mx(sts: StsWorld) -> None:
    """When the policy names none of the MX hosts, nothing is sent and it stays temporary."""
    first = sts.sts_mx("mx1.dest.test", "127.0.0.2")
    sts.sts_zone()
    sts.serve("enforce", "other.test")
    [result] = (await sts.send()).values()
    assert result.temporary and isinstance(result.error, SMTPRoutingError)
    assert first.sessions == []


@pytest_twisted.ensureDeferred
async def test_testing_mode_delivers_and_reports(sts: StsWorld) -> None:
    """Under testing, the mismatching mx1 is still used, and the mismatch is reported."""
    first = sts.sts_mx("mx1.dest.test", "127.0.0.2")
    sts.sts_zone()
    sts.serve("testing", "mx2.dest.test")
    [result] = (await sts.send()).values()
    assert result.delivered and result.mx == "mx1.dest.test"
    assert len(first.messages) == 1
    assert [e.result_type for e in result.tls_report] == ["validation-failure"]


@pytest_twisted.ensureDeferred
async def test_cache_holds_until_max_age_then_refetches(sts: StsWorld) -> None:
    """The policy is fetched once while cached, and again once max_age has passed."""
    sts.sts_mx("mx1.dest.test", "127.0.0.2")
    sts.sts_zone()
    sts.serve("enforce", "mx1.dest.test")
    for _ in range(2):
        [result] = (await sts.send()).values()
        assert result.delivered
    assert sts.policy.requests == 1
    assert isinstance(sts.sts.clock, Clock)
    sts.sts.clock.advance(86400)
    [result] = (await sts.send()).values()
    assert result.delivered and sts.policy.requests == 2


@pytest_twisted.ensureDeferred
async def test_changed_record_id_refetches(sts: StsWorld) -> None:
    """A new id in the TXT record fetches the policy again, and the new policy applies."""
    sts.sts_mx("mx1.dest.test", "127.0.0.2")
    second = sts.sts_mx("mx2.dest.test", "127.0.0.3")
    sts.sts_zone("1")
    sts.serve("enforce", "*.dest.test")
    [result] = (await sts.send()).values()
    assert result.mx == "mx1.dest.test"
    sts.sts_zone("2")
    sts.serve("enforce", "mx2.dest.test")
    [result] = (await sts.send()).values()
    assert sts.policy.requests == 2
    assert result.mx == "mx2.dest.test" and len(second.messages) == 1


@pytest.mark.parametrize("code", [301, 404], ids=["redirect", "not-found"])
@pytest_twisted.ensureDeferred
async def test_fetch_failure_means_no_policy_and_is_reported(sts: StsWorld, code: int) -> None:
    """A redirect is not followed; it, like a 404, leaves no policy and a fetch-error entry."""
    sts.sts_mx("mx1.dest.test", "127.0.0.2")
    sts.sts_zone()
    sts.serve("enforce", "nothing.test")
    sts.policy.code = code
    [result] = (await sts.send()).values()
    assert result.delivered
    assert [e.result_type for e in result.tls_report] == ["sts-policy-fetch-error"]


@pytest_twisted.ensureDeferred
async def test_oversized_policy_is_refused(sts: StsWorld) -> None:
    """A policy over 64 KiB is not read past the limit and counts as a fetch error."""
    sts.sts_mx("mx1.dest.test", "127.0.0.2")
    sts.sts_zone()
    sts.policy.body = b"version: STSv1\n" + b"x: y\n" * 20000
    [result] = (await sts.send()).values()
    assert result.delivered
    assert [e.result_type for e in result.tls_report] == ["sts-policy-fetch-error"]


@pytest_twisted.ensureDeferred
async def test_enforce_with_an_unverifiable_certificate(sts: StsWorld) -> None:
    """Under enforce, an MX whose certificate does not verify is not used: temporary."""
    first = sts.sts_mx("mx1.dest.test", "127.0.0.2")
    # The client trusts only the policy server's CA: mx1's certificate fails.
    sts.servers["mx1, no longer trusted"] = sts.servers.pop("mx1.dest.test")
    impostor = sts.sts_mx("other.dest.test", "127.0.0.3")
    sts.sts_zone()
    sts.serve("enforce", "mx1.dest.test")
    [result] = (await sts.send()).values()
    assert result.temporary and first.messages == [] and impostor.sessions == []
    # mx2 is not in the policy; mx1's certificate did not verify.
    assert [(e.result_type, e.receiving_mx_hostname) for e in result.tls_report] == [
        ("validation-failure", "mx2.dest.test"),
        ("validation-failure", "mx1.dest.test"),
    ]


@pytest_twisted.ensureDeferred
async def test_tls_required_no_sets_the_policy_aside(sts: StsWorld) -> None:
    """A ``TLS-Required: No`` header (RFC 8689 section 5) sends past an enforced policy."""
    first = sts.sts_mx("mx1.dest.test", "127.0.0.2", tls=False)
    sts.sts_zone()
    sts.serve("enforce", "mx2.dest.test")
    message = b"TLS-Required: No\r\nSubject: sts\r\n\r\nbody\r\n"
    [result] = (await sts.send(msg=message, tls_options_for=None)).values()
    assert result.delivered and result.mx == "mx1.dest.test" and len(first.messages) == 1
    assert sts.policy.requests == 0


class _TwoAddresses:
    """A resolver with two A records for any name and no AAAA."""

    def query(self, query: dns.Query, timeout: Any = None) -> Any:
        from twisted.internet.defer import succeed

        if query.type != dns.A:
            return succeed(([], [], []))
        name = str(query.name)
        return succeed(
            (
                [
                    dns.RRHeader(name, dns.A, payload=dns.Record_A(a))
                    for a in ("127.0.0.4", "127.0.0.5")
                ],
                [],
                [],
            )
        )


def test_cancelled_policy_connection_tries_no_other_address() -> None:
    """Cancelling the policy server's connection gives up: the next address is not tried."""
    from helpers import failure_result_of
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import ConnectingCancelledError
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.testing import MemoryReactorClock

    from txsmtpclient.direct._fetch import _ResolvedTLSEndpoint

    reactor = MemoryReactorClock()
    options = optionsForClientTLS("mta-sts.dest.test")
    endpoint = _ResolvedTLSEndpoint(
        reactor,
        _TwoAddresses(),
        "mta-sts.dest.test",
        443,
        options,
        10,  # type: ignore[arg-type]
    )
    connecting = endpoint.connect(Factory.forProtocol(Protocol))
    assert [c[0] for c in reactor.tcpClients] == ["127.0.0.4"]
    connecting.cancel()
    error = failure_result_of(connecting, Exception)
    assert isinstance(error, (CancelledError, ConnectingCancelledError))
    assert [c[0] for c in reactor.tcpClients] == ["127.0.0.4"]
