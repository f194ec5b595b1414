"""
The on-disk form of spool entries: one UTF-8 JSON object,
``{"version": 1, ...}``, written by :func:`encode_entry` and read back by
:func:`decode_entry`.  An entry's state is not in the JSON: the store keeps it
in the entry's folder, so a state change is a rename.

Sans-IO: values in, bytes out and back, or :class:`EnvelopeError`; nothing
here touches files or imports Twisted.  The values themselves are in
:mod:`.envelope`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from txsmtpclient.spool.envelope import (
    Attempt,
    Dsn,
    Entry,
    EnvelopeError,
    Outcome,
    OutcomeKind,
    Recipient,
    RecipientState,
    ReplyRecord,
    State,
    check_address,
    check_option,
)
from txsmtpclient.spool.schedule import Recurrence, ScheduleError

__all__ = [
    "FORMAT_VERSION",
    "decode_entry",
    "encode_entry",
    "entry_json",
]

#: The version :func:`encode_entry` writes and the newest :func:`decode_entry`
#: reads.
FORMAT_VERSION = 1


def _reply_json(reply: ReplyRecord | None) -> list[Any] | None:
    return None if reply is None else [reply.code, reply.text]


def _attempt_json(attempt: Attempt) -> dict[str, Any]:
    return {
        "at": attempt.at,
        "duration": attempt.duration,
        "relay": attempt.relay,
        "code": attempt.code,
        "text": attempt.text,
        "queue_id": attempt.queue_id,
        "temporary": attempt.temporary,
        "delivered": list(attempt.delivered),
        "refused": {a: _reply_json(r) for a, r in attempt.refused.items()},
        "ambiguous": attempt.ambiguous,
    }


def encode_entry(entry: Entry) -> bytes:
    """
    The entry's on-disk form: one UTF-8 JSON object with ``"version": 1``.
    The state is left out (the folder holds it).
    """
    data: dict[str, Any] = {
        "version": FORMAT_VERSION,
        "id": entry.id,
        "created": entry.created,
        "due": entry.due,
        "occurrence_due": entry.occurrence_due,
        "occurrences": entry.occurrences,
        "sender": entry.sender,
        "recipients": [
            {"address": r.address, "state": r.state.value, "reply": _reply_json(r.reply)}
            for r in entry.recipients
        ],
        "mail_options": list(entry.mail_options),
        "rcpt_options": list(entry.rcpt_options),
        "dsn": None
        if entry.dsn is None
        else {"ret": entry.dsn.ret, "envid": entry.dsn.envid, "notify": list(entry.dsn.notify)},
        "recurrence": None if entry.recurrence is None else entry.recurrence.to_json(),
        "size": entry.size,
        "attempts": [_attempt_json(a) for a in entry.attempts],
        "outcome": None
        if entry.outcome is None
        else {
            "at": entry.outcome.at,
            "kind": entry.outcome.kind.value,
            "code": entry.outcome.code,
            "text": entry.outcome.text,
            "queue_id": entry.outcome.queue_id,
        },
    }
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode(
        "utf-8"
    )


def entry_json(entry: Entry) -> dict[str, Any]:
    """
    The entry as a JSON-ready dict for people and programs: its on-disk form
    (:func:`encode_entry`) plus its ``"state"``.
    """
    data: dict[str, Any] = json.loads(encode_entry(entry))
    data["state"] = entry.state.value
    return data


class _Reader:
    """
    Typed field access that turns every mistake into an :class:`EnvelopeError`
    naming the field.
    """

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise EnvelopeError(f"{where}: expected an object, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.where = where

    def _get(self, key: str, default: Any) -> Any:
        if key not in self.data:
            if default is _REQUIRED:
                raise EnvelopeError(f"{self.where}: missing field {key!r}")
            return default
        return self.data[key]

    def text(self, key: str, default: Any = None) -> str:
        value = self._get(key, _REQUIRED if default is None else default)
        if not isinstance(value, str):
            raise EnvelopeError(f"{self.where}.{key}: expected a string, got {value!r}")
        return value

    def opt_str(self, key: str) -> str | None:
        value = self._get(key, None)
        if value is not None and not isinstance(value, str):
            raise EnvelopeError(f"{self.where}.{key}: expected a string or null, got {value!r}")
        return value

    def number(self, key: str, default: Any = None) -> float:
        value = self._get(key, _REQUIRED if default is None else default)
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise EnvelopeError(f"{self.where}.{key}: expected a number, got {value!r}")
        return float(value)

    def opt_int(self, key: str) -> int | None:
        value = self._get(key, None)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise EnvelopeError(f"{self.where}.{key}: expected an integer or null, got {value!r}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise EnvelopeError(f"{self.where}.{key}: expected a list of strings, got {value!r}")
        return tuple(value)

    def items(self, key: str) -> list[Any]:
        value = self._get(key, [])
        if not isinstance(value, list):
            raise EnvelopeError(f"{self.where}.{key}: expected a list, got {value!r}")
        return value


_REQUIRED: Any = object()


def _read_reply(data: Any, where: str) -> ReplyRecord | None:
    if data is None:
        return None
    if (
        not isinstance(data, list)
        or len(data) != 2
        or not isinstance(data[0], int)
        or isinstance(data[0], bool)
        or not isinstance(data[1], str)
    ):
        raise EnvelopeError(f"{where}: expected [code, text] or null, got {data!r}")
    return ReplyRecord(data[0], data[1])


def _read_attempt(data: Any, where: str) -> Attempt:
    r = _Reader(data, where)
    refused_data = r._get("refused", {})
    if not isinstance(refused_data, dict):
        raise EnvelopeError(f"{where}.refused: expected an object, got {refused_data!r}")
    refused: dict[str, ReplyRecord] = {}
    for address, reply in refused_data.items():
        record = _read_reply(reply, f"{where}.refused[{address!r}]")
        if record is None:
            raise EnvelopeError(f"{where}.refused[{address!r}]: expected [code, text]")
        refused[address] = record
    temporary = r._get("temporary", False)
    if not isinstance(temporary, bool):
        raise EnvelopeError(f"{where}.temporary: expected true or false, got {temporary!r}")
    # Absent in entries written before the field existed.
    ambiguous = r._get("ambiguous", False)
    if not isinstance(ambiguous, bool):
        raise EnvelopeError(f"{where}.ambiguous: expected true or false, got {ambiguous!r}")
    return Attempt(
        at=r.number("at"),
        duration=r.number("duration", 0.0),
        relay=r.text("relay", ""),
        code=r.opt_int("code"),
        text=r.text("text", ""),
        queue_id=r.opt_str("queue_id"),
        temporary=temporary,
        delivered=r.strings("delivered"),
        refused=refused,
        ambiguous=ambiguous,
    )


def decode_entry(data: bytes, *, id: str, state: State) -> Entry:
    """
    Read an entry written by :func:`encode_entry`.

    :param data: the file's bytes.
    :param id: the id the file name gives; the content must agree.
    :param state: the folder the file was read from.
    :returns: the entry.
    :raises EnvelopeError: if the bytes are not a well-formed envelope of a
        known version, or name another id, or hold a bad address, option or
        recurrence.
    """
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise EnvelopeError(f"envelope {id}: not UTF-8 JSON ({e})") from e
    r = _Reader(raw, f"envelope {id}")
    version = r._get("version", _REQUIRED)
    if version != FORMAT_VERSION:
        raise EnvelopeError(
            f"envelope {id}: format version {version!r} is not one this "
            f"txsmtpclient reads (expected {FORMAT_VERSION})"
        )
    if r.text("id") != id:
        raise EnvelopeError(f"envelope {id}: names another id, {r.text('id')!r}")
    recipients = []
    for index, item in enumerate(r.items("recipients")):
        rr = _Reader(item, f"envelope {id}.recipients[{index}]")
        try:
            state_value = RecipientState(rr.text("state", RecipientState.PENDING.value))
        except ValueError as e:
            raise EnvelopeError(f"envelope {id}.recipients[{index}]: bad state") from e
        recipients.append(
            Recipient(
                check_address(rr.text("address"), what="recipient"),
                state_value,
                _read_reply(rr._get("reply", None), f"envelope {id}.recipients[{index}].reply"),
            )
        )
    if not recipients:
        raise EnvelopeError(f"envelope {id}: no recipients")
    dsn = None
    if r._get("dsn", None) is not None:
        d = _Reader(r.data["dsn"], f"envelope {id}.dsn")
        dsn = Dsn(d.opt_str("ret"), d.opt_str("envid"), d.strings("notify"))
    recurrence = None
    if r._get("recurrence", None) is not None:
        try:
            recurrence = Recurrence.from_json(r.data["recurrence"])
        except ScheduleError as e:
            raise EnvelopeError(f"envelope {id}.recurrence: {e}") from e
    outcome = None
    if r._get("outcome", None) is not None:
        o = _Reader(r.data["outcome"], f"envelope {id}.outcome")
        try:
            kind = OutcomeKind(o.text("kind"))
        except ValueError as e:
            raise EnvelopeError(f"envelope {id}.outcome.kind: unknown") from e
        outcome = Outcome(
            o.number("at"), kind, o.opt_int("code"), o.text("text", ""), o.opt_str("queue_id")
        )
    due = r.number("due")
    size = r.opt_int("size") or 0
    occurrences = r.opt_int("occurrences") or 0
    return Entry(
        id=id,
        sender=check_address(r.text("sender", ""), what="sender"),
        recipients=tuple(recipients),
        due=due,
        created=r.number("created"),
        state=state,
        mail_options=tuple(check_option(o) for o in r.strings("mail_options")),
        rcpt_options=tuple(check_option(o) for o in r.strings("rcpt_options")),
        dsn=dsn,
        recurrence=recurrence,
        occurrence_due=r.number("occurrence_due", due),
        occurrences=occurrences,
        attempts=tuple(
            _read_attempt(a, f"envelope {id}.attempts[{i}]")
            for i, a in enumerate(r.items("attempts"))
        ),
        outcome=outcome,
        size=size,
    )
