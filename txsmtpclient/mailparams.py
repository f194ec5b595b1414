"""
MAIL parameters of the extensions that change how a message travels rather
than what it is: REQUIRETLS (RFC 8689), FUTURERELEASE (RFC 4865),
DELIVERBY (RFC 2852) and MT-PRIORITY (RFC 6710).

Each is sent only when the server advertises its extension, and otherwise
refused with :class:`~txsmtpclient.errors.SMTPNotSupportedError` before MAIL
(never dropped, as an unknown option would be: a message that asked to be
held, or to travel only over TLS, must not go out without it).

Sans-IO; nothing here imports Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from txsmtpclient._checks import ArgumentError
from txsmtpclient.errors import SMTPNotSupportedError
from txsmtpclient.extensions import Extensions

__all__ = ["DeliverBy", "Travel", "parse_travel_options", "raw_options", "travel_options"]

#: HOLDFOR's and BY's largest values (RFC 4865 section 4, RFC 2852 section 4).
_MAX_SECONDS = 999_999_999
_UNTIL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_BY = re.compile(r"^(-?\d{1,9});([RN])(T?)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class DeliverBy:
    """
    A DELIVERBY request (RFC 2852): deliver within ``seconds``, or else
    return the message (``mode="R"``) or notify the sender (``"N"``).

    :ivar trace: ask for delay notifications on the way (the ``T`` flag).
    :raises ArgumentError: (when made) for a value the RFC does not allow.
    """

    seconds: int
    mode: Literal["R", "N"] = "R"
    trace: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.seconds, int) or abs(self.seconds) > _MAX_SECONDS:
            raise ArgumentError(
                f"deliver_by seconds must be an int of 9 digits at most, not {self.seconds!r}"
            )
        if self.mode not in ("R", "N"):
            raise ArgumentError(f'deliver_by mode must be "R" or "N", not {self.mode!r}')
        if self.mode == "R" and self.seconds <= 0:
            raise ArgumentError("deliver_by with mode R needs a positive number of seconds")

    @property
    def parameter(self) -> str:
        """
        The MAIL parameter: ``BY=3600;R`` (``RT`` with trace).
        """
        return f"BY={self.seconds};{self.mode}{'T' if self.trace else ''}"


@dataclass(frozen=True, slots=True)
class Travel:
    """
    How a message should travel: the typed options of this module, as an
    :class:`~txsmtpclient.transaction.Envelope` holds them.

    :ivar require_tls: REQUIRETLS: every hop over verified TLS (RFC 8689).
    :ivar hold_for: FUTURERELEASE: hold at the server this many seconds.
    :ivar hold_until: FUTURERELEASE: hold until this aware datetime.
    :ivar deliver_by: DELIVERBY: the deadline.
    :ivar priority: MT-PRIORITY: -9 (lowest) to 9 (highest).
    """

    require_tls: bool = False
    hold_for: int | None = None
    hold_until: datetime | None = None
    deliver_by: DeliverBy | None = None
    priority: int | None = None

    def __post_init__(self) -> None:
        if self.hold_for is not None and self.hold_until is not None:
            raise ArgumentError("give hold_for or hold_until, not both (RFC 4865)")
        if self.hold_for is not None and (
            not isinstance(self.hold_for, int) or not 0 <= self.hold_for <= _MAX_SECONDS
        ):
            raise ArgumentError(
                f"hold_for must be 0 to {_MAX_SECONDS} seconds, not {self.hold_for!r}"
            )
        if self.hold_until is not None and (
            not isinstance(self.hold_until, datetime) or self.hold_until.tzinfo is None
        ):
            raise ArgumentError("hold_until must be a datetime with a time zone")
        if self.priority is not None and (
            not isinstance(self.priority, int) or not -9 <= self.priority <= 9
        ):
            raise ArgumentError(f"priority must be -9 to 9, not {self.priority!r}")

    @property
    def any(self) -> bool:
        """
        Whether any option is set.
        """
        return bool(
            self.require_tls
            or self.hold_for is not None
            or self.hold_until is not None
            or self.deliver_by is not None
            or self.priority is not None
        )


def _date_time(text: str) -> datetime | None:
    """
    An RFC 3339 date-time, or ``None`` when ``text`` is not one.
    """
    if not _UNTIL.match(text):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:  # 2024-13-01: the right shape, not a date
        return None


def _utc_text(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_travel_options(options: Sequence[str]) -> tuple[tuple[str, ...], Travel]:
    """
    Take this module's parameters out of raw MAIL options (as a spool entry
    or ``mail_options=`` gives them), so that they are checked and refused
    like the typed fields rather than dropped like unknown options.

    :returns: the other options, and what was found.
    :raises ArgumentError: for a malformed value.
    """
    rest: list[str] = []
    found: dict[str, object] = {}
    for option in options:
        name, _, value = option.partition("=")
        key = name.upper()
        if key == "REQUIRETLS" and not value:
            found["require_tls"] = True
        elif key == "HOLDFOR":
            if not value.isdigit():
                raise ArgumentError(f"HOLDFOR needs a number of seconds, not {value!r}")
            found["hold_for"] = int(value)
        elif key == "HOLDUNTIL":
            until = _date_time(value)
            if until is None:
                raise ArgumentError(f"HOLDUNTIL needs an RFC 3339 date-time, not {value!r}")
            found["hold_until"] = until
        elif key == "BY":
            match = _BY.match(value)
            if match is None:
                raise ArgumentError(f"BY needs seconds;R or seconds;N (RFC 2852), not {value!r}")
            mode: Literal["R", "N"] = "R" if match.group(2).upper() == "R" else "N"
            found["deliver_by"] = DeliverBy(int(match.group(1)), mode, bool(match.group(3)))
        elif key == "MT-PRIORITY":
            try:
                found["priority"] = int(value)
            except ValueError:
                raise ArgumentError(f"MT-PRIORITY needs -9 to 9, not {value!r}") from None
        else:
            rest.append(option)
    return tuple(rest), Travel(**found)  # type: ignore[arg-type]


def _refuse(what: str, extension: str) -> SMTPNotSupportedError:
    return SMTPNotSupportedError(
        f"{what} needs the server's {extension} extension, which it does not advertise; "
        "nothing was sent"
    )


def _requiretls_refused(error: SMTPNotSupportedError) -> SMTPNotSupportedError:
    # RFC 8689 section 5: such a message is bounced as 5.7.30, "REQUIRETLS
    # support required".
    error.enhanced_code = "5.7.30"
    return error


def travel_options(travel: Travel, features: Extensions | None, tls: bool) -> list[str]:
    """
    The MAIL parameters for ``travel``, checked against what the server
    advertised.

    :param tls: the session runs over TLS (always verified by this client).
    :raises SMTPNotSupportedError: when the server lacks an extension asked
        for, REQUIRETLS is asked for without TLS, or a hold exceeds the
        server's advertised limit.
    """
    options: list[str] = []
    if travel.require_tls:
        if features is None or not features.has("requiretls"):
            raise _requiretls_refused(_refuse("REQUIRETLS", "REQUIRETLS"))
        if not tls:
            # RFC 8689 section 4.1: only over verified TLS, never in the clear.
            raise _requiretls_refused(
                SMTPNotSupportedError(
                    'REQUIRETLS needs a TLS session; use tls="required" (nothing was sent)'
                )
            )
        options.append("REQUIRETLS")
    if travel.hold_for is not None or travel.hold_until is not None:
        if features is None or not features.has("futurerelease"):
            raise _refuse("hold_for/hold_until", "FUTURERELEASE")
        limits = features["futurerelease"].split()
        if travel.hold_for is not None:
            if limits and limits[0].isdigit() and travel.hold_for > int(limits[0]):
                raise SMTPNotSupportedError(
                    f"hold_for={travel.hold_for} is over the server's limit of {limits[0]} s"
                )
            options.append(f"HOLDFOR={travel.hold_for}")
        else:
            assert travel.hold_until is not None
            until = travel.hold_until.astimezone(timezone.utc)
            # A limit the server spells wrong is no limit.
            latest = _date_time(limits[1]) if len(limits) > 1 else None
            if latest is not None and until > latest:
                raise SMTPNotSupportedError(
                    f"hold_until={until.isoformat()} is past the server's limit {limits[1]}"
                )
            options.append("HOLDUNTIL=" + _utc_text(until))
    if travel.deliver_by is not None:
        if features is None or not features.has("deliverby"):
            raise _refuse("deliver_by", "DELIVERBY")
        minimum = features["deliverby"].strip()
        by = travel.deliver_by
        if by.mode == "R" and minimum.isdigit() and by.seconds < int(minimum):
            raise SMTPNotSupportedError(
                f"deliver_by={by.seconds} s is under the server's minimum of {minimum} s"
            )
        options.append(by.parameter)
    if travel.priority is not None:
        if features is None or not features.has("mt-priority"):
            raise _refuse("priority", "MT-PRIORITY")
        options.append(f"MT-PRIORITY={travel.priority}")
    return options


def raw_options(travel: Travel) -> list[str]:
    """
    ``travel`` as raw MAIL options, which :func:`parse_travel_options`
    reads back: how a sender that takes smtplib-style options carries it.
    """
    options: list[str] = []
    if travel.require_tls:
        options.append("REQUIRETLS")
    if travel.hold_for is not None:
        options.append(f"HOLDFOR={travel.hold_for}")
    if travel.hold_until is not None:
        options.append("HOLDUNTIL=" + _utc_text(travel.hold_until))
    if travel.deliver_by is not None:
        options.append(travel.deliver_by.parameter)
    if travel.priority is not None:
        options.append(f"MT-PRIORITY={travel.priority}")
    return options
