"""
Putting the control plane together: checking ``--control-port`` and
``--control-token-file`` before anything starts, and building the site
(``/v1/`` API, ``/metrics``) and its listening service.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService

from txsmtpclient.control._web import DEFAULT_MAX_BODY, ControlRoot, ControlSite, ExactPath
from txsmtpclient.control.api import ApiResource
from txsmtpclient.control.metrics import DaemonMetrics, PoolGauges
from txsmtpclient.control.openapi import openapi_spec
from txsmtpclient.spool.service import SpoolService

__all__ = [
    "ControlPortError",
    "ListenPlan",
    "check_control_port",
    "control_service",
    "make_site",
    "read_token",
]


class ControlPortError(ValueError):
    """
    A control port description or token that must not or cannot be used;
    the message is one line for the operator.
    """


@dataclass(frozen=True, slots=True)
class ListenPlan:
    """
    A checked control port.

    :ivar description: the endpoint description to listen on (a bare port
        made loopback TCP; a Unix socket given mode 600 unless it says).
    :ivar local: whether only this machine can connect (loopback or a Unix
        socket).
    :ivar tls: whether it is ``ssl:``.
    """

    description: str
    local: bool
    tls: bool


def check_control_port(description: str, *, has_token: bool) -> ListenPlan:
    """
    Check a ``--control-port`` value before the daemon starts, as Twisted
    reads it (:func:`~txsmtpclient._listen.read_description`, the reading
    it will listen by).

    ``8025`` means ``tcp:8025:interface=127.0.0.1``.  A TCP or SSL port must
    name a loopback interface unless a token is set (Twisted's default, no
    interface, is every one); other endpoint types need a token too.  A
    Unix socket is local; it is made mode 600 unless the description gives
    a mode.  An ``ssl:`` port must name readable key and certificate files.

    :returns: the plan to listen by.
    :raises ControlPortError: with a one-line reason.
    """
    from txsmtpclient._listen import DescriptionError, read_description

    text = description.strip()
    if text.isdigit():
        text = f"tcp:{text}:interface=127.0.0.1"
    kind = text.partition(":")[0].lower()
    if kind == "tls":
        # Twisted's tls: server reads a folder of PEM files and listens on
        # port 443 of every interface unless told: "tls:8025" is a trap.
        raise ControlPortError(
            f"{description!r}: for TLS write ssl:PORT:privateKey=KEY.pem:certKey=CERT.pem"
        )
    try:
        target = read_description(text)
        if target.kind == "unix":
            # A mode given anywhere in the description wins over this one.
            default_mode = read_description(f"unix:mode=600:{text.partition(':')[2]}")
    except DescriptionError as e:
        raise ControlPortError(f"{description!r}: {e}") from None
    if target.kind == "tcp":
        if not 0 <= target.port <= 65535:
            raise ControlPortError(f"{description!r} needs a port number 0-65535 after {kind}:")
        try:
            local = ipaddress.ip_address(target.interface).is_loopback
        except ValueError:
            local = False
    elif target.kind == "unix":
        if not target.path:
            raise ControlPortError(f"{description!r} needs a socket path after unix:")
        local = True
        if default_mode.mode != target.mode:
            # No mode given: Twisted's default is 666, and any local user
            # could steer the daemon.
            text += ":mode=600"
    else:
        local = False
    if not local and not has_token:
        raise ControlPortError(
            f"{description!r} is reachable from other machines: give "
            "--control-token-file FILE, or listen on 127.0.0.1 or a Unix socket"
        )
    return ListenPlan(text, local, target.tls)


def read_token(path: str) -> bytes:
    """
    The bearer token: the first line of a file.

    :raises ControlPortError: if the file cannot be read, its first line is
        empty, or it is not printable ASCII.
    """
    try:
        with open(path, "rb") as f:
            token = f.readline().rstrip(b"\r\n").strip()
    except OSError as e:
        raise ControlPortError(f"cannot read {path}: {e.strerror}") from e
    if not token:
        raise ControlPortError(f"{path} holds no token on its first line")
    if not all(0x21 <= b <= 0x7E for b in token):
        raise ControlPortError(f"{path}: the token must be printable ASCII without spaces")
    return token


def make_site(
    service: SpoolService,
    *,
    token: bytes | None,
    metrics: DaemonMetrics | None = None,
    pool: PoolGauges | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> ControlSite:
    """
    The control plane's site: ``/v1/`` (the API) and ``/metrics``, behind the
    token when one is given.

    :param service: the spool service to inspect and steer.
    :param token: the bearer token every request must carry, or ``None``.
    :param metrics: the metrics to serve (made, and set as the service's
        observer, if ``None``); their gauges watch ``service`` and ``pool``.
    :param pool: the connection pool, for its gauges.
    :param max_body: the largest request body, in bytes (413 beyond).
    """
    if metrics is None:
        metrics = DaemonMetrics()
        service.observer = metrics
    metrics.watch(service, pool)
    root = ControlRoot(token)
    root.putChild(b"v1", ApiResource(service, openapi_spec()))
    root.putChild(b"metrics", ExactPath(metrics.resource()))
    return ControlSite(root, max_body=max_body)


def control_service(plan: ListenPlan, site: ControlSite, *, reactor: Any = None) -> IService:
    """
    The service listening on the plan's endpoint, named ``"control"``: a
    :class:`~txsmtpclient._listen.ListeningService`, so a port that cannot
    be listened on (in use, not permitted, a socket in a missing folder)
    raises a one-line ``StartupError`` when it starts.

    :param reactor: where to listen; the global reactor by default.
    :raises ControlPortError: if Twisted cannot build the endpoint (an
        unknown type, a bad argument, an unloadable certificate).
    """
    from twisted.internet.endpoints import serverFromString

    from txsmtpclient._listen import ListeningService

    if reactor is None:
        from twisted.internet import reactor
    try:
        endpoint = serverFromString(reactor, plan.description)
    except Exception as e:
        raise ControlPortError(f"{plan.description!r}: {e}") from e
    listening = ListeningService(
        endpoint, site, option="--control-port", description=plan.description
    )
    listening.setName("control")  # type: ignore[no-untyped-call]
    return listening
