"""
DANE for SMTP (RFC 7672), without I/O: TLSA records read from their wire
form, which of them are usable, and whether a server's certificate chain
matches them (DANE-EE(3) and DANE-TA(2), selectors 0 and 1, matching types
0, 1 and 2).

Sans-IO: bytes in, values out; nothing here imports Twisted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = ["DANE_EE", "DANE_TA", "TLSARecord", "leaf_matches", "parse_tlsa", "trust_anchor"]

#: Certificate usages this client supports (RFC 7672 section 3.1).
DANE_TA = 2
DANE_EE = 3
#: The TLSA RR type (RFC 6698).
TLSA_TYPE = 52


@dataclass(frozen=True, slots=True)
class TLSARecord:
    """
    One TLSA record (RFC 6698 section 2.1).

    :ivar usage: 2 (DANE-TA) or 3 (DANE-EE) are usable here; 0 and 1 are
        not used for SMTP (RFC 7672 section 3.1.3).
    :ivar selector: 0, the whole certificate; 1, its SubjectPublicKeyInfo.
    :ivar matching: 0, the data itself; 1, its SHA-256; 2, its SHA-512.
    :ivar data: the association data.
    """

    usage: int
    selector: int
    matching: int
    data: bytes

    @property
    def usable(self) -> bool:
        """
        Whether this client can use the record (RFC 7672 section 2.2).
        """
        return (
            self.usage in (DANE_TA, DANE_EE)
            and self.selector in (0, 1)
            and self.matching in (0, 1, 2)
            and bool(self.data)
        )

    def matches(self, certificate: x509.Certificate) -> bool:
        """
        Whether ``certificate`` is the one this record names.
        """
        if self.selector == 0:
            selected = certificate.public_bytes(Encoding.DER)
        else:
            selected = certificate.public_key().public_bytes(
                Encoding.DER, PublicFormat.SubjectPublicKeyInfo
            )
        if self.matching == 1:
            selected = hashlib.sha256(selected).digest()
        elif self.matching == 2:
            selected = hashlib.sha512(selected).digest()
        return selected == self.data


def parse_tlsa(rdata: bytes) -> TLSARecord | None:
    """
    A TLSA record from its RDATA, or ``None`` when it is too short.
    """
    if len(rdata) < 4:
        return None
    return TLSARecord(rdata[0], rdata[1], rdata[2], rdata[3:])


def leaf_matches(records: Sequence[TLSARecord], leaf: x509.Certificate) -> bool:
    """
    Whether a usable DANE-EE record names the server's own certificate
    (RFC 7672 section 3.1.1: no name or expiry checks then).
    """
    return any(r.usable and r.usage == DANE_EE and r.matches(leaf) for r in records)


def trust_anchor(
    records: Sequence[TLSARecord], chain: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """
    The certificate of the server's chain (above the leaf) that a usable
    DANE-TA record names, or ``None`` (RFC 7672 section 3.1.2); the caller
    still checks the chain's signatures up to it and the host name.
    """
    for certificate in chain[1:]:
        if any(r.usable and r.usage == DANE_TA and r.matches(certificate) for r in records):
            return certificate
    return None
