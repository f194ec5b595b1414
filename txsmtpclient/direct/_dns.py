"""
The DNS look-ups of direct delivery, through ``twisted.names`` (never the
blocking system resolver): MX records, and the A and AAAA records of each
mail host.  Answers are untrusted input: CNAME chains are bounded, record
counts capped, every query has a timeout, and failures are sorted into
permanent (the name does not exist) and temporary (SERVFAIL, timeout).
"""

from __future__ import annotations

import functools
import ipaddress
import math
import socket
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, DeferredList, TimeoutError
from twisted.internet.error import TimeoutError as InternetTimeoutError
from twisted.internet.interfaces import IResolver
from twisted.names import dns, error
from twisted.names.client import createResolver
from twisted.python.failure import Failure

from txsmtpclient.direct._route import MAX_ADDRESSES_PER_HOST, MAX_CNAME_CHAIN, MAX_MX_RECORDS
from txsmtpclient.errors import SMTPRoutingError

__all__ = ["default_resolver", "lookup_addresses", "lookup_mx", "lookup_txt"]

#: Failures that say nothing about the name: try again later.
_TEMPORARY = (
    error.DNSServerError,
    error.DNSQueryRefusedError,
    error.DNSUnknownError,
    error.DNSFormatError,
    error.DNSNotImplementedError,
    error.DNSQueryTimeoutError,
    TimeoutError,
    InternetTimeoutError,
)


@functools.cache
def default_resolver() -> IResolver:
    """
    The system's resolvers from ``/etc/resolv.conf`` and ``/etc/hosts``,
    queried asynchronously by ``twisted.names`` on the global reactor; made
    once (it reads ``resolv.conf`` and re-reads it on a timer).
    """
    resolver: IResolver = createResolver()
    return resolver


def _owner(record: dns.RRHeader) -> str:
    return str(record.name).lower().rstrip(".")


def _follow(answers: Sequence[dns.RRHeader], name: str, kind: int) -> tuple[str, list[Any]]:
    """
    Follow CNAMEs from ``name`` within one answer (at most
    :data:`MAX_CNAME_CHAIN`), and return the name reached with its records
    of type ``kind``.

    :raises SMTPRoutingError: (temporary) for a CNAME loop or a chain too long.
    """
    cnames = {
        _owner(r): str(r.payload.name).lower().rstrip(".")  # type: ignore[union-attr]
        for r in answers
        if r.type == dns.CNAME
    }
    seen = {name}
    for _ in range(MAX_CNAME_CHAIN):
        target = cnames.get(name)
        if target is None:
            break
        if target in seen:
            raise SMTPRoutingError(f"CNAME loop at {name}", temporary=True)
        seen.add(target)
        name = target
    else:
        if name in cnames:
            raise SMTPRoutingError(f"CNAME chain too long at {name}", temporary=True)
    return name, [r.payload for r in answers if r.type == kind and _owner(r) == name]


async def _query(
    resolver: IResolver, name: str, kind: int, timeout: float
) -> tuple[bool, list[Any]]:
    """
    The records of type ``kind`` at ``name``, CNAMEs followed.

    :returns: ``(exists, records)``: ``exists`` is false for NXDOMAIN.
    :raises SMTPRoutingError: (temporary) for SERVFAIL, a timeout or a
        refused query.
    """
    for _ in range(MAX_CNAME_CHAIN):
        try:
            result: Any = await resolver.query(
                dns.Query(name, kind, dns.IN), timeout=(max(1, math.ceil(timeout)),)
            )
        except error.DNSNameError:
            return False, []
        except _TEMPORARY as e:
            raise SMTPRoutingError(
                f"DNS lookup of {dns.QUERY_TYPES.get(kind, kind)} {name} failed: {e!r}",
                temporary=True,
            ) from e
        answers: list[dns.RRHeader] = result[0]
        reached, records = _follow(answers, name, kind)
        if records or reached == name:
            return True, records
        # The answer stopped at a CNAME whose target it did not include.
        name = reached
    raise SMTPRoutingError(f"CNAME chain too long at {name}", temporary=True)


async def lookup_mx(resolver: IResolver, name: str, timeout: float) -> list[tuple[int, str]]:
    """
    ``name``'s MX records as ``(preference, exchange)`` pairs (the exchange
    ``""`` for a null MX), at most :data:`MAX_MX_RECORDS`.

    :returns: an empty list when the domain exists with no MX (implicit MX).
    :raises SMTPRoutingError: permanent when the domain does not exist,
        temporary when the lookup failed.
    """
    exists, records = await _query(resolver, name, dns.MX, timeout)
    if not exists:
        raise SMTPRoutingError(f"550 5.1.2 domain {name} does not exist", temporary=False)
    return [(int(r.preference), str(r.name).rstrip(".")) for r in records[:MAX_MX_RECORDS]]


async def lookup_addresses(resolver: IResolver, host: str, timeout: float) -> list[str]:
    """
    ``host``'s IPv6 and IPv4 addresses, interleaved IPv6 first (RFC 8305's
    order), at most :data:`MAX_ADDRESSES_PER_HOST`.

    :returns: an empty list when the host has none or does not exist.
    :raises SMTPRoutingError: (temporary) when a look-up failed and the
        other found nothing.
    """
    results = await DeferredList(
        [
            Deferred.fromCoroutine(_query(resolver, host, dns.AAAA, timeout)),
            Deferred.fromCoroutine(_query(resolver, host, dns.A, timeout)),
        ],
        consumeErrors=True,
    )
    lists: list[list[str]] = []
    failures: list[Failure] = []
    for _ok, value in results:
        if isinstance(value, Failure):
            failures.append(value)
            lists.append([])
        else:
            lists.append([a for a in map(_address, value[1]) if a is not None])
    for failure in failures:
        if failure.check(CancelledError):
            # The caller gave up: no answer, whatever the other look-up found.
            failure.raiseException()
    if failures and not any(lists):
        # A failed look-up with nothing from the other is no proof that
        # the host has no address: try again later, never bounce.
        failures[0].raiseException()
    six, four = lists
    merged: list[str] = []
    for i in range(max(len(six), len(four))):
        merged.extend(group[i] for group in (six, four) if i < len(group))
    return merged[:MAX_ADDRESSES_PER_HOST]


def _address(record: Any) -> str | None:
    family = socket.AF_INET6 if isinstance(record, dns.Record_AAAA) else socket.AF_INET
    try:
        return str(ipaddress.ip_address(socket.inet_ntop(family, record.address)))
    except (ValueError, OSError):
        return None


async def lookup_txt(resolver: IResolver, name: str, timeout: float) -> list[str]:
    """
    ``name``'s TXT records, each record's strings joined (RFC 7208 section
    3.3's rule, which MTA-STS follows); empty when there are none.

    :raises SMTPRoutingError: (temporary) when the lookup failed.
    """
    _exists, records = await _query(resolver, name, dns.TXT, timeout)
    return [b"".join(r.data).decode("utf-8", "replace") for r in records[:MAX_MX_RECORDS]]
