"""
Tests for txsmtpclient.spool.schedule: times, durations, recurrences, backoff
and expiry (pure tier: numbers in, numbers out).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsmtpclient.spool.schedule import (
    DEFAULT_MAX_LIFETIME,
    Recurrence,
    RecurrenceKind,
    RetryPolicy,
    ScheduleError,
    expires_at,
    is_expired,
    next_occurrence,
    parse_duration,
    parse_recurrence,
    parse_time,
    to_epoch,
)

UTC = timezone.utc


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


DURATIONS = [
    ("90", 90.0),
    ("0", 0.0),
    ("90s", 90.0),
    ("10m", 600.0),
    ("2h", 7200.0),
    ("1d", 86400.0),
    ("1w", 604800.0),
    ("1h30m", 5400.0),
    ("1 day", 86400.0),
    ("2 hours 5 minutes", 7500.0),
    ("1.5h", 5400.0),
    ("PT10M", 600.0),
    ("P1DT2H", 93600.0),
    ("pt30s", 30.0),
]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_parse_duration(text: str, seconds: float) -> None:
    """
    Durations in short units, words and ISO 8601 become seconds.
    """
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "  ", "10x", "-5", "m", "P", "PT", "1h-2m", "nan", "ten"])
def test_parse_duration_rejects(text: str) -> None:
    """
    Anything that is not a non-negative duration raises ScheduleError
    naming the text.
    """
    with pytest.raises(ScheduleError, match="duration"):
        parse_duration(text)


@given(st.integers(0, 400), st.integers(0, 59), st.integers(0, 59))
def test_parse_duration_combinations(hours: int, minutes: int, seconds: int) -> None:
    """
    Any h/m/s combination adds up, in short and ISO 8601 forms.
    """
    total = hours * 3600 + minutes * 60 + seconds
    assert parse_duration(f"{hours}h{minutes}m{seconds}s") == total
    assert parse_duration(f"PT{hours}H{minutes}M{seconds}S") == total


def test_parse_time_with_offset() -> None:
    """
    An explicit offset wins over the time zone argument.
    """
    now = epoch("2030-01-01T00:00:00+00:00")
    when = parse_time("2030-01-02T09:30:00+01:00", now=now, timezone="America/New_York")
    assert when.timestamp() == epoch("2030-01-02T08:30:00+00:00")
    assert parse_time("2030-01-02T08:30:00Z", now=now).timestamp() == when.timestamp()


def test_parse_time_naive_in_zone_honours_dst() -> None:
    """
    A time without offset is read in the IANA zone, with that day's DST
    offset (Paris is +01:00 in January and +02:00 in July).
    """
    now = epoch("2030-01-01T00:00:00+00:00")
    winter = parse_time("2030-01-15T12:00", now=now, timezone="Europe/Paris")
    summer = parse_time("2030-07-15 12:00:00", now=now, timezone="Europe/Paris")
    assert winter.timestamp() == epoch("2030-01-15T11:00:00+00:00")
    assert summer.timestamp() == epoch("2030-07-15T10:00:00+00:00")


def test_parse_time_naive_local(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Without a zone, a naive time is the system's local time.
    """
    when = parse_time("2030-03-01T12:00", now=0.0)
    assert when.timestamp() == datetime(2030, 3, 1, 12, 0).timestamp()
    assert when.tzinfo is not None


def test_parse_time_date_only_is_midnight() -> None:
    """
    A date alone is midnight in the zone.
    """
    when = parse_time("2030-05-06", now=0.0, timezone="UTC")
    assert when.timestamp() == epoch("2030-05-06T00:00:00+00:00")


def test_parse_time_clock_time_is_next_occurrence() -> None:
    """
    "09:30" is today's 09:30 if still ahead, else tomorrow's.
    """
    morning = epoch("2030-01-01T08:00:00+00:00")
    noon = epoch("2030-01-01T12:00:00+00:00")
    assert parse_time("09:30", now=morning, timezone="UTC").timestamp() == epoch(
        "2030-01-01T09:30:00+00:00"
    )
    assert parse_time("9:30", now=noon, timezone="UTC").timestamp() == epoch(
        "2030-01-02T09:30:00+00:00"
    )


def test_parse_time_now() -> None:
    """
    "now" is the given current time.
    """
    assert parse_time("now", now=1234.5).timestamp() == 1234.5


@pytest.mark.parametrize("text", ["tomorrow", "2030-13-01", "25:00", "12:61", ""])
def test_parse_time_rejects(text: str) -> None:
    """
    Unreadable times raise ScheduleError.
    """
    with pytest.raises(ScheduleError):
        parse_time(text, now=0.0, timezone="UTC")


def test_parse_time_rejects_unknown_zone() -> None:
    """
    An unknown zone raises ScheduleError naming it.
    """
    with pytest.raises(ScheduleError, match="Mars/Olympus"):
        parse_time("2030-01-01T00:00", now=0.0, timezone="Mars/Olympus")


def test_to_epoch() -> None:
    """
    Datetimes and numbers become epoch seconds; other types are refused.
    """
    assert to_epoch(datetime(2030, 1, 1, tzinfo=UTC)) == epoch("2030-01-01T00:00:00+00:00")
    assert to_epoch(5) == 5.0
    with pytest.raises(TypeError):
        to_epoch("5")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        to_epoch(True)


def test_cron_in_time_zone_follows_dst() -> None:
    """
    "0 9 * * *" in Europe/Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    """
    daily = Recurrence.cron("0 9 * * *", "Europe/Paris")
    assert daily.next_after(epoch("2030-01-10T00:00:00+00:00")) == epoch(
        "2030-01-10T08:00:00+00:00"
    )
    assert daily.next_after(epoch("2030-07-10T00:00:00+00:00")) == epoch(
        "2030-07-10T07:00:00+00:00"
    )


def test_cron_next_is_strictly_after() -> None:
    """
    At an occurrence's exact moment, the next one is the following occurrence.
    """
    every5 = Recurrence.cron("*/5 * * * *", "UTC")
    at = epoch("2030-01-01T10:05:00+00:00")
    assert every5.next_after(at) == at + 300


def test_cron_rejects_bad_expression() -> None:
    """
    Expressions croniter rejects, and unknown zones, raise ScheduleError.
    """
    with pytest.raises(ScheduleError, match="cron"):
        Recurrence.cron("61 * * * *")
    with pytest.raises(ScheduleError):
        Recurrence.cron("* * * * *", "Nowhere/Land")


def test_parse_recurrence() -> None:
    """
    "every 10m" is an interval; anything else is a cron expression.
    """
    every = parse_recurrence("every 10m")
    assert (every.kind, every.interval) == (RecurrenceKind.EVERY, 600.0)
    assert parse_recurrence("@every 2h").interval == 7200.0
    cron = parse_recurrence("@daily", "UTC")
    assert (cron.kind, cron.expression, cron.timezone) == (RecurrenceKind.CRON, "@daily", "UTC")
    with pytest.raises(ScheduleError):
        parse_recurrence("every 0s")
    with pytest.raises(ScheduleError):
        parse_recurrence("whenever")


def test_recurrence_json_round_trip() -> None:
    """
    Recurrences survive to_json/from_json; bad data raises ScheduleError.
    """
    for recurrence in (Recurrence.cron("0 9 * * mon-fri", "Europe/Paris"), Recurrence.every("1h")):
        assert Recurrence.from_json(recurrence.to_json()) == recurrence
    bads: list[object] = [None, [], {"kind": "sometimes", "expression": "x"}, {"kind": "every"}]
    for bad in bads:
        with pytest.raises(ScheduleError):
            Recurrence.from_json(bad)


def test_missed_cron_occurrences_are_sent_once() -> None:
    """
    A daemon down for three days sends the missed message once; the next
    one is the first occurrence after now, not the day after the old one.
    """
    daily = Recurrence.cron("0 9 * * *", "UTC")
    previous = epoch("2030-01-01T09:00:00+00:00")
    now = epoch("2030-01-04T10:00:00+00:00")
    assert next_occurrence(daily, previous, now) == epoch("2030-01-05T09:00:00+00:00")


def test_missed_interval_occurrences_keep_phase() -> None:
    """
    An interval recurrence skips missed occurrences and keeps its phase.
    """
    hourly = Recurrence.every("1h")
    previous = 1_000_000.0
    assert next_occurrence(hourly, previous, previous + 2) == previous + 3600
    assert next_occurrence(hourly, previous, previous + 5 * 3600 + 10) == previous + 6 * 3600
    # Exactly on an occurrence: that one has just been sent, the next follows.
    assert next_occurrence(hourly, previous, previous + 3600) == previous + 7200


def test_backoff_grows_and_caps() -> None:
    """
    With a centred jitter draw the delays are 60, 120, 240 ... up to 3600.
    """
    policy = RetryPolicy()
    delays = [policy.delay(n, lambda: 0.5) for n in range(1, 10)]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert policy.delay(100_000, lambda: 0.5) == 3600


def test_backoff_jitter_bounds() -> None:
    """
    Jitter spreads a delay by at most the policy's proportion each way, and
    a seeded Random gives the same delays twice.
    """
    policy = RetryPolicy(initial=100, jitter=0.2)
    assert policy.delay(1, lambda: 0.0) == pytest.approx(80)
    assert policy.delay(1, lambda: 1.0) == pytest.approx(120)
    first = [policy.delay(3, random.Random(7)) for _ in range(3)]
    assert first == [policy.delay(3, random.Random(7)) for _ in range(3)]
    rng = random.Random(1)
    draws = [policy.delay(2, rng) for _ in range(200)]
    assert all(160 <= d <= 240 for d in draws)
    assert len(set(draws)) > 100


def test_backoff_rejects_bad_input() -> None:
    """
    Zero failures, a jitter source outside [0, 1], and inconsistent policies
    raise ValueError.
    """
    policy = RetryPolicy()
    with pytest.raises(ValueError, match="failures"):
        policy.delay(0, lambda: 0.5)
    with pytest.raises(ValueError, match="jitter"):
        policy.delay(1, lambda: 2.0)
    with pytest.raises(ValueError):
        RetryPolicy(initial=10, maximum=5)
    with pytest.raises(ValueError):
        RetryPolicy(jitter=1.5)


def test_retry_until_lifetime_then_expire() -> None:
    """
    Retries come at now + delay, the last is pulled in to the expiry moment,
    and after it the message expires (None).
    """
    policy = RetryPolicy(initial=60, maximum=3600, jitter=0, lifetime=4000)
    due = 10_000.0
    assert policy.next_attempt(
        failures=1, occurrence_due=due, now=due, jitter=random.Random()
    ) == (due + 60)
    late = due + 3900
    assert policy.next_attempt(failures=9, occurrence_due=due, now=late, jitter=lambda: 0.5) == (
        due + 4000
    )
    assert (
        policy.next_attempt(failures=10, occurrence_due=due, now=due + 4000, jitter=lambda: 0.5)
        is None
    )


def test_default_lifetime_is_five_days() -> None:
    """
    The default maximum queue lifetime is five days.
    """
    assert DEFAULT_MAX_LIFETIME == 5 * 86400
    assert RetryPolicy().lifetime == DEFAULT_MAX_LIFETIME
    assert expires_at(100.0) == 100.0 + 5 * 86400
    assert not is_expired(100.0, 100.0 + 5 * 86400 - 1)
    assert is_expired(100.0, 100.0 + 5 * 86400)


SANS_IO_CHECK = """
import sys, types
# Load the spool modules without running txsmtpclient/__init__.py, which
# imports the Twisted client; the spool's sans-IO modules must not need it.
package = types.ModuleType("txsmtpclient")
package.__path__ = [sys.argv[1]]
sys.modules["txsmtpclient"] = package
import txsmtpclient.spool.schedule, txsmtpclient.spool.envelope
import txsmtpclient.spool.store, txsmtpclient.spool
loaded = sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted."))
print(loaded)
"""


def test_spool_modules_do_not_import_twisted() -> None:
    """
    schedule, envelope, store and the spool package import nothing from
    Twisted (checked in a fresh interpreter).
    """
    import txsmtpclient

    package_dir = os.path.dirname(txsmtpclient.__file__)
    result = subprocess.run(
        [sys.executable, "-c", SANS_IO_CHECK, package_dir],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == "[]"
