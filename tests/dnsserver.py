"""
An authoritative DNS server on loopback for the direct-delivery tests,
built on ``twisted.names.server``: zones are a dict of names to records,
and a name can be made to answer SERVFAIL.  The client side is a
``twisted.names.client.Resolver`` that asks only this server.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.names import client, common, dns, error, server

__all__ = ["DNSServer", "Zone"]

Zone = dict[str, list[Any]]


class _ZoneAuthority(common.ResolverBase):
    """Answers from a dict: unknown names are NXDOMAIN, known ones NODATA or records."""

    def __init__(self, zone: Zone, servfail: Iterable[str]) -> None:
        super().__init__()
        self.zone = zone
        self.servfail = set(servfail)
        self.queries: list[tuple[str, int]] = []

    def _lookup(self, name: bytes, cls: int, type: int, timeout: Any) -> Deferred[Any]:
        key = name.decode("ascii").lower().rstrip(".")
        self.queries.append((key, type))
        if key in self.servfail:
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
    :param servfail: names that answer SERVFAIL.
    """

    def __init__(self, zone: Zone, servfail: Iterable[str] = ()) -> None:
        self.authority = _ZoneAuthority(zone, servfail)
        self._port: Any = None

    def start(self, reactor: Any) -> DNSServer:
        factory = server.DNSServerFactory(authorities=[self.authority])
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
