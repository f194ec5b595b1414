"""
Tests for txsmtpclient.spool.envelope: entry values, their transitions and
their versioned JSON encoding (pure tier).
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from txsmtpclient.spool.codec import FORMAT_VERSION, decode_entry, encode_entry
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
    apply_attempt,
    check_address,
    check_option,
    is_valid_id,
    make_recipients,
    parse_queue_id,
    start_next_occurrence,
)
from txsmtpclient.spool.schedule import Recurrence

ID = "6615ae2d8caa3-7967-af987231"


def make_entry(**changes: Any) -> Entry:
    entry = Entry(
        id=ID,
        sender="alice@example.com",
        recipients=(Recipient("bob@example.com"), Recipient("carol@example.com")),
        due=1_900_000_000.25,
        created=1_899_999_000.5,
        occurrence_due=1_900_000_000.25,
        size=123,
    )
    return replace(entry, **changes)


FULL = make_entry(
    state=State.SENDING,
    mail_options=("SMTPUTF8", "BODY=8BITMIME"),
    rcpt_options=("NOTIFY=NEVER",),
    dsn=Dsn("HDRS", "env id+1", ("SUCCESS", "FAILURE")),
    recurrence=Recurrence.cron("0 9 * * mon-fri", "Europe/Paris"),
    occurrences=3,
    recipients=(
        Recipient("bob@example.com", RecipientState.DELIVERED, ReplyRecord(250, "2.0.0 Ok")),
        Recipient("carol@example.com", RecipientState.PENDING, ReplyRecord(451, "4.7.1 later")),
        Recipient("dave@example.com", RecipientState.FAILED, ReplyRecord(550, "5.1.1 no\nsuch")),
    ),
    attempts=(
        Attempt(
            at=1_900_000_001.0,
            duration=0.75,
            relay="tcp:127.0.0.1:2525",
            code=250,
            text="2.0.0 Ok: queued as ABC123",
            queue_id="ABC123",
            temporary=True,
            delivered=("bob@example.com",),
            refused={
                "carol@example.com": ReplyRecord(451, "4.7.1 later"),
                "dave@example.com": ReplyRecord(550, "5.1.1 no\nsuch"),
            },
        ),
        Attempt(
            1_900_000_100.0,
            30.0,
            "tcp:127.0.0.1:2525",
            None,
            "timeout",
            temporary=True,
            ambiguous=True,
        ),
    ),
    outcome=Outcome(1_899_000_000.0, OutcomeKind.DELIVERED, 250, "Ok", "XYZ"),
)


def test_round_trip_every_field() -> None:
    """
    An entry with every field set decodes to an equal entry; the state comes
    from the caller (the folder), not the JSON.
    """
    data = encode_entry(FULL)
    assert b'"state"' not in data.split(b'"recipients"')[0]
    assert decode_entry(data, id=ID, state=State.SENDING) == FULL
    assert decode_entry(data, id=ID, state=State.DONE).state is State.DONE


def test_encoding_is_versioned_json() -> None:
    """
    The on-disk form is one UTF-8 JSON object with the format version.
    """
    data = json.loads(encode_entry(make_entry(sender="jöhn@example.com")))
    assert data["version"] == FORMAT_VERSION == 1
    assert data["sender"] == "jöhn@example.com"
    assert data["id"] == ID


def test_attempt_without_ambiguous_field_reads_as_not_ambiguous() -> None:
    """
    An entry written before attempts recorded ``ambiguous`` decodes with
    ``ambiguous=False``; a recorded ``true`` survives the round trip.
    """
    data = json.loads(encode_entry(FULL))
    assert [a["ambiguous"] for a in data["attempts"]] == [False, True]
    for attempt in data["attempts"]:
        del attempt["ambiguous"]
    old = decode_entry(json.dumps(data).encode(), id=ID, state=State.SENDING)
    assert [a.ambiguous for a in old.attempts] == [False, False]
    assert old.attempts[1] == replace(FULL.attempts[1], ambiguous=False)


def test_attempt_ambiguous_must_be_a_boolean() -> None:
    """
    ``"ambiguous": "yes"`` is an envelope error naming the field.
    """
    data = json.loads(encode_entry(FULL))
    data["attempts"][0]["ambiguous"] = "yes"
    with pytest.raises(EnvelopeError, match=r"attempts\[0\]\.ambiguous"):
        decode_entry(json.dumps(data).encode(), id=ID, state=State.SENDING)


addresses = st.from_regex(
    r"[A-Za-z0-9._%+\-\u00e0-\u00ff]{1,20}@[a-z0-9.\-]{1,20}", fullmatch=True
)


@given(
    sender=st.one_of(st.just(""), addresses),
    recipients=st.lists(addresses, min_size=1, max_size=5, unique=True),
    text=st.text(),
    due=st.floats(0, 4e9),
)
def test_round_trip_property(sender: str, recipients: list[str], text: str, due: float) -> None:
    """
    Any addresses, reply text and due time survive encoding.
    """
    entry = make_entry(
        sender=sender,
        recipients=tuple(Recipient(r) for r in recipients),
        due=due,
        attempts=(Attempt(due, 1.0, "relay", 421, text),),
    )
    assert decode_entry(encode_entry(entry), id=ID, state=State.QUEUED) == entry


def envelope_with(**changes: Any) -> bytes:
    data = json.loads(encode_entry(make_entry()))
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not UTF-8 JSON"),
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "expected an object"),
        (envelope_with(version=2), "format version 2"),
        (envelope_with(version=KeyError), "missing field 'version'"),
        (envelope_with(id="6615ae2d8caa3-7967-00000000"), "another id"),
        (envelope_with(due=KeyError), "missing field 'due'"),
        (envelope_with(due="soon"), "expected a number"),
        (envelope_with(due=True), "expected a number"),
        (envelope_with(recipients=[]), "no recipients"),
        (envelope_with(recipients=[{"address": "a@b\r\nRSET"}]), "control character"),
        (envelope_with(recipients=[{"address": "a@b", "state": "lost"}]), "bad state"),
        (envelope_with(sender="<a@b>"), "bare mailbox"),
        (envelope_with(mail_options=["BODY=8BITMIME X"]), "ESMTP parameter"),
        (envelope_with(mail_options="SMTPUTF8"), "list of strings"),
        (envelope_with(recurrence={"kind": "cron", "expression": "nope"}), "recurrence"),
        (envelope_with(attempts=[{"at": 1.0, "refused": {"a@b": None}}]), "code, text"),
        (envelope_with(outcome={"at": 1.0, "kind": "maybe"}), "outcome.kind"),
        (envelope_with(dsn={"ret": "ALL"}), "RET"),
    ],
)
def test_decode_rejects_malformed(data: bytes, match: str) -> None:
    """
    Malformed envelopes raise EnvelopeError naming the problem.
    """
    with pytest.raises(EnvelopeError, match=match):
        decode_entry(data, id=ID, state=State.QUEUED)


@pytest.mark.parametrize("address", ["a@b\r\n", "a@b\x00", "<a@b>", "a b@c", "a@b\x7f"])
def test_check_address_rejects(address: str) -> None:
    """
    Controls, spaces and angle brackets in an address are refused before
    anything is queued.
    """
    with pytest.raises(EnvelopeError):
        check_address(address)


def test_check_option() -> None:
    """
    ESMTP parameters are single words without controls.
    """
    assert check_option("BODY=8BITMIME") == "BODY=8BITMIME"
    for bad in ("", "A B", "X=\r\n"):
        with pytest.raises(EnvelopeError):
            check_option(bad)


def test_make_recipients_drops_duplicates_and_needs_one() -> None:
    """
    Duplicate recipients are kept once; none at all is an error.
    """
    assert [r.address for r in make_recipients(["a@x", "b@x", "a@x"])] == ["a@x", "b@x"]
    with pytest.raises(EnvelopeError, match="at least one"):
        make_recipients([])
    with pytest.raises(EnvelopeError, match="empty"):
        make_recipients([""])


def test_is_valid_id() -> None:
    """
    Ids are hex time, pid, hex random; nothing that could be a path.
    """
    assert is_valid_id(ID)
    for bad in ("", "../x", "6615ae2d8caa3-7967-af98723", "6615AE2D8CAA3-7967-af987231", "x/y"):
        assert not is_valid_id(bad)


@pytest.mark.parametrize(
    ("text", "queue_id"),
    [
        ("2.0.0 Ok: queued as ABC123", "ABC123"),
        ("Ok: queued as 4F3A2B1C0D", "4F3A2B1C0D"),
        ("OK id=1qXyZ9-000AbC-Dd", "1qXyZ9-000AbC-Dd"),
        (
            "2.6.0 <x@y> [InternalId=12345, Hostname=EX01] Queued mail for delivery",
            "12345",
        ),
        ("2.0.0 OK  1700000000 x1-20020a05600csi.123 - gsmtp", "x1-20020a05600csi.123"),
        ("2.0.0 Ok", None),
        ("Message accepted for delivery", None),
    ],
)
def test_parse_queue_id(text: str, queue_id: str | None) -> None:
    """
    The queue id is found in the usual MTAs' 250 replies, and only there.
    """
    assert parse_queue_id(text) == queue_id


def test_apply_attempt_per_recipient() -> None:
    """
    Accepted recipients are delivered, 5xx-refused failed, 4xx-refused still
    pending with the reply noted; recipients not named stay as they were.
    """
    entry = make_entry(
        recipients=(Recipient("a@x"), Recipient("b@x"), Recipient("c@x"), Recipient("d@x"))
    )
    attempt = Attempt(
        at=entry.due + 1,
        duration=0.5,
        relay="r",
        code=250,
        text="Ok: queued as Q1",
        queue_id="Q1",
        delivered=("a@x",),
        refused={"b@x": ReplyRecord(451, "later"), "c@x": ReplyRecord(550, "unknown")},
    )
    after = apply_attempt(entry, attempt)
    assert after.delivered == ("a@x",)
    assert after.failed == ("c@x",)
    assert after.pending == ("b@x", "d@x")
    assert after.recipients[0].reply == ReplyRecord(250, "Ok: queued as Q1")
    assert after.recipients[1].reply == ReplyRecord(451, "later")
    assert after.attempts == (attempt,)
    assert after.failures == 1


def test_apply_attempt_keeps_bounded_history() -> None:
    """
    Only the newest attempts are kept.
    """
    entry = make_entry()
    for n in range(5):
        entry = apply_attempt(entry, Attempt(entry.due + n, 1, "r", None, f"t{n}"), keep=3)
    assert [a.text for a in entry.attempts] == ["t2", "t3", "t4"]


def test_start_next_occurrence() -> None:
    """
    After an occurrence, every recipient is pending again, the outcome is
    recorded, the count goes up and the entry is due after now.
    """
    entry = make_entry(
        recurrence=Recurrence.every(3600),
        recipients=(Recipient("a@x", RecipientState.DELIVERED), Recipient("b@x")),
    )
    outcome = Outcome(entry.due + 10, OutcomeKind.DELIVERED, 250, "Ok")
    after = start_next_occurrence(entry, outcome, now=entry.due + 10)
    assert after.pending == ("a@x", "b@x")
    assert after.due == after.occurrence_due == entry.due + 3600
    assert after.occurrences == 1
    assert after.outcome == outcome
    with pytest.raises(ValueError, match="does not recur"):
        start_next_occurrence(make_entry(), outcome, now=0)


def test_dsn_validation() -> None:
    """
    RET must be FULL or HDRS; NEVER excludes the other NOTIFY words.
    """
    with pytest.raises(EnvelopeError):
        Dsn(ret="BODY")
    with pytest.raises(EnvelopeError):
        Dsn(notify=("NEVER", "SUCCESS"))
    with pytest.raises(EnvelopeError):
        Dsn(notify=("SOMETIMES",))
    with pytest.raises(EnvelopeError):
        Dsn(envid="a\r\nb")


def test_outcome_from_attempt() -> None:
    """
    An outcome built from an attempt carries its reply and queue id, dated
    at the attempt's end.
    """
    attempt = Attempt(100.0, 2.5, "r", 250, "Ok: queued as Z", "Z")
    assert Outcome.from_attempt(attempt, OutcomeKind.DELIVERED) == Outcome(
        102.5, OutcomeKind.DELIVERED, 250, "Ok: queued as Z", "Z"
    )
