"""
The world the direct-delivery tests deliver into: a ``twisted.names`` DNS
server on 127.0.0.1 (``dnsserver.py``) and scripted MX hosts, each on its
own loopback address (127.0.0.2, 127.0.0.3 ...) and all on one port, since
``send_direct(port=...)`` reaches every mail host on the same one.  Used by
``test_direct.py``, ``test_dane.py``, ``test_mtasts.py`` and the daemon's
``test_direct_daemon.py``.  Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dnsserver import DNSServer, Zone
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from txsmtpclient.direct import DirectResult, send_direct
from txsmtpclient.testing import LoopbackServer, Script

__all__ = ["SENDER", "DirectWorld"]

SENDER = "sender@origin.test"


class DirectWorld:
    """
    A DNS server and MX hosts on loopback, and ``send_direct`` aimed at them.

    :param reactor: the reactor everything runs on.
    :param message: what :meth:`send` sends unless given another.
    :param defaults: ``send_direct`` keywords every :meth:`send` uses unless
        it is given them (each test module's own: TLS policy, timeouts,
        MTA-STS, DANE).
    :param mx_reactor: what the MX hosts listen on and time their scripted
        delays with (default: ``reactor``).
    """

    def __init__(
        self,
        reactor: Any,
        message: bytes = b"Subject: direct\r\n\r\nbody\r\n",
        defaults: Mapping[str, Any] | None = None,
        *,
        mx_reactor: Any = None,
    ) -> None:
        self.reactor = reactor
        self.message = message
        self.defaults = dict(defaults or {})
        self._mx_reactor = mx_reactor if mx_reactor is not None else reactor
        #: The MX hosts, by the name given to :meth:`mx` (else the address).
        self.servers: dict[str, LoopbackServer] = {}
        self.port = 0
        self.dns: DNSServer | None = None

    def mx(
        self,
        address: str,
        script: Script | None = None,
        *,
        name: str | None = None,
        tls: bool = False,
    ) -> LoopbackServer:
        """
        Start an MX host on ``address`` and the world's port; with ``tls``,
        offering STARTTLS with a certificate for ``name``.
        """
        server = LoopbackServer(
            script or Script(),
            reactor=self._mx_reactor,
            interface=address,
            port=self.port,
            tls=tls,
            hostnames=(name,) if name is not None else (),
        ).start()
        self.port = server.port
        self.servers[name or address] = server
        return server

    async def free_port_on(self, address: str) -> None:
        """Take a port number free on ``address`` for hosts that listen nowhere."""
        if not self.port:
            probe = LoopbackServer(reactor=self.reactor, interface=address).start()
            self.port = probe.port
            await probe.stop()

    def zone(self, zone: Zone, servfail: Iterable[str] = (), secure: Iterable[str] = ()) -> None:
        """
        Serve ``zone``: start the DNS server, or change what it serves.

        :param servfail: names (``"name/type"``) answering SERVFAIL.
        :param secure: names whose answers carry the AD bit.
        """
        if self.dns is None:
            self.dns = DNSServer(zone, servfail, secure).start(self.reactor)
        else:
            self.dns.authority.zone = zone
            self.dns.authority.servfail = set(servfail)
            # The server's factory holds this very set.
            self.dns.secure.clear()
            self.dns.secure.update(secure)

    def tls_options_for(self, host: str) -> IOpenSSLClientConnectionCreator:
        """Client TLS options trusting MX host ``host``'s certificate."""
        return self.servers[host].client_tls_options(host)

    def send(
        self,
        recipients: Sequence[str] = ("rcpt@dest.test",),
        msg: bytes | None = None,
        *,
        sender: str = SENDER,
        **kwargs: Any,
    ) -> Deferred[dict[str, DirectResult]]:
        """
        ``send_direct`` of ``msg`` (default: the world's message) from
        ``sender`` through the world's DNS server and port.
        """
        assert self.dns is not None, "call zone() first"
        options: dict[str, Any] = {
            "resolver": self.dns.resolver(),
            "reactor": self.reactor,
            "local_hostname": "client.origin.test",
            "port": self.port,
            "dns_timeout": 3,
            "rng": random.Random(0),
            **self.defaults,
            **kwargs,
        }
        return send_direct(sender, list(recipients), msg or self.message, **options)

    async def close(self) -> None:
        """Stop the MX hosts and the DNS server."""
        for server in self.servers.values():
            await server.stop()
        if self.dns is not None:
            stopped = self.dns.stop()
            if stopped is not None:
                await stopped
