"""
MTA-STS discovery (RFC 8461 sections 3 and 5.1): the ``_mta-sts`` TXT
record through ``twisted.names``, the policy over HTTPS with Twisted's web
client (certificate verified for ``mta-sts.<domain>``, at most 64 KiB, a
timeout, no redirects), and the cache that both go through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.error import ConnectError, ConnectingCancelledError
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IResolver,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IResponse
from zope.interface import implementer

from txsmtpclient._tls import client_tls_options
from txsmtpclient.direct._dns import lookup_addresses, lookup_txt
from txsmtpclient.direct._mtasts import (
    MAX_POLICY_SIZE,
    PolicyCache,
    PolicyError,
    STSPolicy,
    TLSReportEntry,
    parse_policy,
    parse_sts_record,
)
from txsmtpclient.errors import SMTPRoutingError

__all__ = ["MTASTS", "Discovery", "TLSOptionsFor"]

#: Host name -> TLS client options that verify a certificate for it.
TLSOptionsFor = Callable[[str], IOpenSSLClientConnectionCreator]


@dataclass(frozen=True, slots=True)
class Discovery:
    """
    The policy that applies to a domain now, and what went wrong finding it.

    :ivar policy: the policy, or ``None`` when the domain has none (or none
        could be had and none was cached).
    :ivar report: failures in the TLSRPT shape.
    """

    policy: STSPolicy | None
    report: tuple[TLSReportEntry, ...] = ()


class _Capped(Protocol):
    """Collects a response body, failing past ``limit`` bytes."""

    def __init__(self, limit: int, done: Deferred[bytes]) -> None:
        self.limit = limit
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.limit:
            if not self.done.called:
                self.done.errback(PolicyError(f"the policy is over {self.limit} bytes"))
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(reason)


@implementer(IStreamClientEndpoint)
class _ResolvedTLSEndpoint:
    """Connects over TLS to a host whose addresses come from our resolver."""

    def __init__(
        self,
        reactor: Any,
        resolver: IResolver,
        host: str,
        port: int,
        options: IOpenSSLClientConnectionCreator,
        timeout: float,
    ) -> None:
        self._reactor, self._resolver, self._host, self._port = reactor, resolver, host, port
        self._options, self._timeout = options, timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        addresses = await lookup_addresses(self._resolver, self._host, self._timeout)
        if not addresses:
            raise PolicyError(f"{self._host} has no address")
        error: BaseException | None = None
        for address in addresses:
            kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
            endpoint = wrapClientTLS(
                self._options, kind(self._reactor, address, self._port, timeout=self._timeout)
            )
            try:
                protocol: IProtocol = await endpoint.connect(factory)
                return protocol
            except (CancelledError, ConnectingCancelledError):
                raise  # given up: no other address either
            except Exception as e:
                error = e
        assert error is not None
        raise error


@implementer(IAgentEndpointFactory)
class _Endpoints:
    def __init__(
        self, reactor: Any, resolver: IResolver, tls_options_for: TLSOptionsFor, timeout: float
    ) -> None:
        self._args = (reactor, resolver)
        self._tls_options_for = tls_options_for
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        host = uri.host.decode("ascii")
        if uri.scheme != b"https":
            raise PolicyError("MTA-STS policies are fetched over HTTPS only")
        return _ResolvedTLSEndpoint(
            *self._args, host, uri.port, self._tls_options_for(host), self._timeout
        )


#: What a failed policy fetch raises: DNS, connection, TLS and HTTP failures.
_FETCH_ERRORS = (
    PolicyError,
    SMTPRoutingError,
    ConnectError,
    OSError,
    SSL.Error,
    ResponseFailed,
    ResponseNeverReceived,
    RequestTransmissionFailed,
)


def _entry(domain: str, result_type: str, error: BaseException) -> TLSReportEntry:
    return TLSReportEntry("sts", domain, result_type, None, f"{type(error).__name__}: {error}")


class MTASTS:
    """
    MTA-STS for direct delivery: finds each domain's policy and keeps it
    until its ``max_age``.  Share one instance between sends so the cache
    is reused.

    :param cache: where policies are kept (a new one by default).
    :param timeout: seconds for the policy fetch, connection included.
    :param tls_options_for: TLS options verifying ``mta-sts.<domain>``'s
        certificate (default: against the system's trust roots).
    :param clock: what tells the time for the cache (default: the reactor
        of each call).
    :param port: the policy server's port (443; tests use others).
    """

    def __init__(
        self,
        *,
        cache: PolicyCache | None = None,
        timeout: float = 30.0,
        tls_options_for: TLSOptionsFor | None = None,
        clock: IReactorTime | None = None,
        port: int = 443,
    ) -> None:
        self.cache = cache if cache is not None else PolicyCache()
        self.timeout = timeout
        self.tls_options_for = tls_options_for or client_tls_options
        self.clock = clock
        self.port = port
        #: How many policy files were fetched (for tests and metrics).
        self.fetches = 0

    async def discover(
        self, domain: str, resolver: IResolver, reactor: Any, dns_timeout: float
    ) -> Discovery:
        """
        The policy that applies to ``domain`` now (section 5.1): the cached
        one while its TXT id is unchanged; otherwise a fresh fetch; when the
        record or the fetch fails, the cached one until it expires.
        """
        now = (self.clock or reactor).seconds()
        cached = self.cache.get(domain, now)
        fallback = cached[0] if cached else None
        try:
            record_id = parse_sts_record(
                await lookup_txt(resolver, f"_mta-sts.{domain}", dns_timeout)
            )
        except SMTPRoutingError as e:
            return Discovery(fallback, (_entry(domain, "sts-policy-fetch-error", e),))
        except PolicyError as e:
            return Discovery(fallback, (_entry(domain, "sts-policy-invalid", e),))
        if record_id is None:
            # No record: a cached policy still holds until max_age.
            return Discovery(fallback)
        if cached is not None and cached[1] == record_id:
            return Discovery(fallback)
        try:
            body = await self._fetch(domain, resolver, reactor)
        except _FETCH_ERRORS as e:
            return Discovery(fallback, (_entry(domain, "sts-policy-fetch-error", e),))
        try:
            policy = parse_policy(body)
        except PolicyError as e:
            return Discovery(fallback, (_entry(domain, "sts-policy-invalid", e),))
        self.cache.put(domain, policy, record_id, now)
        return Discovery(policy)

    async def _fetch(self, domain: str, resolver: IResolver, reactor: Any) -> bytes:
        self.fetches += 1
        agent = Agent.usingEndpointFactory(
            reactor, _Endpoints(reactor, resolver, self.tls_options_for, self.timeout)
        )
        authority = f"mta-sts.{domain}" + ("" if self.port == 443 else f":{self.port}")
        url = f"https://{authority}/.well-known/mta-sts.txt".encode("ascii")
        request = agent.request(b"GET", url, Headers({b"User-Agent": [b"txsmtpclient"]}))
        request.addTimeout(self.timeout, reactor)
        try:
            response: IResponse = await request
        except TimeoutError as e:
            raise PolicyError(f"the policy fetch took over {self.timeout} seconds") from e
        if response.code != 200:
            # Redirects are not followed (section 3.3).
            raise PolicyError(f"the policy server answered HTTP {response.code}")
        length = response.length
        if isinstance(length, int) and length > MAX_POLICY_SIZE:
            raise PolicyError(f"the policy is {length} bytes, over {MAX_POLICY_SIZE}")

        def stop(_: Deferred[bytes]) -> None:
            if capped.transport is not None:
                capped.transport.stopProducing()  # type: ignore[attr-defined]

        body: Deferred[bytes] = Deferred(stop)
        capped = _Capped(MAX_POLICY_SIZE, body)
        response.deliverBody(capped)
        body.addTimeout(self.timeout, reactor)
        try:
            return await body
        except TimeoutError as e:
            raise PolicyError(f"the policy took over {self.timeout} seconds to arrive") from e
