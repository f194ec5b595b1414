"""
DANE's I/O: TLSA records (and the MX RRset's security) from a local,
validating resolver that vouches for them with the AD bit (RFC 7672
section 2.1; Postfix likewise requires its validating resolver to be
local), and the TLS options that check a server's certificate against them
instead of the WebPKI.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, verify_service_identity
from service_identity.pyopenssl import extract_patterns
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import DatagramProtocol
from twisted.names import dns
from twisted.python.failure import Failure
from zope.interface import implementer

from txsmtpclient.direct._dane import TLSA_TYPE, TLSARecord, leaf_matches, parse_tlsa, trust_anchor
from txsmtpclient.errors import SMTPRoutingError

__all__ = ["DANE", "DANEOptions", "SecureAnswer"]


@dataclass(frozen=True, slots=True)
class SecureAnswer:
    """
    A validating resolver's answer.

    :ivar secure: the AD bit was set: the answer is DNSSEC-validated.
    :ivar exists: the name exists (not NXDOMAIN).
    :ivar records: the RDATA of each record of the asked type, as bytes.
    """

    secure: bool
    exists: bool
    records: tuple[Any, ...]


class _Query(DatagramProtocol):
    def __init__(self, message: dns.Message, server: tuple[str, int]) -> None:
        self.message = message
        self.server = server
        self.answer: Deferred[dns.Message] = Deferred()

    def startProtocol(self) -> None:
        assert self.transport is not None
        self.transport.write(self.message.toStr(), self.server)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if self.answer.called or tuple(addr[:2]) != self.server:
            return
        reply = dns.Message()
        try:
            reply.fromStr(data)
        except Exception:
            return
        if reply.id == self.message.id and reply.answer:
            self.answer.callback(reply)


class DANE:
    """
    DANE (RFC 7672) for direct delivery: a local validating resolver to ask
    for TLSA records, trusted only with the AD bit.

    :param server: the resolver's ``(address, port)``; it must be on
        loopback, since the AD bit means nothing over an untrusted path.
    :param timeout: seconds for each query.
    :raises ValueError: for a resolver address off loopback.
    """

    def __init__(
        self, server: tuple[str, int] = ("127.0.0.1", 53), *, timeout: float = 10
    ) -> None:
        if not ipaddress.ip_address(server[0]).is_loopback:
            raise ValueError(
                f"the DANE resolver {server[0]} must be on loopback: the AD bit "
                "can only be trusted from a local validating resolver"
            )
        self.server = (server[0], int(server[1]))
        self.timeout = timeout

    async def query(self, reactor: Any, name: str, kind: int) -> SecureAnswer:
        """
        Ask the validating resolver, with the AD bit set in the query (RFC
        6840 section 5.7) so it reports validation.

        :raises SMTPRoutingError: (temporary) for SERVFAIL (a validation
            failure looks like this: RFC 7672 section 2.1.1) or a timeout.
        """
        message = dns.Message(secrets.randbelow(65536), recDes=1, authenticData=1)
        message.queries = [dns.Query(name, kind, dns.IN)]
        protocol = _Query(message, self.server)
        family = "::1" if ":" in self.server[0] else "127.0.0.1"
        try:
            port = reactor.listenUDP(0, protocol, interface=family)
        except (OSError, CannotListenError) as e:
            raise SMTPRoutingError(f"DNSSEC lookup of {name}: {e}", temporary=True) from e
        protocol.answer.addTimeout(self.timeout, reactor)
        try:
            reply = await protocol.answer
        except CancelledError:
            raise
        except Exception as e:
            raise SMTPRoutingError(f"DNSSEC lookup of {name} failed: {e!r}", temporary=True) from e
        finally:
            await port.stopListening()
        if reply.trunc:
            # Over UDP with no EDNS a large TLSA set can be cut short: a
            # partial answer must not pass for a complete one.
            raise SMTPRoutingError(f"DNSSEC answer for {name} was truncated", temporary=True)
        if reply.rCode == dns.ENAME:
            return SecureAnswer(bool(reply.authenticData), False, ())
        if reply.rCode != dns.OK:
            raise SMTPRoutingError(
                f"DNSSEC lookup of {name} failed with rcode {reply.rCode}", temporary=True
            )
        wanted = name.lower().rstrip(".")
        records = tuple(
            r.payload
            for r in reply.answers
            if r.type == kind and str(r.name).lower().rstrip(".") == wanted
        )
        return SecureAnswer(bool(reply.authenticData), True, records)

    async def tlsa(self, reactor: Any, host: str, port: int) -> list[TLSARecord]:
        """
        The usable TLSA records at ``_<port>._tcp.<host>``; empty when there
        are none, or when the answer is not DNSSEC-validated.
        """
        answer = await self.query(reactor, f"_{port}._tcp.{host}", TLSA_TYPE)
        if not answer.secure:
            return []
        parsed = (parse_tlsa(getattr(r, "data", b"")) for r in answer.records)
        return [r for r in parsed if r is not None and r.usable]


@implementer(IOpenSSLClientConnectionCreator)
class DANEOptions:
    """
    TLS client options that verify the server by its TLSA records instead of
    the WebPKI (RFC 7672 section 3): DANE-EE matches the server's own
    certificate (no name or date checks); DANE-TA matches a CA certificate
    in the chain, then the chain's signatures up to it and the host name.

    :param host: the MX host name (the TLSA base domain).
    :param records: the usable TLSA records.
    :param names: the names a DANE-TA-verified certificate may carry
        (the MX host and the next-hop domain, RFC 7672 section 3.2.2).
    """

    def __init__(self, host: str, records: Sequence[TLSARecord], names: Sequence[str]) -> None:
        self.host = host
        self.records = tuple(records)
        self.names = tuple(names)
        self._context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_2_VERSION)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self.host.encode("idna"))
        chain: dict[int, crypto.X509] = {}

        def verify(conn: SSL.Connection, cert: crypto.X509, err: int, depth: int, ok: int) -> bool:
            chain[depth] = cert
            if depth != 0:
                # Judged as a whole once the leaf is reached.
                return True
            try:
                reason = self._judge([chain[d] for d in sorted(chain)])
            except Exception as e:
                reason = f"DANE check failed: {e!r}"
            if reason is None:
                return True
            tlsProtocol.failVerification(Failure(SSL.Error(reason)))
            return False

        connection.set_verify(SSL.VERIFY_PEER, verify)
        return connection

    def _judge(self, chain: list[crypto.X509]) -> str | None:
        certificates = [c.to_cryptography() for c in chain]
        if leaf_matches(self.records, certificates[0]):
            return None
        anchor = trust_anchor(self.records, certificates)
        if anchor is None:
            return f"no TLSA record of {self.host} matches its certificate chain"
        store = crypto.X509Store()
        store.add_cert(crypto.X509.from_cryptography(anchor))
        context = crypto.X509StoreContext(store, chain[0], chain[1:])
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError as e:
            return f"the chain does not verify up to the DANE-TA anchor: {e}"
        patterns = extract_patterns(chain[0])
        for name in self.names:
            try:
                verify_service_identity(patterns, [DNS_ID(name)], [])
                return None
            except VerificationError:
                continue
        return f"the certificate names none of {self.names}"
