"""
When a spooled message is due: absolute times, delays, recurrences, retry
backoff and expiry.

Sans-IO: text and numbers in, epoch seconds (``float``) out.  Nothing here
reads a clock; every function takes ``now``.  Nothing imports Twisted.

* :func:`parse_time` reads ISO 8601 (``2030-01-02T09:30:00+01:00``, ``...Z``, a
  date, or a bare ``09:30``); a time without an offset is read in the given
  IANA time zone, or the system's local time.
* :func:`parse_duration` reads ``"90s"``, ``"10m"``, ``"2h"``, ``"1d"``,
  ``"1w"``, ``"1h30m"``, a plain number of seconds, or ISO 8601 ``PT10M``.
* :class:`Recurrence` is a cron expression (through :mod:`croniter`) or a fixed
  interval; :func:`next_occurrence` gives the next due time after a send, once,
  however many occurrences were missed while the daemon was down.
* :class:`RetryPolicy` is exponential backoff with injected jitter, bounded by
  the maximum queue lifetime (:data:`DEFAULT_MAX_LIFETIME`, five days, the
  traditional MTA default; RFC 5321 section 4.5.4.1 says "at least 4-5 days").
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from enum import Enum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DEFAULT_MAX_LIFETIME",
    "Jitter",
    "Recurrence",
    "RecurrenceKind",
    "RetryPolicy",
    "ScheduleError",
    "expires_at",
    "is_expired",
    "next_occurrence",
    "parse_duration",
    "parse_recurrence",
    "parse_time",
    "to_epoch",
    "zone",
]

#: Maximum queue lifetime in seconds: five days (RFC 5321 section 4.5.4.1).
DEFAULT_MAX_LIFETIME = 5 * 24 * 3600.0

#: Jitter source: a :class:`random.Random` or a callable returning a float in
#: ``[0, 1)``.  Tests pass a seeded ``Random`` or ``lambda: 0.5``.
Jitter = random.Random | Callable[[], float]


class ScheduleError(ValueError):
    """
    A time, duration, time zone or recurrence that cannot be understood.  The
    message names what was expected and what came.
    """


_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "mins": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hrs": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
    "w": 604800.0,
    "week": 604800.0,
    "weeks": 604800.0,
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*")
_ISO_DURATION = re.compile(
    r"P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)
_CLOCK_TIME = re.compile(r"\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?")


def parse_duration(text: str) -> float:
    """
    Read a duration.

    :param text: ``"90"`` or ``"90s"`` (seconds), ``"10m"``, ``"2h"``,
        ``"1d"``, ``"1w"``, combinations such as ``"1h30m"`` or ``"1 day"``, or
        an ISO 8601 duration without years or months (``"PT10M"``, ``"P1DT2H"``).
    :returns: the duration in seconds, zero or more.
    :raises ScheduleError: for anything else, including negative durations.
    """
    stripped = text.strip()
    if not stripped:
        raise ScheduleError("expected a duration such as '10m', '2h' or '1d', got ''")
    try:
        value = float(stripped)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ScheduleError(f"expected a non-negative duration, got {text!r}")
        return value
    upper = stripped.upper()
    iso = _ISO_DURATION.fullmatch(upper)
    # "P" and a trailing "T" match the pattern's empty parts but say nothing.
    if iso is not None and upper != "P" and not upper.endswith("T"):
        factors = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}
        return sum(float(iso.group(k) or 0) * f for k, f in factors.items())
    total = 0.0
    position = 0
    lowered = stripped.lower()
    while position < len(lowered):
        part = _DURATION_PART.match(lowered, position)
        if part is None or part.group(2) not in _UNITS:
            raise ScheduleError(
                f"expected a duration such as '90s', '10m', '2h', '1d' or 'PT10M', got {text!r}"
            )
        total += float(part.group(1)) * _UNITS[part.group(2)]
        position = part.end()
    return total


def zone(name: str | None) -> tzinfo | None:
    """
    Look up an IANA time zone.

    :param name: ``"Europe/Paris"``, ``"UTC"``, or ``None`` for the system's
        local time.
    :returns: the zone, or ``None`` meaning local time.
    :raises ScheduleError: if the zone is unknown.
    """
    if name is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ScheduleError(f"expected an IANA time zone name, got {name!r}") from e


def _localize(naive: datetime, tz: tzinfo | None) -> datetime:
    if tz is None:
        # astimezone() on a naive datetime reads it as system local time,
        # with that moment's offset (so DST is honoured).
        return naive.astimezone()
    return naive.replace(tzinfo=tz)


def parse_time(text: str, *, now: float, timezone: str | None = None) -> datetime:
    """
    Read an absolute time.

    :param text: ISO 8601 as :meth:`datetime.fromisoformat` reads it
        (``2030-01-02T09:30``, ``2030-01-02 09:30:00+01:00``, ``...Z``), a date
        (midnight), ``"now"``, or a clock time ``"09:30"`` meaning its next
        occurrence after ``now``.
    :param now: the current time, epoch seconds (for ``"now"`` and clock times).
    :param timezone: IANA zone for times written without an offset; ``None``
        means the system's local time.  An explicit offset in ``text`` wins.
    :returns: an aware datetime.
    :raises ScheduleError: if ``text`` or ``timezone`` cannot be read.
    """
    tz = zone(timezone)
    stripped = text.strip()
    if stripped.lower() == "now":
        return datetime.fromtimestamp(now).astimezone(tz)
    if _CLOCK_TIME.fullmatch(stripped):
        # time.fromisoformat() before Python 3.11 wants two-digit hours.
        padded = "0" + stripped if stripped.index(":") == 1 else stripped
        try:
            clock = time.fromisoformat(padded)
        except ValueError as e:
            raise ScheduleError(f"expected a clock time such as '09:30', got {text!r}") from e
        today = datetime.fromtimestamp(now, tz).date() if tz else date.fromtimestamp(now)
        candidate = _localize(datetime.combine(today, clock), tz)
        if candidate.timestamp() <= now:
            candidate = _localize(datetime.combine(today + timedelta(days=1), clock), tz)
        return candidate
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError as e:
        raise ScheduleError(
            f"expected an ISO 8601 time such as '2030-01-02T09:30:00+01:00', got {text!r}"
        ) from e
    if parsed.tzinfo is None:
        parsed = _localize(parsed, tz)
    return parsed


def to_epoch(when: datetime | float | int) -> float:
    """
    Turn a time into epoch seconds.

    :param when: an aware datetime, a naive one (read as system local time),
        or epoch seconds already.
    :returns: epoch seconds.
    :raises TypeError: for any other type.
    """
    if isinstance(when, datetime):
        return when.timestamp()
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return float(when)
    raise TypeError(f"expected a datetime or epoch seconds, got {type(when).__name__}")


class RecurrenceKind(str, Enum):
    """
    How a recurring message recurs.
    """

    CRON = "cron"
    EVERY = "every"


@dataclass(frozen=True, slots=True)
class Recurrence:
    """
    A recurrence: a cron expression evaluated in a time zone, or a fixed
    interval.

    :ivar kind: cron or fixed interval.
    :ivar expression: the cron expression (``"*/5 * * * *"``, ``"@daily"``) or
        the interval as written (``"10m"``).
    :ivar interval: the interval in seconds (``EVERY`` only).
    :ivar timezone: IANA zone the cron expression is read in; ``None`` is the
        daemon's local time.
    """

    kind: RecurrenceKind
    expression: str
    interval: float | None = None
    timezone: str | None = None

    @classmethod
    def cron(cls, expression: str, timezone: str | None = None) -> Recurrence:
        """
        A cron recurrence, checked now.

        :raises ScheduleError: if croniter rejects the expression or the zone is
            unknown.
        """
        # croniter (and dateutil) take tens of ms to import: only a cron
        # schedule pays for them, never a plain enqueue (issue 14).
        from croniter import croniter

        zone(timezone)
        if not croniter.is_valid(expression):
            raise ScheduleError(
                f"expected a cron expression such as '*/5 * * * *' or '@daily', got {expression!r}"
            )
        return cls(RecurrenceKind.CRON, expression, None, timezone)

    @classmethod
    def every(cls, duration: str | float, timezone: str | None = None) -> Recurrence:
        """
        A fixed-interval recurrence.

        :param duration: seconds, or text for :func:`parse_duration`.
        :raises ScheduleError: if the interval is not a positive duration.
        """
        seconds = parse_duration(duration) if isinstance(duration, str) else float(duration)
        if not (math.isfinite(seconds) and seconds > 0):
            raise ScheduleError(f"expected a positive interval, got {duration!r}")
        return cls(RecurrenceKind.EVERY, str(duration), seconds, timezone)

    def next_after(self, after: float) -> float:
        """
        The first occurrence strictly after a moment (cron), or one interval
        later (interval).

        :param after: epoch seconds.
        :returns: epoch seconds.
        :raises ScheduleError: if a cron expression matches no date after
            ``after`` (``0 0 31 2 *``: February 31st).
        """
        if self.kind is RecurrenceKind.EVERY:
            assert self.interval is not None
            return after + self.interval
        from croniter import croniter

        tz = zone(self.timezone)
        # Naive local datetimes let croniter step wall-clock time and
        # .timestamp() map it back with the local DST rules.
        start = datetime.fromtimestamp(after, tz)
        iterator = croniter(self.expression, start)
        try:
            following: datetime = iterator.get_next(datetime)
        except ValueError as e:  # croniter's CroniterBadDateError
            raise ScheduleError(
                f"cron expression {self.expression!r} matches no date (such as February 31st)"
            ) from e
        return following.timestamp()

    def to_json(self) -> dict[str, Any]:
        """
        The recurrence as a JSON-ready dict (see :meth:`from_json`).
        """
        return {
            "kind": self.kind.value,
            "expression": self.expression,
            "interval": self.interval,
            "timezone": self.timezone,
        }

    @classmethod
    def from_json(cls, data: Any) -> Recurrence:
        """
        Read a recurrence written by :meth:`to_json`, checking it again.

        :raises ScheduleError: if the data is not a valid recurrence.
        """
        if not isinstance(data, dict):
            raise ScheduleError(f"expected a recurrence object, got {data!r}")
        kind = data.get("kind")
        expression = data.get("expression")
        timezone = data.get("timezone")
        if not isinstance(expression, str) or not (timezone is None or isinstance(timezone, str)):
            raise ScheduleError(f"expected a recurrence object, got {data!r}")
        if kind == RecurrenceKind.CRON.value:
            return cls.cron(expression, timezone)
        if kind == RecurrenceKind.EVERY.value:
            interval = data.get("interval")
            if not isinstance(interval, (int, float)) or isinstance(interval, bool):
                raise ScheduleError(f"expected an interval in seconds, got {interval!r}")
            recurrence = cls.every(float(interval), timezone)
            return cls(RecurrenceKind.EVERY, expression, recurrence.interval, timezone)
        raise ScheduleError(f"expected recurrence kind 'cron' or 'every', got {kind!r}")

    def __str__(self) -> str:
        if self.kind is RecurrenceKind.EVERY:
            return f"every {self.expression}"
        suffix = f" ({self.timezone})" if self.timezone else ""
        return f"cron {self.expression}{suffix}"


def parse_recurrence(text: str, timezone: str | None = None) -> Recurrence:
    """
    Read a recurrence from text.

    :param text: ``"every 10m"`` / ``"@every 10m"`` for an interval, otherwise
        a cron expression (``"0 9 * * mon-fri"``, ``"@hourly"``).
    :param timezone: IANA zone for cron expressions (``None``: local time).
    :raises ScheduleError: if it is neither.
    """
    stripped = text.strip()
    lowered = stripped.lower()
    for prefix in ("@every ", "every "):
        if lowered.startswith(prefix):
            return Recurrence.every(stripped[len(prefix) :].strip(), timezone)
    return Recurrence.cron(stripped, timezone)


def next_occurrence(recurrence: Recurrence, previous_due: float, now: float) -> float:
    """
    When a recurring message is due next, after its occurrence that was due at
    ``previous_due`` has been sent (or has failed) at ``now``.

    Occurrences missed while the daemon was down are not caught up one by one:
    the result is always after ``now``, so what fell due is sent once.  An
    interval recurrence keeps its phase (``previous_due + k * interval``) so it
    does not drift by the time each send takes.

    :returns: epoch seconds, strictly after both ``previous_due`` and ``now``.
    """
    if recurrence.kind is RecurrenceKind.EVERY:
        assert recurrence.interval is not None
        step = recurrence.interval
        following = previous_due + step
        if following <= now:
            following = previous_due + (math.floor((now - previous_due) / step) + 1) * step
            # Float rounding may land exactly on now; the next one is after it.
            while following <= now:
                following += step
        return following
    return recurrence.next_after(max(previous_due, now))


def expires_at(occurrence_due: float, lifetime: float = DEFAULT_MAX_LIFETIME) -> float:
    """
    When a message (one occurrence of it, for a recurring one) that fell due
    at ``occurrence_due`` stops being retried.

    :returns: epoch seconds.
    """
    return occurrence_due + lifetime


def is_expired(occurrence_due: float, now: float, lifetime: float = DEFAULT_MAX_LIFETIME) -> bool:
    """
    Whether the maximum queue lifetime has passed for a message that fell due
    at ``occurrence_due``.
    """
    return now >= expires_at(occurrence_due, lifetime)


def _draw(jitter: Jitter) -> float:
    value = jitter.random() if isinstance(jitter, random.Random) else jitter()
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"jitter must return a float in [0, 1], got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """
    Exponential backoff with jitter for temporary failures (RFC 5321 section
    4.5.4.1: retry no sooner than every 30 minutes is the classic advice;
    the defaults start at one minute and grow to an hour, which suits a relay
    one controls).

    The n-th retry waits ``min(maximum, initial * factor ** (n - 1))`` scaled
    by a random factor in ``[1 - jitter, 1 + jitter]`` so that messages that
    failed together do not all retry together.

    :ivar initial: the first delay, seconds.
    :ivar factor: growth per attempt.
    :ivar maximum: the longest delay, seconds (before jitter).
    :ivar jitter: the proportion of random spread, from 0 (none) to 1.
    :ivar lifetime: maximum queue lifetime, seconds, counted from when the
        message (occurrence) fell due.
    """

    initial: float = 60.0
    factor: float = 2.0
    maximum: float = 3600.0
    jitter: float = 0.2
    lifetime: float = DEFAULT_MAX_LIFETIME

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.factor >= 1 and self.maximum >= self.initial):
            raise ValueError(
                "expected initial > 0, factor >= 1 and maximum >= initial, got "
                f"initial={self.initial!r} factor={self.factor!r} maximum={self.maximum!r}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"expected jitter between 0 and 1, got {self.jitter!r}")
        if not self.lifetime >= 0:
            raise ValueError(f"expected a lifetime of 0 seconds or more, got {self.lifetime!r}")

    def delay(self, failures: int, jitter: Jitter) -> float:
        """
        How long to wait after the ``failures``-th failed attempt.

        :param failures: failed attempts so far, 1 or more.
        :param jitter: source of randomness, ``random.Random`` or a callable
            returning a float in ``[0, 1]``.
        :returns: seconds, positive.
        :raises ValueError: if ``failures`` is below 1 or the jitter callable
            returns a number outside ``[0, 1]``.
        """
        if failures < 1:
            raise ValueError(f"expected failures >= 1, got {failures!r}")
        base = self.initial
        # Grow step by step rather than factor ** failures, which overflows a
        # float after a thousand or so failures.
        for _ in range(failures - 1):
            if base >= self.maximum or self.factor == 1:
                break
            base *= self.factor
        base = min(base, self.maximum)
        spread = (2 * _draw(jitter) - 1) * self.jitter
        return base * (1 + spread)

    def next_attempt(
        self, *, failures: int, occurrence_due: float, now: float, jitter: Jitter
    ) -> float | None:
        """
        When to try a temporarily failed message again, or ``None`` if its
        maximum queue lifetime has passed and it should fail.

        The last retry is moved forward to the expiry moment rather than
        skipped, so a message gets one attempt at the end of its lifetime.

        :param failures: failed attempts so far for this occurrence, 1 or more.
        :param occurrence_due: when this message (occurrence) first fell due.
        :param now: the current time, epoch seconds.
        :param jitter: source of randomness (see :meth:`delay`).
        :returns: epoch seconds, or ``None`` when expired.
        """
        deadline = expires_at(occurrence_due, self.lifetime)
        if now >= deadline:
            return None
        return min(now + self.delay(failures, jitter), deadline)
