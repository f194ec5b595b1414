"""
The daemon's settings: defaults, the config file, what each option becomes,
and the checks made before the reactor runs (relay, files, ports, spool),
each failing as one line with a sysexits code (:class:`StartupError`).
:mod:`txsmtpclient.tap` reads the command line with them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python import usage

from txsmtpclient._endpoints import Relay, parse_relay, resolve_endpoint
from txsmtpclient._tap_direct import (
    direct_settings,
)
from txsmtpclient.errors import SMTPArgumentError
from txsmtpclient.spool.cli import default_spool
from txsmtpclient.spool.delivery import AMBIGUOUS_POLICIES
from txsmtpclient.spool.postgres_tap import queue_settings
from txsmtpclient.spool.schedule import RetryPolicy, ScheduleError, parse_duration
from txsmtpclient.spool.sendmail import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_NOINPUT,
    EX_USAGE,
)
from txsmtpclient.spool.store import Spool

if TYPE_CHECKING:
    from twisted.internet.ssl import Certificate

    pass


__all__ = [
    "DEFAULTS",
    "IN_FLIGHT_PER_CONNECTION",
    "StartupError",
    "check_startup",
    "exit_for",
    "in_flight",
    "read_password",
]

#: Every option's default, as it would be written on the command line.
DEFAULTS: Mapping[str, str] = {
    "relay": "localhost:25",
    "tls": "opportunistic",
    "concurrency": "10",
    "retry-schedule": "1m,1h",
    "max-lifetime": "5d",
    "poll-interval": "1s",
    "grace": "30s",
    "on-ambiguous": "resend",
}

_TLS_POLICIES = ("required", "opportunistic", "never")

_PASSWORD_REFUSED = (
    "a password on the command line is visible to every user of this machine "
    "(ps, /proc); use --auth-password-file FILE or --auth-password-env VARIABLE"
)

#: Messages in flight per relay connection: one awaiting the reply to its
#: end, the next pipelined behind it (RFC 2920 section 3.1).  More drained
#: slower (3,000 messages, 20 connections: 2 gave 1.6-1.7x the drain rate
#: of 1, and 4 half that of 2), and each is a message a crash may send
#: twice.
IN_FLIGHT_PER_CONNECTION = 2


def in_flight(settings: Mapping[str, Any]) -> int:
    """
    The most messages the daemon sends at once: ``--concurrency`` in direct
    mode (which limits itself per destination), else that many relay
    connections times :data:`IN_FLIGHT_PER_CONNECTION`.
    """
    per_connection = 1 if settings.get("direct") else IN_FLIGHT_PER_CONNECTION
    return int(settings["concurrency"]) * per_connection


class StartupError(usage.UsageError):
    """
    A setting that cannot work, found before the daemon starts: a missing
    file, an unusable spool folder, a description that does not parse.

    :ivar exit_code: the sysexits(3) code ``twist txsmtp`` exits with.
    """

    def __init__(self, message: str, exit_code: int = EX_CONFIG) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_for(error: usage.UsageError) -> NoReturn:
    """
    The one way ``twist txsmtp`` reports a setting that cannot work, whether
    found while reading the options or while starting (a port it cannot
    listen on): one line on stderr, then the error's sysexits(3) code
    (``exit_code``; 64, usage, when it has none).

    :raises SystemExit: always.
    """
    print(f"twist txsmtp: error: {error} (see 'twist txsmtp --help')", file=sys.stderr)
    raise SystemExit(getattr(error, "exit_code", EX_USAGE))


def _seconds(name: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ScheduleError as e:
        raise usage.UsageError(f"--{name}: {e}") from e


def _whole(option: str, text: str, least: int, most: int | None = None) -> int:
    """
    A whole-number option value from ``least`` to ``most`` (no upper bound
    when ``None``).

    :raises usage.UsageError: naming the option, for anything else.
    """
    try:
        value = int(text)
    except ValueError:
        raise usage.UsageError(f"--{option} must be a whole number, got {text!r}") from None
    if most is None and value < least:
        raise usage.UsageError(f"--{option} must be at least {least}, got {value}")
    if most is not None and not least <= value <= most:
        raise usage.UsageError(f"--{option} must be from {least} to {most}, got {value}")
    return value


def _backoff(option: str, text: str) -> tuple[float, float, float]:
    """
    ``INITIAL,MAXIMUM[,FACTOR]``: two durations with units (``1m,1h``) and a
    growth factor (2 when left out), as ``--retry-schedule`` and
    ``--destination-backoff`` take them.  Their order and range are the
    caller's value's to check.

    :returns: initial and maximum seconds, and the factor.
    :raises usage.UsageError: naming the option, for another shape, a bad
        duration or a factor that is not a number.
    """
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise usage.UsageError(f"--{option}: expected INITIAL,MAXIMUM[,FACTOR] such as 1m,1h,2")
    initial = _seconds(option, parts[0])
    maximum = _seconds(option, parts[1])
    try:
        factor = float(parts[2]) if len(parts) == 3 else 2.0
    except ValueError:
        raise usage.UsageError(f"--{option}: bad factor {parts[2]!r}") from None
    return initial, maximum, factor


def check_startup(settings: Mapping[str, Any]) -> None:
    """
    Check what :func:`makeService` will use, without starting anything: the
    relay parsed by the client's one host parser, the password and CA files
    read, the status port description parsed, the spool folder opened
    (with ``--queue``, the database was checked by ``check_queue``).

    :raises StartupError: naming the option and what is wrong.
    """
    from twisted.internet.testing import MemoryReactor

    # Descriptions are only parsed here: twist installs the real reactor
    # after reading the options, so none may be imported yet.
    parse_only = MemoryReactor()
    relay = settings["relay"]
    try:
        resolve_endpoint(parse_only, relay, None, 25, None)
    except (ValueError, SMTPArgumentError) as e:
        # The parser's message names what was expected.
        raise StartupError(f"--relay {relay!r}: {e}", EX_USAGE) from None
    try:
        read_password(settings, os.environ)
        _tls_options(settings)
    except usage.UsageError as e:
        raise StartupError(str(e), EX_NOINPUT) from None
    if settings.get("status_port"):
        try:
            _parse_server(settings["status_port"], "--status-port")
        except usage.UsageError as e:
            raise StartupError(str(e), EX_USAGE) from None
    if not settings.get("queue"):
        # With --queue the messages live in the database, not this folder.
        _check_spool(settings["spool"])


def _check_spool(path: str) -> None:
    """
    Open (creating if needed) the spool folder and check it is writable.

    :raises StartupError: if it cannot be used.
    """
    try:
        spool = Spool(path, fsync=False)
    except OSError as e:
        raise StartupError(
            f"--spool {path}: cannot open the spool folder: {e.strerror or e}", EX_CANTCREAT
        ) from None
    for sub in ("tmp", "msg", "queue", "sending"):
        folder = os.path.join(spool.path, sub)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StartupError(f"--spool {path}: {folder} is not writable", EX_CANTCREAT)


def _flag(key: str, value: Any) -> bool:
    """
    A flag's value from the command line (``True``), a config file (a
    boolean, 0/1, or ``yes``/``no``/``true``/``false``/``on``/``off``).

    :raises usage.UsageError: for anything else.
    """
    if isinstance(value, (bool, int)):
        return bool(value)
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
    settings["concurrency"] = _whole("concurrency", text("concurrency") or "", 1)
    initial, maximum, factor = _backoff("retry-schedule", text("retry-schedule") or "")
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
    settings.update(_control_settings(text("control-port"), text("control-token-file")))
    on_ambiguous = text("on-ambiguous") or ""
    if on_ambiguous not in AMBIGUOUS_POLICIES:
        raise usage.UsageError(
            f"--on-ambiguous must be one of {', '.join(AMBIGUOUS_POLICIES)}, got {on_ambiguous!r}"
        )
    settings["on_ambiguous"] = on_ambiguous
    settings["notify_sender"] = _flag("notify-sender", given.get("notify-sender", False))
    settings["fsync"] = not _flag("no-fsync", given.get("no-fsync", False))
    settings.update(queue_settings(given))
    settings.update(direct_settings(given))
    return settings


def _control_settings(port: str | None, token_file: str | None) -> dict[str, Any]:
    """
    ``control_port`` (a checked :class:`~txsmtpclient.control.server.ListenPlan`
    or ``None``) and ``control_token`` (bytes or ``None``).

    :raises usage.UsageError: for an unreadable token file, or a port that
        must not be used as given.
    """
    if not port:
        if token_file:
            raise usage.UsageError("--control-token-file needs --control-port")
        return {"control_port": None, "control_token": None}
    from txsmtpclient.control.server import ControlPortError, check_control_port, read_token

    token = None
    if token_file:
        try:
            token = read_token(token_file)
        except ControlPortError as e:
            raise usage.UsageError(f"--control-token-file: {e}") from e
    try:
        plan = check_control_port(port, has_token=token is not None)
    except ControlPortError as e:
        raise usage.UsageError(f"--control-port {e}") from e
    return {"control_port": plan, "control_token": token}


def _parse_server(description: str, option: str) -> None:
    """
    Have Twisted read a listening endpoint's description, the reading the
    daemon will listen by (nothing listens: the reactor is not installed
    yet).

    :raises usage.UsageError: naming ``option`` for one Twisted refuses (an
        unknown type, a bad parameter, an unreadable key).
    """
    from txsmtpclient._listen import DescriptionError, read_description

    try:
        read_description(description)
    except DescriptionError as e:
        raise usage.UsageError(
            f"{option} {description!r}: {e}; give an endpoint description such as "
            "tcp:8025:interface=127.0.0.1"
        ) from None


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


def _relay(relay: str) -> Relay:
    """
    The relay, read by the client's own parser.

    :raises usage.UsageError: for a malformed relay.
    """
    try:
        return parse_relay(relay)
    except (SMTPArgumentError, TypeError) as e:
        raise usage.UsageError(f"--relay: {e}") from e


def load_ca(path: str) -> Certificate:
    """
    The ``--tls-ca`` certificate.

    :raises usage.UsageError: one line for a file that cannot be read or is
        not a PEM certificate.
    """
    from OpenSSL import crypto
    from twisted.internet.ssl import Certificate

    try:
        with open(path, "rb") as f:
            return Certificate.loadPEM(f.read())
    except (OSError, ValueError, crypto.Error) as e:
        pem = "not a PEM certificate"
        reason = e.strerror if isinstance(e, OSError) and e.strerror else pem
        raise usage.UsageError(f"--tls-ca: cannot load {path}: {reason}") from e


def _tls_options(settings: Mapping[str, Any]) -> IOpenSSLClientConnectionCreator | None:
    if not settings.get("tls_ca"):
        return None
    from twisted.internet.ssl import optionsForClientTLS

    ca = load_ca(settings["tls_ca"])
    hostname = _relay(settings["relay"]).host
    if not hostname:
        raise usage.UsageError("--tls-ca needs a relay that names a host to verify")
    return optionsForClientTLS(hostname, trustRoot=ca)
