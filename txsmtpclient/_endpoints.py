"""
The one reading of every way a caller names an SMTP server, and the
Twisted client endpoint built from it.

Accepted: an :class:`IStreamClientEndpoint` as it is; a Twisted endpoint
description (``"tcp:mail.example.com:587"``, ``"tls:..."``, ``"unix:/path"``,
``"tcp6:[::1]:25"``); a host name or address with an optional ``":port"``
suffix (smtplib's rule); an IPv6 literal, bracketed or bare.  Host names are
resolved by :class:`HostnameEndpoint`, which never blocks the reactor.

:func:`parse_relay` reads a host (and port) into a :class:`Relay` without a
reactor; :meth:`Relay.endpoint_for` builds the endpoint;
:func:`resolve_endpoint` does both for ``SMTP.connect``.  The client, the
pool, the one-shot helpers and ``twist txsmtp`` all go through here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

from twisted.internet import error
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    clientFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint

from txsmtpclient.commands import check_argument
from txsmtpclient.errors import (
    SMTPArgumentError,
    SMTPException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

__all__ = ["Relay", "connect_error", "parse_address", "parse_relay", "resolve_endpoint"]

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


@dataclass(frozen=True, slots=True)
class Relay:
    """
    An SMTP server as named by a caller, parsed: two spellings of the same
    server give equal values (``Relay("127.0.0.1", 8025)`` for
    ``"127.0.0.1:8025"``, ``("127.0.0.1", 8025)`` and
    ``"tcp:127.0.0.1:8025"``).

    :ivar host: the host name or address (IPv6 without brackets) to connect
        to and to verify certificates against; ``""`` when none is named
        (``unix:``, an endpoint object).
    :ivar port: the port, or ``None`` for the client's default.
    :ivar description: a Twisted endpoint description, for what a host and
        port cannot say (``unix:``, ``tls:``, options such as ``timeout=``).
    :ivar endpoint: an endpoint given as an object.
    """

    host: str = ""
    port: int | None = None
    description: str | None = None
    endpoint: IStreamClientEndpoint | None = None

    @property
    def implicit_tls(self) -> bool:
        """
        Whether the description is TLS itself (``tls:``, ``ssl:``).
        """
        return self.description is not None and _kind(self.description) in ("tls", "ssl")

    def with_default_port(self, default_port: int) -> Relay:
        """
        This relay with ``default_port`` filled in where no port was named
        (to compare two spellings that differ only in leaving it out).
        """
        if self.port is None and self.description is None and self.endpoint is None:
            return replace(self, port=default_port)
        return self

    def __str__(self) -> str:
        if self.endpoint is not None:
            return repr(self.endpoint)
        if self.description is not None:
            return self.description
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def endpoint_for(
        self,
        reactor: Any,
        default_port: int,
        connect_timeout: float | None,
        source_address: tuple[str, int] | None = None,
    ) -> IStreamClientEndpoint:
        """
        The endpoint to connect to.

        :param default_port: the port when none was named.
        :param connect_timeout: seconds for the TCP connection (30 when
            ``None``).
        :param source_address: smtplib's ``(host, port)`` to bind the local
            end of the connection to.
        :raises SMTPArgumentError: for a description Twisted cannot read, or
            a ``source_address`` with an endpoint object or description
            (give ``bindAddress`` in the description instead).
        """
        if source_address is not None and (
            self.endpoint is not None or self.description is not None
        ):
            raise SMTPArgumentError(
                "source_address applies to a host name or address; an endpoint "
                "(or description) binds its own (tcp:...:bindAddress=HOST)"
            )
        if self.endpoint is not None:
            return self.endpoint
        if self.description is not None:
            kind, _, rest = self.description.partition(":")
            if kind.lower() == "unix" and not rest.split(":")[0].removeprefix("path="):
                raise SMTPArgumentError(
                    f"bad endpoint description {self.description!r}: no socket path "
                    "(unix:/run/mail.sock)"
                )
            try:
                endpoint: IStreamClientEndpoint = clientFromString(reactor, self.description)
                return endpoint
            except (ValueError, TypeError, KeyError, IndexError) as e:
                # "TCP4ClientEndpoint.__init__() missing 1 required positional
                # argument: 'port'": Twisted's own names mean nothing to a user.
                reason = re.sub(r"^[\w.]+\(\) ", "", _one_reason(e)) or type(e).__name__
                raise SMTPArgumentError(
                    f"bad endpoint description {self.description!r}: {reason} "
                    "(a description reads like tcp:mail.example.com:587)"
                ) from e
        host = self.host
        port = self.port if self.port is not None else default_port
        timeout = connect_timeout if connect_timeout is not None else 30
        # An address literal needs no name resolution (which HostnameEndpoint
        # would still send through a thread).
        bind = source_address
        if isIPAddress(host):
            return TCP4ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)
        return HostnameEndpoint(reactor, host, port, timeout=timeout, bindAddress=bind)


def _one_reason(error: Exception) -> str:
    """
    An exception's arguments as one line (Twisted raises some with a
    message and a list: "unrecognized keyword arguments present: bogus").
    """
    if len(error.args) == 2 and isinstance(error.args[1], (list, tuple)):
        return f"{error.args[0]}: {', '.join(map(str, error.args[1]))}"
    return str(error)


_FORMS = (
    "a host, host:port, [IPv6]:port, an endpoint description (tcp:, tls:, unix:) or an endpoint"
)


def parse_relay(host: str | IStreamClientEndpoint | Relay, port: int | None = None) -> Relay:
    """
    Read how a caller names a server, without a reactor and without I/O.

    :param host: an endpoint, an endpoint description, ``"host"``,
        ``"host:port"``, ``"[IPv6]:port"``, a bare IPv6 literal, or a
        :class:`Relay` (returned as it is when no ``port`` is given).
    :param port: the port, when ``host`` names a host; overrides a suffix.
    :raises SMTPArgumentError: for control characters, a port that is no
        number from 1 to 65535, stray colons (``"foo:bar:baz"``), or a port
        given with an endpoint.
    :raises TypeError: for a ``host`` of another type.
    """
    if port is not None and (type(port) is not int or not 0 < port < 65536):
        raise SMTPArgumentError(f"port must be an int from 1 to 65535, not {port!r}")
    if isinstance(host, Relay):
        return host if port is None else _with_port(host, port)
    if IStreamClientEndpoint.providedBy(host):
        if port is not None:
            raise SMTPArgumentError("port cannot be given with an endpoint object")
        return Relay(endpoint=host)
    if not isinstance(host, str):
        raise TypeError(f"host must be str or an IStreamClientEndpoint, not {type(host).__name__}")
    check_argument(host, "host")
    if ":" in host and _is_description(host):
        if port is not None:
            raise SMTPArgumentError(
                f"port cannot be given with an endpoint description ({host!r})"
            )
        return _parse_description(host)
    name, suffix = _split_host(host)
    if suffix is not None:
        if not suffix.isdigit():
            # smtplib raises for "host:abc" too ("nonnumeric port").
            raise SMTPArgumentError(f"bad port {suffix!r} in {host!r}: expected {_FORMS}")
        if port is None:
            port = int(suffix)
            if not 0 < port < 65536:
                raise SMTPArgumentError(f"port must be from 1 to 65535, not {port} in {host!r}")
    if not name or any(c.isspace() for c in name):
        raise SMTPArgumentError(f"bad host {host!r}: expected {_FORMS}")
    return Relay(name, port)


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """
    An IP address and port, by :func:`parse_relay`'s rules for a host and
    port, for a server that must be named by its address (a DNS server:
    naming it by a host name would need a lookup first).

    :param text: ``IP``, ``IP:PORT``, ``[IPv6]:PORT``, or a bare IPv6
        literal.
    :param default_port: the port when ``text`` names none.
    :returns: the address (IPv6 without brackets) and the port.
    :raises SMTPArgumentError: for a host name, an endpoint description, or
        what :func:`parse_relay` refuses (a bad port, stray colons).
    """
    forms = "IP, IP:PORT or [IPv6]:PORT"
    if ":" in text and _is_description(text):
        raise SMTPArgumentError(f"expected {forms}, not an endpoint description: {text!r}")
    try:
        relay = parse_relay(text)
    except SMTPArgumentError as e:
        raise SMTPArgumentError(f"expected {forms}: {e}") from None
    if not (isIPAddress(relay.host) or isIPv6Address(relay.host)):
        raise SMTPArgumentError(f"expected {forms}, got {text!r}")
    return relay.host, relay.port if relay.port is not None else default_port


def _with_port(relay: Relay, port: int) -> Relay:
    if relay.description is not None or relay.endpoint is not None:
        raise SMTPArgumentError(f"port cannot be given with {relay}")
    return replace(relay, port=port)


def _split_host(host: str) -> tuple[str, str | None]:
    """
    ``host`` as a name and the text of its port suffix (``None`` for none).

    :raises SMTPArgumentError: for brackets or colons no form explains.
    """
    if host.startswith("["):
        # "[2001:db8::1]" or "[2001:db8::1]:2525".
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or not isIPv6Address(inside) or (rest and not rest.startswith(":")):
            raise SMTPArgumentError(f"bad IPv6 literal in {host!r}: expected {_FORMS}")
        return inside, rest[1:] if rest else None
    colons = host.count(":")
    if colons == 0:
        return host, None
    if colons == 1:
        name, _, suffix = host.partition(":")
        return name, suffix
    if isIPv6Address(host):
        return host, None
    raise SMTPArgumentError(f"bad host {host!r}: expected {_FORMS}")


def _kind(description: str) -> str:
    return description.split(":", 1)[0].lower()


def _split_description(description: str) -> list[str]:
    """
    The arguments of a description, split at colons not escaped with a
    backslash (Twisted's rule), escapes kept.
    """
    parts = [""]
    escaped = False
    for c in description.partition(":")[2]:
        if escaped:
            parts[-1] += c
            escaped = False
        elif c == "\\":
            parts[-1] += c
            escaped = True
        elif c == ":":
            parts.append("")
        else:
            parts[-1] += c
    return parts


def _unescape(text: str) -> str:
    out = []
    escaped = False
    for c in text:
        if c == "\\" and not escaped:
            escaped = True
            continue
        out.append(c)
        escaped = False
    return "".join(out)


def _parse_description(description: str) -> Relay:
    """
    A description's relay.  A bracketed IPv6 host (``"tcp6:[::1]:25"``,
    which Twisted cannot read) is rewritten with escaped colons; a ``tcp:``
    or ``tcp6:`` one naming only a host and a port is that host and port.
    """
    kind = _kind(description)
    if kind not in ("tcp", "tcp6", "tls", "ssl"):
        return Relay(description=description)
    args = _split_description(description)
    if args and args[0].startswith("[") and not args[0].startswith("[\\"):
        # "[", "", "1]", "25" for "[::1]:25": join up to the closing bracket.
        for end, part in enumerate(args):
            if part.endswith("]"):
                address = ":".join(args[: end + 1])[1:-1]
                break
        else:
            raise SMTPArgumentError(f"bad IPv6 literal in {description!r}")
        if not isIPv6Address(address):
            raise SMTPArgumentError(f"bad IPv6 literal in {description!r}")
        args = [address.replace(":", "\\:"), *args[end + 1 :]]
    positional = [a for a in args if "=" not in a]
    keywords = dict(a.split("=", 1) for a in args if a not in positional)
    host = _unescape(keywords.get("host", positional[0] if positional else ""))
    port_text = keywords.get("port", positional[1] if len(positional) > 1 else "")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    rest = set(keywords) - {"host", "port"}
    if (
        kind in ("tcp", "tcp6")
        and not rest
        and len(positional) <= 2
        and port_text.isdigit()
        and 0 < int(port_text) < 65536
        and host
        and (kind == "tcp" or isIPv6Address(host))
    ):
        return Relay(host, int(port_text))
    return Relay(host, None, f"{description.partition(':')[0]}:" + ":".join(args))


def resolve_endpoint(
    reactor: Any,
    host: str | IStreamClientEndpoint,
    port: int | None,
    default_port: int,
    connect_timeout: float | None,
    tls: Callable[[str], IOpenSSLClientConnectionCreator] | None = None,
    source_address: tuple[str, int] | None = None,
) -> tuple[IStreamClientEndpoint, str]:
    """
    Build the endpoint to connect to (:func:`parse_relay`, then
    :meth:`Relay.endpoint_for`).

    :param host: as for :func:`parse_relay`.
    :param port: the port, when ``host`` names a host; overrides a suffix.
    :param default_port: used when neither gives a port.
    :param connect_timeout: seconds for the TCP connection.
    :param tls: for implicit TLS (port 465): called with the host name
        parsed here (``""`` when there is none) for the TLS options to wrap
        the endpoint in; ``tls:``/``ssl:`` descriptions are TLS already.
    :param source_address: the local ``(host, port)`` to bind to.
    :returns: the endpoint and the host name to show and to verify
        certificates against (``""`` for endpoints given as objects).
    :raises SMTPArgumentError: as :func:`parse_relay` and
        :meth:`Relay.endpoint_for`.
    :raises TypeError: for a ``host`` of another type.
    """
    relay = parse_relay(host, port)
    endpoint = relay.endpoint_for(reactor, default_port, connect_timeout, source_address)
    if tls is not None and not relay.implicit_tls:
        endpoint = wrapClientTLS(tls(relay.host), endpoint)
    return endpoint, relay.host


def connect_error(failure: BaseException, relay: object) -> BaseException:
    """
    What a failed connection attempt is reported as: the errors a
    connection attempt meets (refused, unreachable, no such host, a TCP
    timeout, a missing socket file) become :class:`SMTPServerDisconnected`
    (temporary) naming the relay, with the original as ``__cause__``;
    cancellation, our own errors and anything else are left as they are.
    """
    if isinstance(failure, (SMTPException, CancelledError, error.ConnectingCancelledError)):
        return failure
    if isinstance(failure, error.TimeoutError):
        timeout = SMTPTimeoutError(f"connecting to {relay} timed out: {failure}", "connect")
        timeout.__cause__ = failure
        return timeout
    if isinstance(failure, (error.ConnectError, error.DNSLookupError, OSError)):
        what = "no such host" if isinstance(failure, error.DNSLookupError) else "failed"
        wrapped = SMTPServerDisconnected(f"connecting to {relay} {what}: {failure}")
        wrapped.__cause__ = failure
        return wrapped
    return failure
