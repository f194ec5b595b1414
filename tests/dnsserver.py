"""
An authoritative DNS server on loopback for the direct-delivery tests,
built on ``twisted.names.server``: zones are a dict of names to records,
and a name can be made to answer SERVFAIL or never to answer.  The client side is a
``twisted.names.client.Resolver`` that asks only this server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import client, common, dns, error, server

__all__ = ["DNSServer", "Record_TLSA", "Zone"]

Zone = dict[str, list[Any]]


class Record_TLSA(dns.UnknownRecord):
    """A TLSA record (RFC 6698), which twisted.names has no class for."""

    TYPE = 52

    @classmethod
    def of(cls, usage: int, selector: int, matching: int, data: bytes) -> Record_TLSA:
        return cls(bytes([usage, selector, matching]) + data, 60)


class _SecureFactory(server.DNSServerFactory):
    """Sets the AD bit on answers about the names it is told are signed."""

    def __init__(self, authority: _ZoneAuthority, secure: set[str]) -> None:
        super().__init__(authorities=[authority])
        self.secure = secure

    def sendReply(self, protocol: Any, message: dns.Message, address: Any) -> None:
        names = {str(q.name).lower().rstrip(".") for q in message.queries}
        message.authenticData = bool(names) and names <= self.secure
        super().sendReply(protocol, message, address)


class _ZoneAuthority(common.ResolverBase):
    """Answers from a dict: unknown names are NXDOMAIN, known ones NODATA or records."""

    def __init__(self, zone: Zone, servfail: Iterable[str]) -> None:
        super().__init__()
        self.zone = zone
        self.servfail = set(servfail)
        #: Names (or ``"name/type"``) never answered: the query waits.
        self.stall: set[str] = set()
        self.queries: list[tuple[str, int]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        key = name.decode("ascii").lower().rstrip(".")
        self.queries.append((key, type))
        if key in self.stall or f"{key}/{type}" in self.stall:
            return Deferred()
        if key in self.servfail or f"{key}/{type}" in self.servfail:
            # The server factory answers SERVFAIL for anything but a DomainError.
            return fail(RuntimeError(f"scripted SERVFAIL for {key}"))
        if key not in self.zone:
            return fail(error.AuthoritativeDomainError(key))
        answers = []
        for record in self.zone[key]:
            if record.TYPE in (type, dns.CNAME):
                answers.append(dns.RRHeader(key, record.TYPE, dns.IN, 60, record, auth=True))
        return succeed((answers, [], []))


class DNSServer:
    """
    A DNS server on 127.0.0.1 and a free UDP port.

    :param zone: name -> records (``dns.Record_MX``, ``dns.Record_A`` ...).
    :param servfail: names that answer SERVFAIL (``"name/1"``: only for
        type 1, A).
    :param secure: names whose answers carry the AD bit (as a validating
        resolver sets it for DNSSEC-signed data).
    """

    def __init__(
        self, zone: Zone, servfail: Iterable[str] = (), secure: Iterable[str] = ()
    ) -> None:
        self.authority = _ZoneAuthority(zone, servfail)
        self.secure = set(secure)
        self._port: Any = None

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens."""
        return ("127.0.0.1", self._port.getHost().port)

    def start(self, reactor: Any) -> DNSServer:
        factory = _SecureFactory(self.authority, self.secure)
        self._port = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
        self._reactor = reactor
        return self

    @property
    def queries(self) -> list[tuple[str, int]]:
        """Every (name, type) asked, in order."""
        return list(self.authority.queries)

    def resolver(self) -> client.Resolver:
        """A resolver that asks only this server."""
        return client.Resolver(
            servers=[("127.0.0.1", self._port.getHost().port)], reactor=self._reactor
        )

    def stop(self) -> Deferred[None] | None:
        port, self._port = self._port, None
        result: Deferred[None] | None = port.stopListening() if port is not None else None
        return result
