"""
Turning what a caller calls a host into a Twisted client endpoint.

Accepted: an :class:`IStreamClientEndpoint` as it is; a Twisted endpoint
description (``"tcp:mail.example.com:587"``, ``"tls:..."``, ``"unix:/path"``);
a host name or address with an optional ``":port"`` suffix (smtplib's rule);
an IPv6 literal, bracketed or bare.  Host names are resolved by
:class:`HostnameEndpoint`, which never blocks the reactor.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint

from txsmtpclient.commands import check_argument

__all__ = ["resolve_endpoint"]

_BUILTIN_TYPES = frozenset({"tcp", "tcp6", "ssl", "tls", "unix"})


@cache
def _plugin_types() -> frozenset[str]:
    """
    Endpoint types that plugins add (looked up once: scanning plugins is slow).
    """
    from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
    from twisted.plugin import getPlugins

    return frozenset(
        parser.prefix.lower()
        for parser in getPlugins(IStreamClientEndpointStringParserWithReactor)
    )


def _is_description(host: str) -> bool:
    prefix = host.split(":", 1)[0].lower()
    return prefix in _BUILTIN_TYPES or (prefix.isidentifier() and prefix in _plugin_types())


def _description_host(description: str) -> str:
    """
    The host a ``tcp:``/``tls:``/``ssl:`` description names (positionally or
    as ``host=``), for certificate checks after STARTTLS; ``""`` otherwise.
    """
    kind, _, rest = description.partition(":")
    if kind.lower() not in ("tcp", "tcp6", "tls", "ssl"):
        return ""
    positional = []
    for part in rest.split(":"):
        key, eq, value = part.partition("=")
        if eq and key == "host":
            return value
        if not eq:
            positional.append(part)
    return positional[0] if positional else ""


def resolve_endpoint(
    reactor: Any,
    host: str | IStreamClientEndpoint,
    port: int | None,
    default_port: int,
    connect_timeout: float | None,
    tls: Callable[[str], IOpenSSLClientConnectionCreator] | None = None,
) -> tuple[IStreamClientEndpoint, str]:
    """
    Build the endpoint to connect to.

    :param host: an endpoint, an endpoint description, ``"host"``,
        ``"host:port"`` or an IPv6 literal.
    :param port: the port, when ``host`` names a host; overrides a suffix.
    :param default_port: used when neither gives a port.
    :param connect_timeout: seconds for the TCP connection.
    :param tls: for implicit TLS (port 465): called with the host name
        parsed here (``""`` when there is none) for the TLS options to wrap
        the endpoint in; ``tls:``/``ssl:`` descriptions are TLS already.
    :returns: the endpoint and the host name to show and to verify
        certificates against (``""`` for endpoints given as objects).
    :raises SMTPArgumentError: for control characters in ``host``.
    :raises ValueError: for a port out of range or a bad description.
    :raises TypeError: for a ``host`` of another type.
    """
    endpoint, name = _parse(reactor, host, port, default_port, connect_timeout)
    is_tls_description = isinstance(host, str) and host.split(":", 1)[0].lower() in ("tls", "ssl")
    if tls is not None and not is_tls_description:
        endpoint = wrapClientTLS(tls(name), endpoint)
    return endpoint, name


def _parse(
    reactor: Any,
    host: str | IStreamClientEndpoint,
    port: int | None,
    default_port: int,
    connect_timeout: float | None,
) -> tuple[IStreamClientEndpoint, str]:
    if IStreamClientEndpoint.providedBy(host):
        return host, ""
    if not isinstance(host, str):
        raise TypeError(f"host must be str or an IStreamClientEndpoint, not {type(host).__name__}")
    check_argument(host, "host")
    if port is None and host.startswith("[") and "]:" in host:
        # "[2001:db8::1]:2525": a bracketed IPv6 literal with a port.
        name, _, suffix = host.partition("]:")
        if not suffix.isdigit():
            raise ValueError(f"bad port {suffix!r} in {host!r}")
        host, port = name + "]", int(suffix)
    elif port is None and host.count(":") == 1:
        name, _, suffix = host.partition(":")
        if suffix.isdigit():
            host, port = name, int(suffix)
        elif not _is_description(host):
            # smtplib raises for "host:abc" too ("nonnumeric port").
            raise ValueError(f"bad port {suffix!r} in {host!r}")
    if ":" in host and _is_description(host):
        return clientFromString(reactor, host), _description_host(host)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host and not isIPv6Address(host):
        # "foo:bar:baz": neither host:port, an IPv6 literal nor a description.
        raise ValueError(
            f"too many colons in {host!r} for host:port (an IPv6 address? [2001:db8::1]:25)"
        )
    if port is None:
        port = default_port
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an int from 1 to 65535, not {port!r}")
    timeout = connect_timeout if connect_timeout is not None else 30
    endpoint: IStreamClientEndpoint
    # An address literal needs no name resolution (which HostnameEndpoint
    # would still send through a thread).
    if isIPAddress(host):
        endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
    elif isIPv6Address(host):
        endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
    else:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    return endpoint, host
