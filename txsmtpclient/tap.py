"""
``twist txsmtp``: the sending daemon's command line and service.

:class:`Options` reads the command line (and a config file);
:func:`makeService` builds a :class:`~twisted.application.service.MultiService`
holding the :class:`~txsmtpclient.spool.service.SpoolService` (named
``"spool"``) and, when asked, the HTTP control plane (named ``"control"``,
see :mod:`txsmtpclient.control`) and the older status endpoint (named
``"status"``).  Any Twisted application can embed the same service::

    from txsmtpclient.tap import Options, makeService
    options = Options()
    options.parseOptions(["--relay", "mail.example.com:587", "--tls", "required"])
    makeService(options).setServiceParent(application)
"""

from __future__ import annotations

import configparser
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import tomllib
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python import usage
from twisted.web.server import Site

from txsmtpclient._dkimtap import DKIMOptions, dkim_keys, signing_sender
from txsmtpclient._listen import ListeningService
from txsmtpclient._tap_direct import (
    DIRECT_FLAGS,
    DIRECT_PARAMETERS,
    direct_sender,
)
from txsmtpclient._tapconfig import (
    _PASSWORD_REFUSED,
    _TLS_POLICIES,
    DEFAULTS,
    StartupError,
    _relay,
    _tls_options,
    check_startup,
    exit_for,
    in_flight,
)
from txsmtpclient._tapconfig import IN_FLIGHT_PER_CONNECTION as IN_FLIGHT_PER_CONNECTION
from txsmtpclient._tapconfig import _flag as _flag
from txsmtpclient._tapconfig import _settings as _settings
from txsmtpclient._tapconfig import read_password as read_password
from txsmtpclient.client import SMTP
from txsmtpclient.pool import SMTPConnectionPool
from txsmtpclient.spool.delivery import AMBIGUOUS_POLICIES, Sender
from txsmtpclient.spool.postgres_tap import check_queue, queue_service
from txsmtpclient.spool.sendmail import EX_NOINPUT, reader_gone
from txsmtpclient.spool.service import SetAsideReporter, SpoolService, StatusResource
from txsmtpclient.spool.store import Spool

if TYPE_CHECKING:
    from txsmtpclient.control.metrics import DaemonMetrics
    from txsmtpclient.control.server import ListenPlan

__all__ = ["DEFAULTS", "Options", "StartupError", "makeService"]

_log = Logger(namespace="txsmtpclient.tap")


class Options(DKIMOptions, usage.Options):
    """
    The options of ``twist txsmtp``.  After :meth:`parseOptions`, the typed
    values are in :attr:`settings`.
    """

    synopsis = "[options]"
    longdesc = (
        "Send the mail queued in a spool folder through a relay: due messages "
        "are sent, scheduled ones when their time comes, temporary failures "
        "retried with backoff until the maximum queue lifetime.  Queue mail "
        "with 'python -m txsmtpclient enqueue' or its sendmail(1) entry point. "
        "Durations take units: 90s, 10m, 2h, 5d."
    )

    optParameters: list[list[Any]] = [
        [
            "relay",
            "r",
            None,
            "The relay to send through: host:port, or a Twisted endpoint "
            f"description such as tcp:mail.example.com:587 [default: {DEFAULTS['relay']}]",
        ],
        [
            "tls",
            None,
            None,
            "TLS policy: required (STARTTLS or fail, never plaintext), opportunistic "
            "(STARTTLS when offered) or never [default: opportunistic]",
        ],
        [
            "tls-ca",
            None,
            None,
            "A PEM file of the CA certificate to trust for the relay (a private CA) "
            "instead of the system's roots",
        ],
        ["auth-user", None, None, "User name for SMTP AUTH (needs a password source)"],
        [
            "auth-password-file",
            None,
            None,
            "A file holding the AUTH password (its first line)",
        ],
        [
            "auth-password-env",
            None,
            None,
            "An environment variable holding the AUTH password",
        ],
        [
            "spool",
            "s",
            None,
            "The spool folder [default: $TXSMTP_SPOOL, else "
            "$XDG_DATA_HOME/txsmtp/spool, else ~/.local/share/txsmtp/spool]",
        ],
        [
            "concurrency",
            "c",
            None,
            "Connections to the relay, each carrying up to "
            f"{IN_FLIGHT_PER_CONNECTION} messages pipelined one behind another "
            "(with --direct: the most messages sent at once) "
            f"[default: {DEFAULTS['concurrency']}]",
        ],
        [
            "retry-schedule",
            None,
            None,
            "Backoff for temporary failures: INITIAL,MAXIMUM[,FACTOR], e.g. 1m,1h,2 "
            f"(with 20% jitter) [default: {DEFAULTS['retry-schedule']}]",
        ],
        [
            "max-lifetime",
            None,
            None,
            f"How long a message is retried before it fails [default: {DEFAULTS['max-lifetime']}]",
        ],
        [
            "poll-interval",
            None,
            None,
            f"How often to look for due messages [default: {DEFAULTS['poll-interval']}]",
        ],
        [
            "status-port",
            None,
            None,
            "Serve queue counts by state as JSON over HTTP on this endpoint, "
            "e.g. tcp:8025:interface=127.0.0.1 [default: none]",
        ],
        [
            "grace",
            None,
            None,
            f"On stop, how long sends in flight may take to finish [default: {DEFAULTS['grace']}]",
        ],
        [
            "control-port",
            None,
            None,
            "Serve the control plane (JSON API under /v1/, Prometheus metrics at "
            "/metrics) on this endpoint: a port number (loopback), "
            "tcp:8025:interface=127.0.0.1, unix:/run/txsmtp/control.sock, or with "
            "a token ssl:8025:privateKey=KEY.pem:certKey=CERT.pem [default: none]",
        ],
        [
            "control-token-file",
            None,
            None,
            "A file whose first line is the bearer token every control plane "
            "request must carry (required beyond loopback)",
        ],
        [
            "dkim-keys",
            None,
            None,
            "A TOML file of DKIM keys, [[key]] tables with domain, selector, key-file "
            "(and optionally canonicalization), for several keys or domains",
        ],
        [
            "on-ambiguous",
            None,
            None,
            "What to do after an ambiguous attempt (the message was sent but the "
            "connection broke before the relay's reply): resend (may deliver it "
            "twice, as Postfix does) or hold (keep it back for an operator) "
            f"[default: {DEFAULTS['on-ambiguous']}]",
        ],
        [
            "queue",
            "q",
            None,
            "Send from a PostgreSQL queue shared by many daemons instead of the spool "
            "folder: postgresql://user@host/db (put the password in ~/.pgpass or "
            "$PGPASSWORD rather than here: ps shows the command line)",
        ],
        [
            "lease",
            None,
            None,
            "With --queue: how long a claim lasts unless renewed; a dead daemon's "
            "messages are sent again this long after it died [default: 60s]",
        ],
        [
            "config",
            None,
            None,
            "A config file (.toml, .json, or .ini/.cfg/.conf with a [txsmtp] section) "
            "holding any of these options by their long names; the command line wins",
        ],
        *DIRECT_PARAMETERS,
    ]

    optFlags: list[list[Any]] = [
        [
            "notify-sender",
            None,
            "Queue a failure notice (a delivery status notification) to the sender "
            "of a message that failed",
        ],
        [
            "migrate",
            None,
            "With --queue: bring the database's schema up to date before starting",
        ],
        [
            "no-fsync",
            None,
            "Do not fsync spool changes (faster; a power cut may lose messages; "
            "for tests and benchmarks only)",
        ],
        *DIRECT_FLAGS,
    ]

    compData = usage.Completions(
        optActions={
            "tls": usage.CompleteList(list(_TLS_POLICIES)),
            "on-ambiguous": usage.CompleteList(list(AMBIGUOUS_POLICIES)),
            "tls-ca": usage.CompleteFiles("*.pem"),
            "auth-password-file": usage.CompleteFiles(),
            "spool": usage.CompleteDirs(),
            "config": usage.CompleteFiles(),
            "control-token-file": usage.CompleteFiles(),
        }
    )

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        #: Typed values, filled by :meth:`postOptions`.
        self.settings: dict[str, Any] = {}

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse and check the options.  Run by ``twist txsmtp`` (as a
        subcommand), an error is one line on stderr and a sysexits(3) exit
        code rather than twist's usage dump; embedded, it raises.

        :raises usage.UsageError: for a bad option, when not run by twist.
        :raises SystemExit: for a bad option, when run by ``twist txsmtp``.
        """
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            exit_for(e)

    def opt_help(self) -> None:
        """
        Display this help and exit.
        """
        try:
            print(self.__str__(), flush=True)
        except BrokenPipeError:
            reader_gone(sys.stdout)  # "--help | head"
        raise SystemExit(0)

    def opt_auth_password(self, value: str) -> None:
        """Refused (ps shows it): use --auth-password-file or --auth-password-env."""
        raise usage.UsageError(_PASSWORD_REFUSED)

    def postOptions(self) -> None:
        """
        Merge the config file under the command line, apply defaults and
        check every value, then everything the daemon will need before the
        reactor runs (:func:`check_startup`).

        :raises usage.UsageError: for a bad value, a missing password, or an
            unreadable config file.
        :raises StartupError: for a relay or port description that does not
            parse, a file that cannot be read, or a spool that cannot be
            opened.
        """
        given: dict[str, Any] = {}
        if self["config"]:
            given.update(load_config(self["config"]))
        for key, value in self.items():
            if key == "config":
                continue
            if key in ("notify-sender", "no-fsync", "migrate"):
                if value:
                    given[key] = True
            elif value is not None:
                given[key] = value
        self.settings = _settings(given)
        self.settings["dkim"] = dkim_keys(self, given)
        if self.settings["queue"]:
            check_queue(self.settings)
        check_startup(self.settings)


_KNOWN_KEYS = frozenset(
    {
        *(p[0] for p in Options.optParameters),
        *(f[0] for f in Options.optFlags),
    }
) - {"config"}


def load_config(path: str) -> dict[str, Any]:
    """
    Read a config file: TOML (``.toml``), JSON (``.json``) or INI (any other
    name, options in a ``[txsmtp]`` section).  Keys are the long option
    names, with ``-`` or ``_``; TOML may put them at the top or in a
    ``[txsmtp]`` table.

    :returns: option name -> value.
    :raises StartupError: if the file cannot be read.
    :raises usage.UsageError: if the file cannot be parsed, holds an unknown
        key, or holds a password.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise StartupError(f"--config: cannot read {path}: {e.strerror}", EX_NOINPUT) from e
    data: Any
    try:
        if path.endswith(".toml"):
            data = tomllib.loads(raw.decode("utf-8"))
            if isinstance(data.get("txsmtp"), dict):
                data = data["txsmtp"]
        elif path.endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
        else:
            parser = configparser.ConfigParser(interpolation=None)
            parser.read_string(raw.decode("utf-8"), source=path)
            if not parser.has_section("txsmtp"):
                raise usage.UsageError(f"--config: {path} has no [txsmtp] section")
            data = dict(parser.items("txsmtp"))
    except configparser.MissingSectionHeaderError:
        raise usage.UsageError(f"--config: {path} has no [txsmtp] section") from None
    except (UnicodeDecodeError, ValueError, configparser.Error) as e:
        # configparser's messages run over several lines: keep one.
        reason = " ".join(str(e).split())
        raise usage.UsageError(f"--config: cannot parse {path}: {reason}") from e
    if not isinstance(data, dict):
        raise usage.UsageError(f"--config: {path} must hold a table of options")
    result: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("_", "-").lower()
        if name == "auth-password":
            raise usage.UsageError(f"--config: {path}: {_PASSWORD_REFUSED}")
        if name not in _KNOWN_KEYS:
            raise usage.UsageError(f"--config: {path}: unknown option {key!r}")
        if isinstance(value, (dict, list)) or value is None:
            raise usage.UsageError(f"--config: {path}: {key} must be a single value")
        result[name] = value
    return result


def _control(
    settings: Mapping[str, Any],
    service: SpoolService,
    pool: SMTPConnectionPool | None,
    metrics: DaemonMetrics,
) -> IService:
    """
    The control plane's listening service, named ``"control"``.

    :raises usage.UsageError: if Twisted cannot build its endpoint.
    """
    from txsmtpclient.control.server import ControlPortError, control_service, make_site

    plan: ListenPlan = settings["control_port"]
    token: bytes | None = settings["control_token"]
    site = make_site(service, token=token, metrics=metrics, pool=pool)
    try:
        listening = control_service(plan, site)
    except ControlPortError as e:
        raise usage.UsageError(f"--control-port {e}") from e
    _log.info(
        "Control plane on {endpoint}: /v1/ and /metrics, {auth}",
        endpoint=plan.description,
        auth="bearer token required" if token is not None else "no token (local only)",
    )
    if not plan.local and not plan.tls:
        _log.warn(
            "The control plane's token crosses the network in clear on {endpoint}; "
            "prefer an ssl: endpoint",
            endpoint=plan.description,
        )
    return listening


class _Daemon(MultiService):
    """
    The daemon's top service: a :class:`StartupError` raised while its
    services start (a port in use) ends ``twist txsmtp`` the way a bad
    option does (:func:`exit_for`) when ``exit_on_error`` is set.
    """

    def __init__(self, *, exit_on_error: bool) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._exit_on_error = exit_on_error

    def privilegedStartService(self) -> None:
        self._starting(super().privilegedStartService)

    def startService(self) -> None:
        self._starting(super().startService)

    def _starting(self, start: Callable[[], None]) -> None:
        try:
            start()
        except StartupError as e:
            if not self._exit_on_error:
                raise
            exit_for(e)


def makeService(options: Mapping[str, Any], *, clock: IReactorTime | None = None) -> MultiService:
    """
    Build the daemon: the spool service (named ``"spool"``) sending through a
    connection pool to the relay, the control plane (named ``"control"``,
    with its metrics as the spool service's observer) when ``--control-port``
    is given, and the older HTTP status endpoint (named ``"status"``) when
    ``--status-port`` is.

    :param options: parsed :class:`Options`.
    :param clock: the spool service's (and direct mode's backoff) clock;
        the reactor by default.
    :returns: a MultiService to run, or to embed in another application.
        Its ``startService`` raises :class:`StartupError` for a control or
        status port that cannot be listened on (run by ``twist txsmtp``, that
        is one line on stderr and the error's exit code instead).
    :raises usage.UsageError: for an unreadable password or CA file, or a
        control port description Twisted cannot read.
    """
    from twisted.internet import reactor

    settings: Mapping[str, Any] = getattr(options, "settings", None) or _settings(
        {k: v for k, v in options.items() if v is not None and v is not False and v != 0}
    )
    password = read_password(settings, os.environ)
    tls_options = _tls_options(settings)
    relay: str = settings["relay"]
    _relay(relay)  # a malformed relay is a usage error now, not at each send

    def make_client() -> SMTP:
        smtp = SMTP(
            reactor=reactor,
            tls=settings["tls"],
            tls_options=tls_options,
        )
        # Every delivery attempt ends with the structured transaction event
        # (stage timings, TLS, replies, the relay's queue id).
        smtp.transaction_events = True
        return smtp

    pool = SMTPConnectionPool(
        relay,
        max_connections=settings["concurrency"],
        make_client=make_client,
        username=settings["auth_user"] if password is not None else None,
        password=password,
        reactor=reactor,
    )
    reporter = SetAsideReporter()
    on_set_aside: Callable[[str, str], None] = reporter
    metrics = None
    if settings.get("control_port") is not None:
        from txsmtpclient.control.metrics import DaemonMetrics

        metrics = DaemonMetrics()

        def on_set_aside(path: str, reason: str) -> None:
            reporter(path, reason)
            metrics.entry_set_aside(path, reason)

    sender: Sender = signing_sender(pool, settings)
    close_sender: Any = pool.close
    if settings.get("direct"):
        direct, close_sender, relay = direct_sender(
            settings, reactor=reactor, clock=clock if clock is not None else reactor
        )
        sender = signing_sender(direct, settings)
    # Run by twist, a port that cannot be listened on is one line and an
    # exit code, like a bad option; embedded, it raises StartupError.
    top = _Daemon(exit_on_error=getattr(options, "parent", None) is not None)
    spool, attach = queue_service(
        settings,
        top,
        lambda: Spool(settings["spool"], fsync=settings["fsync"], on_set_aside=on_set_aside),
        on_set_aside,
    )
    service = SpoolService(
        spool,
        sender,
        relay=relay,
        close_sender=close_sender,
        clock=clock,
        concurrency=in_flight(settings),
        poll_interval=settings["poll_interval"],
        grace=settings["grace"],
        policy=settings["policy"],
        notify_sender=settings["notify_sender"],
        observer=metrics,
        on_ambiguous=settings["on_ambiguous"],
    )
    if metrics is not None:
        # Direct mode sends through no relay pool: no pool gauges then.
        relay_pool = None if settings.get("direct") else pool
        _control(settings, service, relay_pool, metrics).setServiceParent(top)
    if settings["status_port"]:
        _log.warn(
            "--status-port is superseded by --control-port (GET /v1/stats, /metrics); "
            "it still serves the counts at /"
        )
        from twisted.internet.endpoints import serverFromString

        site = Site(StatusResource(service))
        site.noisy = False
        description = settings["status_port"]
        status = ListeningService(
            serverFromString(reactor, description),
            site,
            option="--status-port",
            description=description,
        )
        status.setName("status")  # type: ignore[no-untyped-call]
        # Added first so it stops last: the status stays readable while the
        # spool service drains.
        status.setServiceParent(top)  # type: ignore[no-untyped-call]
    service.setName("spool")  # type: ignore[no-untyped-call]
    service.setServiceParent(top)  # type: ignore[no-untyped-call]
    attach(service)
    return top
