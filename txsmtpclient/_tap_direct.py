"""
``twist txsmtp --direct``: the options and the wiring of the daemon's
direct mode, where each message goes straight to its recipient domains'
mail hosts (:class:`~txsmtpclient.direct._sender.DirectSender`) instead of
through a relay.  :mod:`txsmtpclient.tap` appends these options to its own
and calls :func:`direct_settings` and :func:`direct_sender`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.python import usage

from txsmtpclient._endpoints import parse_address
from txsmtpclient.errors import SMTPArgumentError

__all__ = [
    "DIRECT_DEFAULTS",
    "DIRECT_FLAGS",
    "DIRECT_PARAMETERS",
    "direct_sender",
    "direct_settings",
]

#: The direct mode's defaults, as they would be written on the command line.
DIRECT_DEFAULTS: Mapping[str, str] = {
    "mx-port": "25",
    # Postfix's default_destination_concurrency_limit.
    "destination-concurrency": "20",
    "destination-backoff": "1m,30m",
}

DIRECT_PARAMETERS: list[list[Any]] = [
    [
        "dns-server",
        None,
        None,
        "With --direct: the DNS server to ask, IP[:PORT] or [IPv6]:PORT "
        "[default: the system's resolvers]",
    ],
    [
        "dane-resolver",
        None,
        None,
        "With --direct: check DANE (RFC 7672) through this local validating "
        "resolver, a loopback IP[:PORT] such as 127.0.0.1:53 [default: no DANE]",
    ],
    [
        "mx-port",
        None,
        None,
        f"With --direct: the SMTP port of mail hosts [default: {DIRECT_DEFAULTS['mx-port']}]",
    ],
    [
        "destination-concurrency",
        None,
        None,
        "With --direct: the most sessions at once to one recipient domain "
        f"[default: {DIRECT_DEFAULTS['destination-concurrency']}]",
    ],
    [
        "destination-backoff",
        None,
        None,
        "With --direct: how long a domain that answered 421 or 4.7.x, or could "
        "not be reached, rests: INITIAL,MAXIMUM[,FACTOR] "
        f"[default: {DIRECT_DEFAULTS['destination-backoff']}]",
    ],
]

DIRECT_FLAGS: list[list[Any]] = [
    [
        "direct",
        None,
        "Deliver straight to each recipient domain's mail hosts (MX records), "
        "instead of through --relay [default: off: through --relay, which is "
        "localhost:25 when not given]",
    ],
    ["no-mta-sts", None, "With --direct: ignore MTA-STS policies (RFC 8461)"],
]


def _address(option: str, text: str, default_port: int) -> tuple[str, int]:
    """
    ``IP``, ``IP:PORT`` or ``[IPv6]:PORT``, read by the client's one host
    parser (:func:`~txsmtpclient._endpoints.parse_address`).

    :raises usage.UsageError: for anything else.
    """
    try:
        return parse_address(text.strip(), default_port)
    except SMTPArgumentError as e:
        raise usage.UsageError(f"--{option}: {e}") from None


def direct_settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """
    The direct mode's typed settings from the option values (command line
    over config file): ``direct`` and, with it, ``dns_server``,
    ``dane_resolver``, ``mta_sts``, ``mx_port``, ``destination_concurrency``
    and ``destination_backoff``.

    :raises usage.UsageError: for ``--direct`` with ``--relay`` or AUTH
        options, or a bad value.
    """
    # Imported here: the options module imports this one.
    from txsmtpclient._tapconfig import _backoff, _flag, _whole
    from txsmtpclient.direct._gate import Backoff

    direct = _flag("direct", given.get("direct", False))
    settings: dict[str, Any] = {"direct": direct}
    if not direct:
        return settings
    if given.get("relay") is not None:
        raise usage.UsageError("--direct and --relay exclude each other: give one of them")
    if given.get("auth-user") is not None:
        raise usage.UsageError(
            "--auth-user is for a relay; --direct sends to MX hosts without AUTH"
        )

    def text(key: str) -> str:
        return str(given.get(key, DIRECT_DEFAULTS.get(key, "")))

    dns_server = given.get("dns-server")
    settings["dns_server"] = (
        _address("dns-server", str(dns_server), 53) if dns_server is not None else None
    )
    dane = given.get("dane-resolver")
    settings["dane_resolver"] = (
        _address("dane-resolver", str(dane), 53) if dane is not None else None
    )
    if (
        settings["dane_resolver"]
        and not ipaddress.ip_address(settings["dane_resolver"][0]).is_loopback
    ):
        raise usage.UsageError(
            "--dane-resolver must be on loopback: the AD bit can only be trusted "
            "from a local validating resolver"
        )
    settings["mta_sts"] = not _flag("no-mta-sts", given.get("no-mta-sts", False))
    settings["mx_port"] = _whole("mx-port", text("mx-port"), 1, 65535)
    settings["destination_concurrency"] = _whole(
        "destination-concurrency", text("destination-concurrency"), 1, 1000
    )
    initial, maximum, factor = _backoff("destination-backoff", text("destination-backoff"))
    try:
        settings["destination_backoff"] = Backoff(initial, maximum, factor)
    except ValueError as e:
        raise usage.UsageError(f"--destination-backoff: {e}") from e
    return settings


def _trust(path: str) -> Callable[[str], IOpenSSLClientConnectionCreator]:
    from twisted.internet.ssl import optionsForClientTLS

    from txsmtpclient._tapconfig import load_ca

    ca = load_ca(path)
    return lambda host: optionsForClientTLS(host, trustRoot=ca)


def direct_sender(
    settings: Mapping[str, Any],
    *,
    reactor: Any,
    clock: IReactorTime,
    on_tls_report: Callable[[Any], None] | None = None,
    on_backoff: Callable[[str, float, str], None] | None = None,
) -> tuple[Any, Callable[[], Any], str]:
    """
    The direct mode's sender for the spool service.

    :param settings: :func:`direct_settings`' keys and ``tls``, ``tls_ca``.
    :param reactor: where connections and DNS queries run.
    :param clock: the time of the per-destination backoff and the MTA-STS
        cache.
    :param on_tls_report: called with each TLSRPT-shaped failure record
        (a :class:`~txsmtpclient.direct.TLSReportEntry`), after it is logged:
        the seam for a metrics counter.
    :param on_backoff: called with the destination, the seconds it rests and
        the reason, each time a destination is backed off: likewise.
    :returns: the sender, its close function and the name the records and
        logs give it (``"direct"``).
    :raises usage.UsageError: for an unreadable ``--tls-ca`` file.
    """
    from twisted.names import client

    from txsmtpclient.direct import DANE, MTASTS
    from txsmtpclient.direct._gate import Destinations
    from txsmtpclient.direct._sender import DirectSender

    tls_options_for = _trust(settings["tls_ca"]) if settings.get("tls_ca") else None
    resolver = None
    if settings["dns_server"] is not None:
        resolver = client.Resolver(servers=[settings["dns_server"]], reactor=reactor)
    dane = DANE(settings["dane_resolver"]) if settings["dane_resolver"] is not None else None
    # One MTA-STS cache for the daemon's lifetime.
    mta_sts = MTASTS(tls_options_for=tls_options_for, clock=clock) if settings["mta_sts"] else None
    destinations = Destinations(
        clock,
        concurrency=settings["destination_concurrency"],
        backoff=settings["destination_backoff"],
        on_backoff=on_backoff,
    )
    sender = DirectSender(
        destinations,
        resolver=resolver,
        reactor=reactor,
        port=settings["mx_port"],
        tls=settings["tls"],
        mta_sts=mta_sts,
        tls_options_for=tls_options_for,
        dane=dane,
        on_tls_report=on_tls_report,
    )
    return sender, sender.close, "direct"
