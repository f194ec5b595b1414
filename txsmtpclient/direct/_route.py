"""
Where a recipient's mail goes (RFC 5321 section 5.1), without I/O: the
recipients grouped by domain, the MX records put in the order to try them,
null MX (RFC 7505) and implicit MX recognised, and the caps that keep a
hostile resolver's answer from steering us.

Sans-IO: values in, values or :class:`~txsmtpclient.errors.SMTPRoutingError`
out; nothing here imports Twisted.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from txsmtpclient.errors import SMTPRoutingError

__all__ = [
    "MAX_ADDRESSES_PER_HOST",
    "MAX_CNAME_CHAIN",
    "MAX_MX_HOSTS",
    "Destination",
    "group_by_domain",
    "order_mx",
]

#: MX hosts tried for one domain at most (Postfix: ``smtp_mx_session_limit``
#: and ``smtp_mx_address_limit`` bound the same thing).
MAX_MX_HOSTS = 10
#: Addresses tried for one MX host at most.
MAX_ADDRESSES_PER_HOST = 4
#: CNAMEs followed at most before a name is given up as a loop.
MAX_CNAME_CHAIN = 8
#: MX records read from one answer at most; the rest are ignored.
MAX_MX_RECORDS = 64
#: A domain name is at most 253 characters (RFC 1035 section 2.3.4).
MAX_NAME = 253


@dataclass(frozen=True, slots=True)
class Destination:
    """
    One domain's share of a message.

    :ivar domain: the domain as the addresses spell it, lower-cased.
    :ivar lookup: the name to look up: the domain in IDNA (A-label) form;
        ``None`` for an address literal.
    :ivar literal: the IP address of an address literal (``user@[192.0.2.1]``),
        delivered to directly with no MX lookup.
    :ivar recipients: the addresses for this domain, in the caller's order.
    """

    domain: str
    lookup: str | None
    literal: str | None
    recipients: tuple[str, ...]


def _domain_of(address: str) -> str:
    at = address.rfind("@")
    if at < 0 or at == len(address) - 1:
        raise SMTPRoutingError(
            f"recipient {address!r} has no domain: direct delivery needs user@domain",
            temporary=False,
        )
    return address[at + 1 :].lower()


def _literal(domain: str) -> str | None:
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    text = domain[1:-1]
    if text.lower().startswith("ipv6:"):
        text = text[5:]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SMTPRoutingError(
            f"{domain!r} is not an IPv4 or IPv6 address literal (RFC 5321 section 4.1.3)",
            temporary=False,
        ) from None


def lookup_name(domain: str) -> str:
    """
    The name to query for ``domain``: IDNA-encoded, without a trailing dot.

    :raises SMTPRoutingError: (permanent) for a name that cannot be a domain.
    """
    name = domain.rstrip(".")
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError as e:
        raise SMTPRoutingError(
            f"{domain!r} is not a valid domain name: {e}", temporary=False
        ) from e
    labels = ascii_name.split(".")
    if not ascii_name or len(ascii_name) > MAX_NAME or any(not 0 < len(x) < 64 for x in labels):
        raise SMTPRoutingError(f"{domain!r} is not a valid domain name", temporary=False)
    return ascii_name.lower()


def group_by_domain(recipients: Iterable[str]) -> list[Destination]:
    """
    The recipients grouped by domain, domains in order of first appearance.

    :raises SMTPRoutingError: (permanent) for an address with no domain, a
        bad address literal or a name that cannot be a domain.
    """
    groups: dict[str, list[str]] = {}
    for address in recipients:
        groups.setdefault(_domain_of(address), []).append(address)
    destinations = []
    for domain, addresses in groups.items():
        literal = _literal(domain)
        lookup = None if literal is not None else lookup_name(domain)
        destinations.append(Destination(domain, lookup, literal, tuple(addresses)))
    return destinations


def order_mx(
    records: Sequence[tuple[int, str]], domain: str, rng: random.Random | None = None
) -> list[str]:
    """
    The MX hosts to try, in order: by preference, shuffled among equal
    preferences (RFC 5321 section 5.1), duplicates dropped, at most
    :data:`MAX_MX_HOSTS`.

    :param records: ``(preference, exchange)`` pairs as the resolver gave them.
    :param domain: the domain, for error messages.
    :returns: the exchange names; empty when there are no records (the
        caller falls back to the implicit MX, the domain itself).
    :raises SMTPRoutingError: (permanent) for a null MX (RFC 7505 section
        3.2), or when every record names an invalid host.
    """
    rng = rng or random.SystemRandom()
    kept = list(records[:MAX_MX_RECORDS])
    if any(exchange.strip(".") == "" for _, exchange in kept):
        # RFC 7505 section 3: a domain with a null MX accepts no mail; any
        # other MX beside it is an error on its side, and mail still isn't sent.
        raise SMTPRoutingError(
            f"556 5.1.10 {domain} publishes a null MX: it accepts no mail (RFC 7505)",
            temporary=False,
        )
    by_preference: dict[int, list[str]] = {}
    for preference, exchange in kept:
        try:
            name = lookup_name(exchange)
        except SMTPRoutingError:
            continue
        by_preference.setdefault(preference, []).append(name)
    if kept and not by_preference:
        raise SMTPRoutingError(
            f"every MX record of {domain} names an invalid host", temporary=False
        )
    ordered: list[str] = []
    for preference in sorted(by_preference):
        hosts = by_preference[preference]
        rng.shuffle(hosts)
        ordered.extend(h for h in hosts if h not in ordered)
    return ordered[:MAX_MX_HOSTS]
