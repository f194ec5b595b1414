"""
DANE for SMTP (RFC 7672) in direct delivery: TLSA records served by a
``twisted.names`` DNS server on loopback that sets the AD bit where a case
needs it, and MX hosts on 127.0.0.2/3 whose STARTTLS certificates come from
the testing kit's generated CA (which they send in their chain).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from directworld import DirectWorld
from dnsserver import Record_TLSA, Zone
from twisted.names import dns

from txsmtpclient.direct._dane import TLSARecord, leaf_matches, parse_tlsa, trust_anchor
from txsmtpclient.direct._secure import DANE
from txsmtpclient.testing import LoopbackServer, TestCertificate

MSG = b"Subject: dane\r\n\r\nbody\r\n"


def _spki_sha256(pem: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def _cert_sha512(pem: bytes) -> bytes:
    return hashlib.sha512(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).digest()


# -- pure ----------------------------------------------------------------------------------


def test_tlsa_matching_selectors_and_types() -> None:
    """Selector 0/1 with matching 0/1/2 each name the certificate they were made from."""
    test = TestCertificate.generate("mx.dest.test")
    leaf = x509.load_pem_x509_certificate(test.cert_pem)
    der = leaf.public_bytes(Encoding.DER)
    spki = leaf.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    for selector, selected in ((0, der), (1, spki)):
        for matching, data in (
            (0, selected),
            (1, hashlib.sha256(selected).digest()),
            (2, hashlib.sha512(selected).digest()),
        ):
            assert leaf_matches([TLSARecord(3, selector, matching, data)], leaf)
    assert not leaf_matches([TLSARecord(3, 1, 1, b"\0" * 32)], leaf)
    # PKIX usages (0, 1) are not for SMTP (RFC 7672 section 3.1.3).
    assert not leaf_matches([TLSARecord(1, 1, 1, hashlib.sha256(spki).digest())], leaf)


def test_trust_anchor_is_above_the_leaf() -> None:
    """A DANE-TA record names a CA in the chain, never the leaf itself."""
    test = TestCertificate.generate("mx.dest.test")
    leaf = x509.load_pem_x509_certificate(test.cert_pem)
    ca = x509.load_pem_x509_certificate(test.ca_pem)
    record = TLSARecord(2, 0, 2, _cert_sha512(test.ca_pem))
    assert trust_anchor([record], [leaf, ca]) == ca
    leaf_record = TLSARecord(2, 1, 1, _spki_sha256(test.cert_pem))
    assert trust_anchor([leaf_record], [leaf, ca]) is None


def test_parse_tlsa() -> None:
    """RDATA is usage, selector, matching type, data; short RDATA is no record."""
    assert parse_tlsa(b"\x03\x01\x01abc") == TLSARecord(3, 1, 1, b"abc")
    assert parse_tlsa(b"\x03\x01") is None
    assert not TLSARecord(3, 7, 1, b"x").usable


def test_dane_resolver_must_be_local() -> None:
    """The AD bit is only trusted from a resolver on loopback."""
    with pytest.raises(ValueError, match="loopback"):
        DANE(("192.0.2.53", 53))


# -- end to end ----------------------------------------------------------------------------


class DaneWorld(DirectWorld):
    """
    dest.test with mx1/mx2 on 127.0.0.2/3 offering STARTTLS, and DANE
    through the world's DNS server (which sets the AD bit on signed names).
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor, MSG, {"timeout": 10, "mta_sts": False})

    def tls_mx(self, name: str, address: str) -> LoopbackServer:
        return self.mx(address, name=name, tls=True)

    def dane_zone(self, tlsa: dict[str, list[Record_TLSA]], secure: bool = True) -> None:
        zone: Zone = {
            "dest.test": [dns.Record_MX(10, "mx1.dest.test"), dns.Record_MX(20, "mx2.dest.test")],
            "mx1.dest.test": [dns.Record_A("127.0.0.2")],
            "mx2.dest.test": [dns.Record_A("127.0.0.3")],
        }
        signed = {"dest.test"}
        for host, records in tlsa.items():
            name = f"_{self.port}._tcp.{host}"
            zone[name] = list(records)
            signed.add(name)
        self.zone(zone, secure=signed if secure else ())

    def dane_send(self, **kwargs: Any) -> Any:
        assert self.dns is not None
        return self.send(dane=DANE(self.dns.address, timeout=3), **kwargs)


@pytest_twisted.async_yield_fixture()
async def dane() -> AsyncIterator[DaneWorld]:
    from twisted.internet import reactor

    world = DaneWorld(reactor)
    yield world
    await world.close()


def _ee(server: LoopbackServer) -> Record_TLSA:
    assert server.certificate is not None
    return Record_TLSA.of(3, 1, 1, _spki_sha256(server.certificate.cert_pem))


@pytest_twisted.ensureDeferred
async def test_dane_ee_match_delivers_without_webpki(dane: DaneWorld) -> None:
    """A matching DANE-EE record is all the trust needed: no CA is configured in the client."""
    first = dane.tls_mx("mx1.dest.test", "127.0.0.2")
    dane.dane_zone({"mx1.dest.test": [_ee(first)]})
    [result] = (await dane.dane_send()).values()
    assert result.delivered and result.mx == "mx1.dest.test"
    assert first.messages[0].tls and first.messages[0].content == MSG


@pytest_twisted.ensureDeferred
async def test_dane_ee_mismatch_is_not_used(dane: DaneWorld) -> None:
    """A DANE-EE record that names another key: mx1 is not used, mx2 (no TLSA) gets it."""
    first = dane.tls_mx("mx1.dest.test", "127.0.0.2")
    second = dane.tls_mx("mx2.dest.test", "127.0.0.3")
    dane.dane_zone({"mx1.dest.test": [Record_TLSA.of(3, 1, 1, b"\x01" * 32)]})
    [result] = (await dane.dane_send(tls_options_for=dane.tls_options_for)).values()
    assert result.delivered and result.mx == "mx2.dest.test"
    assert first.messages == [] and len(second.messages) == 1
    assert [(e.policy_type, e.receiving_mx_hostname) for e in result.tls_report] == [
        ("tlsa", "mx1.dest.test")
    ]


@pytest_twisted.ensureDeferred
async def test_dane_only_host_failing_is_temporary(dane: DaneWorld) -> None:
    """When the only MX fails its TLSA check, the delivery stays temporary."""
    first = dane.tls_mx("mx1.dest.test", "127.0.0.2")
    dane.dane_zone({"mx1.dest.test": [Record_TLSA.of(3, 1, 1, b"\x01" * 32)]})
    dane.dns.authority.zone["dest.test"] = [dns.Record_MX(10, "mx1.dest.test")]  # type: ignore[union-attr]
    [result] = (await dane.dane_send()).values()
    assert result.temporary and first.messages == []


@pytest_twisted.ensureDeferred
async def test_dane_ta_match(dane: DaneWorld) -> None:
    """A DANE-TA record naming the CA in the chain: the chain and the name are checked."""
    first = dane.tls_mx("mx1.dest.test", "127.0.0.2")
    assert first.certificate is not None
    record = Record_TLSA.of(2, 0, 2, _cert_sha512(first.certificate.ca_pem))
    dane.dane_zone({"mx1.dest.test": [record]})
    [result] = (await dane.dane_send()).values()
    assert result.delivered and first.messages[0].tls


@pytest_twisted.ensureDeferred
async def test_missing_ad_bit_means_no_dane(dane: DaneWorld) -> None:
    """Without the AD bit the (mismatching) TLSA records are ignored: WebPKI rules apply."""
    first = dane.tls_mx("mx1.dest.test", "127.0.0.2")
    dane.dane_zone({"mx1.dest.test": [Record_TLSA.of(3, 1, 1, b"\x01" * 32)]}, secure=False)
    [result] = (await dane.dane_send(tls_options_for=dane.tls_options_for)).values()
    assert result.delivered and result.mx == "mx1.dest.test"
    assert result.tls_report == () and len(first.messages) == 1
