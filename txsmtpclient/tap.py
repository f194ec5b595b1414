"""
``twist txsmtp``: the sending daemon's command line and service.

:class:`Options` reads the command line (and a config file);
:func:`makeService` builds a :class:`~twisted.application.service.MultiService`
holding the :class:`~txsmtpclient.spool.service.SpoolService` (named
``"spool"``) and, when asked, the HTTP status endpoint (named
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
from collections.abc import Mapping
from typing import Any

import tomllib
from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.python import usage
from twisted.web.server import Site

from txsmtpclient._endpoints import _description_host, _is_description
from txsmtpclient._tap_direct import (
    DIRECT_FLAGS,
    DIRECT_PARAMETERS,
    direct_sender,
    direct_settings,
)
from txsmtpclient.client import SMTP
from txsmtpclient.pool import SMTPConnectionPool
from txsmtpclient.spool.cli import default_spool
from txsmtpclient.spool.delivery import Sender
from txsmtpclient.spool.schedule import RetryPolicy, ScheduleError, parse_duration
from txsmtpclient.spool.service import SetAsideReporter, SpoolService, StatusResource
from txsmtpclient.spool.store import Spool

__all__ = ["DEFAULTS", "Options", "makeService"]

#: Every option's default, as it would be written on the command line.
DEFAULTS: Mapping[str, str] = {
    "relay": "localhost:25",
    "tls": "opportunistic",
    "concurrency": "10",
    "retry-schedule": "1m,1h",
    "max-lifetime": "5d",
    "poll-interval": "1s",
    "grace": "30s",
}

_TLS_POLICIES = ("required", "opportunistic", "never")

_PASSWORD_REFUSED = (
    "a password on the command line is visible to every user of this machine "
    "(ps, /proc); use --auth-password-file FILE or --auth-password-env VARIABLE"
)


def _seconds(name: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ScheduleError as e:
        raise usage.UsageError(f"--{name}: {e}") from e


class Options(usage.Options):
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
            "The most messages sent at once, and connections to the relay "
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
            "tls-ca": usage.CompleteFiles("*.pem"),
            "auth-password-file": usage.CompleteFiles(),
            "spool": usage.CompleteDirs(),
            "config": usage.CompleteFiles(),
        }
    )

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        #: Typed values, filled by :meth:`postOptions`.
        self.settings: dict[str, Any] = {}

    def opt_auth_password(self, value: str) -> None:
        """Refused (ps shows it): use --auth-password-file or --auth-password-env."""
        raise usage.UsageError(_PASSWORD_REFUSED)

    def postOptions(self) -> None:
        """
        Merge the config file under the command line, apply defaults and
        check every value.

        :raises usage.UsageError: for a bad value, a missing password, or an
            unreadable config file.
        """
        given: dict[str, Any] = {}
        if self["config"]:
            given.update(load_config(self["config"]))
        for key, value in self.items():
            if key == "config":
                continue
            if key in ("notify-sender", "no-fsync"):
                if value:
                    given[key] = True
            elif value is not None:
                given[key] = value
        self.settings = _settings(given)


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "yes", "true", "on"):
        return True
    if text in ("0", "no", "false", "off"):
        return False
    raise usage.UsageError(f"{key}: expected true or false, got {value!r}")


def _settings(given: Mapping[str, Any]) -> dict[str, Any]:
    """
    Typed, checked settings from option values (strings or config values).
    """

    def text(key: str) -> str | None:
        value = given.get(key, DEFAULTS.get(key))
        return None if value is None else str(value)

    settings: dict[str, Any] = {}
    relay = text("relay") or ""
    if not relay.strip():
        raise usage.UsageError("--relay must not be empty")
    settings["relay"] = relay.strip()
    tls = text("tls") or "opportunistic"
    if tls not in _TLS_POLICIES:
        raise usage.UsageError(f"--tls must be one of {', '.join(_TLS_POLICIES)}, got {tls!r}")
    settings["tls"] = tls
    settings["tls_ca"] = text("tls-ca")
    settings["auth_user"] = text("auth-user")
    settings["auth_password_file"] = text("auth-password-file")
    settings["auth_password_env"] = text("auth-password-env")
    sources = [k for k in ("auth_password_file", "auth_password_env") if settings[k]]
    if settings["auth_user"] and not sources:
        raise usage.UsageError(
            "--auth-user needs --auth-password-file FILE or --auth-password-env VARIABLE"
        )
    if sources and not settings["auth_user"]:
        raise usage.UsageError("a password source needs --auth-user")
    if len(sources) > 1:
        raise usage.UsageError("give one of --auth-password-file and --auth-password-env")
    settings["spool"] = text("spool") or default_spool(os.environ)
    try:
        concurrency = int(text("concurrency") or "")
    except ValueError:
        raise usage.UsageError(
            f"--concurrency must be a whole number, got {text('concurrency')!r}"
        ) from None
    if concurrency < 1:
        raise usage.UsageError(f"--concurrency must be at least 1, got {concurrency}")
    settings["concurrency"] = concurrency
    parts = [p.strip() for p in (text("retry-schedule") or "").split(",")]
    if len(parts) not in (2, 3):
        raise usage.UsageError(
            "--retry-schedule: expected INITIAL,MAXIMUM[,FACTOR] such as 1m,1h,2"
        )
    initial = _seconds("retry-schedule", parts[0])
    maximum = _seconds("retry-schedule", parts[1])
    try:
        factor = float(parts[2]) if len(parts) == 3 else 2.0
    except ValueError:
        raise usage.UsageError(f"--retry-schedule: bad factor {parts[2]!r}") from None
    lifetime = _seconds("max-lifetime", text("max-lifetime") or "")
    try:
        settings["policy"] = RetryPolicy(
            initial=initial, factor=factor, maximum=maximum, lifetime=lifetime
        )
    except ValueError as e:
        raise usage.UsageError(f"--retry-schedule: {e}") from e
    poll = _seconds("poll-interval", text("poll-interval") or "")
    if poll <= 0:
        raise usage.UsageError("--poll-interval must be more than zero")
    settings["poll_interval"] = poll
    settings["grace"] = _seconds("grace", text("grace") or "")
    settings["status_port"] = text("status-port")
    settings["notify_sender"] = _flag("notify-sender", given.get("notify-sender", False))
    settings["fsync"] = not _flag("no-fsync", given.get("no-fsync", False))
    settings.update(direct_settings(given))
    return settings


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
    :raises usage.UsageError: if the file cannot be read or parsed, holds an
        unknown key, or holds a password.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise usage.UsageError(f"--config: cannot read {path}: {e.strerror}") from e
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
    except (UnicodeDecodeError, ValueError, configparser.Error) as e:
        raise usage.UsageError(f"--config: cannot parse {path}: {e}") from e
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


def read_password(settings: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    """
    The AUTH password from its file (the first line) or environment variable.

    :raises usage.UsageError: if the file cannot be read or the variable is
        unset or empty.
    """
    if settings.get("auth_password_file"):
        path = settings["auth_password_file"]
        try:
            with open(path, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise usage.UsageError(
                f"--auth-password-file: cannot read {path}: {e.strerror}"
            ) from e
        if not password:
            raise usage.UsageError(f"--auth-password-file: {path} is empty")
        return password
    if settings.get("auth_password_env"):
        name = settings["auth_password_env"]
        password = environ.get(name, "")
        if not password:
            raise usage.UsageError(f"--auth-password-env: ${name} is not set or empty")
        return password
    return None


def relay_hostname(relay: str) -> str:
    """
    The host name in a relay (``host:port`` or an endpoint description), to
    check its certificate against; ``""`` when it names none (``unix:``).
    """
    if ":" in relay and _is_description(relay):
        return _description_host(relay)
    if relay.startswith("["):
        return relay[1:].partition("]")[0]
    if relay.count(":") == 1:
        return relay.partition(":")[0]
    return relay


def _tls_options(settings: Mapping[str, Any]) -> IOpenSSLClientConnectionCreator | None:
    if not settings.get("tls_ca"):
        return None
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    path = settings["tls_ca"]
    try:
        with open(path, "rb") as f:
            ca = Certificate.loadPEM(f.read())
    except (OSError, ValueError) as e:
        raise usage.UsageError(f"--tls-ca: cannot load {path}: {e}") from e
    hostname = relay_hostname(settings["relay"])
    if not hostname:
        raise usage.UsageError("--tls-ca needs a relay that names a host to verify")
    return optionsForClientTLS(hostname, trustRoot=ca)


def makeService(options: Mapping[str, Any], *, clock: IReactorTime | None = None) -> MultiService:
    """
    Build the daemon: the spool service (named ``"spool"``) sending through a
    connection pool to the relay, and the HTTP status endpoint (named
    ``"status"``) when ``--status-port`` is given.

    :param options: parsed :class:`Options`.
    :param clock: the spool service's (and direct mode's backoff) clock;
        the reactor by default.
    :returns: a MultiService to run, or to embed in another application.
    :raises usage.UsageError: for an unreadable password or CA file.
    """
    from twisted.internet import reactor

    settings: Mapping[str, Any] = getattr(options, "settings", None) or _settings(
        {k: v for k, v in options.items() if v is not None and v is not False and v != 0}
    )
    password = read_password(settings, os.environ)
    tls_options = _tls_options(settings)
    relay: str = settings["relay"]

    def make_client() -> SMTP:
        return SMTP(
            reactor=reactor,
            tls=settings["tls"],
            tls_options=tls_options,
        )

    pool = SMTPConnectionPool(
        relay,
        max_connections=settings["concurrency"],
        make_client=make_client,
        username=settings["auth_user"] if password is not None else None,
        password=password,
        reactor=reactor,
    )
    sender: Sender = pool
    close_sender: Any = pool.close
    if settings.get("direct"):
        sender, close_sender, relay = direct_sender(
            settings, reactor=reactor, clock=clock if clock is not None else reactor
        )
    spool = Spool(settings["spool"], fsync=settings["fsync"], on_set_aside=SetAsideReporter())
    service = SpoolService(
        spool,
        sender,
        relay=relay,
        close_sender=close_sender,
        clock=clock,
        concurrency=settings["concurrency"],
        poll_interval=settings["poll_interval"],
        grace=settings["grace"],
        policy=settings["policy"],
        notify_sender=settings["notify_sender"],
    )
    top = MultiService()
    if settings["status_port"]:
        site = Site(StatusResource(service))
        site.noisy = False
        status: IService = strports.service(settings["status_port"], site)
        status.setName("status")
        # Added first so it stops last: the status stays readable while the
        # spool service drains.
        status.setServiceParent(top)
    service.setName("spool")  # type: ignore[no-untyped-call]
    service.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
