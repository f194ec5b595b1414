"""
Reading the control plane's request input into spool calls: the JSON body of
``POST /v1/messages`` and ``.../reschedule``, the list query, the
``Idempotency-Key`` header and the paging cursor.  Every fault is an
:class:`~._web.ApiError` (400) naming the field.

These functions do no I/O of their own but may be slow on big bodies (JSON,
base64, cron parsing): the API runs them off the reactor thread.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from typing import Any

from txsmtpclient.control._web import ApiError
from txsmtpclient.spool.envelope import (
    Dsn,
    Entry,
    EnvelopeError,
    State,
    check_address,
    check_options,
    make_recipients,
)
from txsmtpclient.spool.schedule import (
    ScheduleError,
    parse_duration,
    parse_recurrence,
    parse_time,
    zone,
)

__all__ = [
    "ENQUEUE_FIELDS",
    "LISTABLE_STATES",
    "decode_cursor",
    "encode_cursor",
    "idempotency_key",
    "parse_enqueue",
    "parse_when",
    "sort_key",
    "summary",
]

#: The members a ``POST /v1/messages`` body may have.
ENQUEUE_FIELDS = frozenset(
    {
        "from",
        "to",
        "message",
        "message_base64",
        "mail_options",
        "rcpt_options",
        "dsn",
        "at",
        "in",
        "cron",
        "every",
        "timezone",
    }
)

#: States ``GET /v1/messages?state=`` takes (corrupt files are not entries).
LISTABLE_STATES = tuple(s.value for s in State if s is not State.CORRUPT)


def _bad(field: str, message: str) -> ApiError:
    return ApiError(400, f"{field}: {message}", field=field)


def _object(body: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object as the body", field="body")
    for name in body:
        if name not in allowed:
            raise _bad(name, f"unknown field; expected some of {', '.join(sorted(allowed))}")
    return body


def _text(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise _bad(field, f"expected a string, got {type(value).__name__}")
    return value


def _strings(body: Mapping[str, Any], field: str) -> Sequence[str]:
    value = body.get(field, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(field, "expected a list of strings")
    return value


def _number(value: Any) -> float | None:
    # bool is an int to Python, never a time to a caller.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def parse_when(body: Mapping[str, Any], now: float, *, recurring: bool) -> dict[str, Any]:
    """
    The schedule members of a body, as ``enqueue`` keywords (``at``,
    ``recurrence``): at most one of ``at`` (epoch seconds, or ISO 8601 text
    read in ``timezone``), ``in`` (seconds, or a duration such as ``"10m"``),
    and when ``recurring``, ``cron`` or ``every``.

    :raises ApiError: 400 naming the member at fault.
    """
    names = ("at", "in", "cron", "every") if recurring else ("at", "in")
    given = [n for n in names if body.get(n) is not None]
    if len(given) > 1:
        raise _bad(given[1], f"give only one of {', '.join(names)}")
    tz = _text(body, "timezone")
    try:
        zone(tz)
    except ScheduleError as e:
        raise _bad("timezone", str(e)) from None
    if not given:
        return {}
    field = given[0]
    value = body[field]
    try:
        if field == "at":
            epoch = _number(value)
            if epoch is None:
                if not isinstance(value, str):
                    raise ScheduleError("expected epoch seconds or an ISO 8601 time")
                epoch = parse_time(value, now=now, timezone=tz).timestamp()
            return {"at": epoch}
        if field == "in":
            seconds = _number(value)
            if seconds is None:
                if not isinstance(value, str):
                    raise ScheduleError("expected seconds or a duration such as '10m'")
                seconds = parse_duration(value)
            if seconds < 0:
                raise ScheduleError("expected a duration of zero or more")
            return {"at": now + seconds}
        if not isinstance(value, str):
            raise ScheduleError("expected a string")
        text = value if field == "cron" else f"every {value}"
        return {"recurrence": parse_recurrence(text, tz)}
    except ScheduleError as e:
        raise _bad(field, str(e)) from None


def parse_enqueue(body: Any, now: float) -> dict[str, Any]:
    """
    The keyword arguments of ``IQueue.enqueue`` from a ``POST /v1/messages``
    body, each member checked with the spool's own checks.

    :raises ApiError: 400 naming the member at fault.
    """
    data = _object(body, ENQUEUE_FIELDS)
    sender = data.get("from")
    if not isinstance(sender, str):
        raise _bad("from", "required: the envelope sender as a string ('' for the null sender)")
    try:
        check_address(sender, what="sender")
    except EnvelopeError as e:
        raise _bad("from", str(e)) from None
    if "to" not in data:
        raise _bad("to", "required: a list of recipient addresses")
    recipients = _strings(data, "to")
    try:
        make_recipients(recipients)
    except EnvelopeError as e:
        raise _bad("to", str(e)) from None
    text, encoded = _text(data, "message"), _text(data, "message_base64")
    if (text is None) == (encoded is None):
        raise _bad("message", "give exactly one of message (text) and message_base64")
    if encoded is not None:
        try:
            message = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _bad("message_base64", f"not base64: {e}") from None
    else:
        assert text is not None
        message = text.encode("utf-8")
    if not message:
        raise _bad("message", "must not be empty")
    options: dict[str, Any] = {}
    for field in ("mail_options", "rcpt_options"):
        try:
            options[field] = check_options(_strings(data, field))
        except EnvelopeError as e:
            raise _bad(field, str(e)) from None
    dsn = data.get("dsn")
    if dsn is not None:
        fields = _object(dsn, frozenset({"ret", "envid", "notify"}))
        notify = fields.get("notify", [])
        if isinstance(notify, str):
            notify = [w.strip() for w in notify.split(",") if w.strip()]
        try:
            if not isinstance(notify, list) or not all(isinstance(w, str) for w in notify):
                raise EnvelopeError("notify: expected a list of strings")
            options["dsn"] = Dsn(_text(fields, "ret"), _text(fields, "envid"), tuple(notify))
        except (EnvelopeError, ApiError) as e:
            raise _bad("dsn", str(e)) from None
    return {
        "message": message,
        "sender": sender,
        "recipients": recipients,
        **options,
        **parse_when(data, now, recurring=True),
    }


def idempotency_key(header: bytes | None) -> str | None:
    """
    The ``Idempotency-Key`` header's value, if given.

    :raises ApiError: 400 unless it is 1 to 255 printable ASCII characters.
    """
    if header is None:
        return None
    try:
        key = header.decode("ascii")
    except UnicodeDecodeError:
        key = ""
    if not 0 < len(key) <= 255 or not key.isprintable():
        raise ApiError(
            400,
            "Idempotency-Key: expected 1 to 255 printable ASCII characters",
            field="Idempotency-Key",
        )
    return key


def sort_key(entry: Entry) -> tuple[float, str]:
    """
    The order of a listing (the spool's own): queued entries by due time,
    the others by creation, then by id.
    """
    return (entry.due if entry.state is State.QUEUED else entry.created, entry.id)


def encode_cursor(key: tuple[float, str]) -> str:
    """
    An opaque cursor naming the last entry of a page.
    """
    raw = json.dumps([key[0], key[1]], separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """
    The sort key a cursor from :func:`encode_cursor` names.

    :raises ApiError: 400 for anything else.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw.decode("ascii"))
        number = _number(value[0]) if isinstance(value, list) and len(value) == 2 else None
        if number is None or not isinstance(value[1], str):
            raise ValueError("not a cursor")
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise _bad("cursor", "not a cursor this API returned") from None
    return number, value[1]


def summary(entry: Entry) -> dict[str, Any]:
    """
    An entry in brief, as listings show it (``GET /v1/messages/{id}`` has the
    whole record).
    """
    last = entry.attempts[-1] if entry.attempts else None
    outcome = entry.outcome
    return {
        "id": entry.id,
        "state": entry.state.value,
        "sender": entry.sender,
        "recipients": [{"address": r.address, "state": r.state.value} for r in entry.recipients],
        "created": entry.created,
        "due": entry.due,
        "size": entry.size,
        "recurrence": None if entry.recurrence is None else str(entry.recurrence),
        "attempts": len(entry.attempts),
        "last_attempt": None
        if last is None
        else {"at": last.at, "code": last.code, "text": last.text, "temporary": last.temporary},
        "outcome": None
        if outcome is None
        else {"at": outcome.at, "kind": outcome.kind.value, "code": outcome.code},
    }
