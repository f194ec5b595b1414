"""
The spool: a folder of queued messages that any process can write into.

Layout (Maildir-like; every state is a folder, every state change a rename)::

    SPOOL/
      tmp/        files being written: {pid}.{random}.tmp
      msg/        message bytes, written once: {id}.eml
      queue/      waiting entries, due time first: {due_ms:015d}.{id}.json
      sending/    entries claimed by process pid: {id}.{pid}.json
      done/       {id}.json
      failed/     {id}.json
      cancelled/  {id}.json
      held/       {id}.json, kept back for an operator
      corrupt/    entries set aside, each with a {name}.reason text file
      held/       {id}.json, held by an operator: never sent until released
      keys/       idempotency keys: {sha256(key)}.id holding the first id

An entry's envelope (:class:`~txsmtpclient.spool.envelope.Entry`, JSON) is
always written whole to ``tmp/``, fsynced, and renamed into place; its folder
is its state.  A change of content happens only while the entry is held in
``sending/`` under the holder's pid (written to ``tmp/``, fsynced, renamed over
the held file), and a change of state is one rename.  So a SIGKILL at any
moment leaves each message in exactly one well-formed place, plus at worst an
orphan file in ``tmp/`` or ``msg/`` that :meth:`Spool.recover` removes.

Due entries are found from file names alone: ``queue/`` is listed with
:func:`os.scandir` (and not even that while the folder is unchanged) and only
due entries are read.

Every method of :class:`Spool` does blocking file I/O (each state change
fsyncs a file and a folder).  A Twisted daemon calls them through
``twisted.internet.threads.deferToThread``; methods on different ids may run
in different threads at once.  The spool assumes one host: a held entry's
owner is recognised by pid.  For several machines, implement :class:`IQueue`
over a shared database instead.

For several users to write into one spool, make the folder group-writable
with the setgid bit and run writers with ``umask 002``; files get the mode
the umask allows.

The interface and its errors are in :mod:`.queue` (and importable from here
too); the file mechanics (names, atomic writes and renames, the queue index,
crash recovery) in :mod:`._files`.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import BinaryIO

from txsmtpclient.spool._files import (
    FINISHED,
    ORPHAN_AGE,
    new_id,
    parse_held_name,
    parse_queue_name,
    raise_if_full,
    unlink_if_present,
)
from txsmtpclient.spool._holds import Holds
from txsmtpclient.spool.codec import encode_entry
from txsmtpclient.spool.envelope import (
    Attempt,
    Dsn,
    Entry,
    EnvelopeError,
    Outcome,
    OutcomeKind,
    Recipient,
    RecipientState,
    State,
    apply_attempt,
    check_address,
    check_options,
    is_valid_id,
    make_recipients,
    start_next_occurrence,
)
from txsmtpclient.spool.queue import (
    EntryBusy,
    EntryNotFound,
    EntryStateError,
    IQueue,
    SpoolError,
    SpoolFull,
)
from txsmtpclient.spool.schedule import Recurrence, parse_recurrence, to_epoch

__all__ = [
    "ORPHAN_AGE",
    "EntryBusy",
    "EntryNotFound",
    "EntryStateError",
    "IQueue",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "new_id",
]


class Spool(Holds):
    """
    A spool folder (see the module docstring for the layout).  Implements
    :class:`IQueue`.  Every method blocks on file I/O.

    :param path: the spool folder; created with its subfolders if missing.
    :param clock: returns the current time in epoch seconds (inject
        ``reactor.seconds`` or a fake in tests).
    :param fsync: fsync files and folders on every change.  Turn it off only
        for tests and benchmarks: a power cut may then lose entries.
    :param on_set_aside: called with ``(path, reason)`` each time an entry is
        moved to ``corrupt/`` (the daemon logs it).
    """

    STATES = tuple(State)

    def __repr__(self) -> str:
        return f"Spool({self.path!r})"

    # --- enqueue --------------------------------------------------------------

    def enqueue(
        self,
        message: bytes | str | BinaryIO,
        sender: str,
        recipients: Sequence[str] | str,
        *,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        dsn: Dsn | None = None,
        at: datetime | float | None = None,
        recurrence: Recurrence | str | None = None,
        timezone: str | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """
        Queue a message, atomically and durably: the message and its envelope
        are written to ``tmp/``, fsynced and renamed into place, so no reader
        ever sees half an entry.

        :param message: the message as bytes (sent as they are), ``str``
            (UTF-8 encoded), or a binary file object streamed into the spool.
        :param sender: the envelope sender, ``""`` for the null sender.
        :param recipients: the envelope recipients (a single ``str`` is one
            recipient); duplicates are dropped.
        :param mail_options: ESMTP MAIL FROM parameters (``"SMTPUTF8"``).
        :param rcpt_options: ESMTP RCPT TO parameters for every recipient.
        :param dsn: RFC 3461 DSN requests.
        :param at: when to send: an aware datetime, a naive one (local time),
            or epoch seconds; ``None`` means now, or for a cron recurrence its
            next time.
        :param recurrence: a :class:`Recurrence`, or text for
            :func:`~txsmtpclient.spool.schedule.parse_recurrence` (a cron
            expression or ``"every 10m"``).
        :param timezone: IANA zone for a cron recurrence given as text.
        :param idempotency_key: a caller's name for this request (at most
            255 printable characters): while the entry first enqueued under
            the same key is in the spool, its id is returned and nothing is
            stored (see :meth:`_reserve_key`).
        :returns: the new entry's id (or the first one's, for a repeated
            ``idempotency_key``).
        :raises EnvelopeError: for a malformed address or option, or no
            recipients.
        :raises ValueError: for a malformed ``idempotency_key``.
        :raises ScheduleError: for a bad recurrence or time zone.
        :raises SpoolFull: if the disk is full; nothing was left behind.
        :raises OSError: for other file errors; nothing was left behind.
        """
        if isinstance(message, str):
            message = message.encode("utf-8")
        check_address(sender, what="sender")
        if isinstance(recipients, str):
            recipients = [recipients]
        rcpts = make_recipients(recipients)
        mail = check_options(mail_options)
        rcpt = check_options(rcpt_options)
        if isinstance(recurrence, str):
            recurrence = parse_recurrence(recurrence, timezone)
        now = self._clock()
        if at is not None:
            due = to_epoch(at)
        elif recurrence is not None and recurrence.kind.value == "cron":
            due = recurrence.next_after(now)
        else:
            due = now
        entry_id = new_id(now)
        keys_lock: int | None = None
        if idempotency_key is not None:
            first, keys_lock = self._reserve_key(idempotency_key, entry_id)
            if first is not None:
                return first
        entry = Entry(
            id=entry_id,
            sender=sender,
            recipients=rcpts,
            due=due,
            created=now,
            mail_options=mail,
            rcpt_options=rcpt,
            dsn=dsn,
            recurrence=recurrence,
            occurrence_due=due,
        )
        created: builtins.list[str] = []
        try:
            msg_tmp, size = self._write_tmp(message)
            created.append(msg_tmp)
            env_tmp, _ = self._write_tmp(encode_entry(replace(entry, size=size)))
            created.append(env_tmp)
            msg_path = self._msg_path(entry_id)
            os.rename(msg_tmp, msg_path)
            created[0] = msg_path
            self._sync_dir(os.path.dirname(msg_path))
            # The commit point: the envelope appears in queue/ whole.
            queued = self._queued_path(due, entry_id)
            os.rename(env_tmp, queued)
            created[1] = queued
            self._sync_dir(self._dir(State.QUEUED), self._dir("tmp"))
        except OSError as e:
            for path in created:
                unlink_if_present(path)
            raise_if_full(e, "cannot enqueue message")
            raise
        finally:
            if keys_lock is not None:
                os.close(keys_lock)
        return entry_id

    # --- the daemon's cycle -----------------------------------------------------

    def due(self, now: float, limit: int) -> builtins.list[Entry]:
        """
        Queued entries due at ``now``, earliest first, found from file names;
        only the due ones are read.  Unreadable ones are set aside and
        skipped; ones that vanish meanwhile (claimed or cancelled by another
        process) are skipped.

        :param now: epoch seconds.
        :param limit: the most entries to return.
        """
        found: builtins.list[Entry] = []
        recent: dict[str, str] = {}
        queue = self._dir(State.QUEUED)
        index = self._queue_index()
        for name in index.names[: index.due_count(now)]:
            if len(found) >= limit:
                break
            path = os.path.join(queue, name)
            parsed = parse_queue_name(name)
            if parsed is None:
                self.set_aside(path, "file name is not {due_ms:015d}.{id}.json")
                continue
            try:
                found.append(self._read(path, parsed[1], State.QUEUED))
            except FileNotFoundError:
                continue
            except (OSError, EnvelopeError) as e:
                self.set_aside(path, str(e))
                continue
            recent[parsed[1]] = path
        with self._lock:
            self._recent = recent
        return found

    def next_due(self) -> float | None:
        """
        When the earliest queued entry is due (epoch seconds), from names
        only, or ``None`` if the queue is empty.  Lets a daemon sleep until
        then.
        """
        for name in self._queue_index().names:
            parsed = parse_queue_name(name)
            if parsed is not None:
                return parsed[0] / 1000
        return None

    def claim(self, entry_id: str) -> Entry | None:
        """
        Take a queued entry for sending: one rename into ``sending/`` under
        this process's pid, so exactly one claimer wins.  If this process
        dies, :meth:`recover` puts it back.

        :returns: the entry, or ``None`` if it is no longer queued (claimed,
            cancelled) or was unreadable (it is then set aside).
        """
        held = self._held_path(entry_id)
        if not self._take_queued(entry_id, held):
            return None
        try:
            return self._read(held, entry_id, State.SENDING)
        except (OSError, EnvelopeError) as e:
            self.set_aside(held, str(e))
            return None

    def read_message(self, entry_id: str) -> bytes:
        """
        The message's bytes, as enqueued.

        :raises EntryNotFound: if there is no message with this id.
        """
        with open(self.message_path(entry_id), "rb") as f:
            return f.read()

    def message_path(self, entry_id: str) -> str:
        """
        The message file's path, to stream a big message rather than read it
        whole.

        :raises EntryNotFound: if there is no message with this id.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        path = self._msg_path(entry_id)
        if not os.path.exists(path):
            raise EntryNotFound(f"no message for entry {entry_id}")
        return path

    def record_attempt(self, entry_id: str, attempt: Attempt) -> Entry:
        """
        Record an attempt on an entry this process claimed: the attempt joins
        its history, delivered recipients are marked done, 5xx-refused ones
        failed (see :func:`~txsmtpclient.spool.envelope.apply_attempt`).  The
        entry stays claimed.

        :returns: the updated entry (``entry.pending`` is what remains).
        :raises EntryStateError: if this process has not claimed the entry.
        :raises SpoolFull: if the disk is full (the entry is unchanged).
        """
        entry = apply_attempt(self._read_held(entry_id), attempt)
        self._write_entry(entry, self._held_path(entry_id))
        return entry

    def _finish(self, entry_id: str, outcome: Outcome, state: State) -> Entry:
        held = self._held_path(entry_id)
        entry = self._read_held(entry_id)
        if entry.recurrence is not None:
            entry = start_next_occurrence(entry, outcome, self._clock())
            self._write_entry(entry, held)
            self._move(held, self._queued_path(entry.due, entry_id))
            return replace(entry, state=State.QUEUED)
        entry = replace(entry, outcome=outcome)
        self._write_entry(entry, held)
        self._move(held, self._final_path(state, entry_id))
        return replace(entry, state=state)

    def complete(self, entry_id: str, outcome: Outcome | None = None) -> Entry:
        """
        Finish a claimed entry as delivered: it moves to ``done/``; a
        recurring entry instead goes back to the queue for its next
        occurrence after now (missed ones are not caught up), every recipient
        pending again.  Call it only after the server's reply to the final
        dot.

        :param outcome: what to record; by default built from the last
            attempt (its reply and queue id).
        :returns: the entry in its new state.
        :raises EntryStateError: if this process has not claimed the entry.
        """
        if outcome is None:
            entry = self._read_held(entry_id)
            last = entry.attempts[-1] if entry.attempts else None
            outcome = (
                Outcome.from_attempt(last, OutcomeKind.DELIVERED)
                if last is not None
                else Outcome(self._clock(), OutcomeKind.DELIVERED)
            )
        return self._finish(entry_id, outcome, State.DONE)

    def fail(self, entry_id: str, outcome: Outcome) -> Entry:
        """
        Finish a claimed entry as failed (a 5xx reply, or expired after the
        maximum queue lifetime): it moves to ``failed/``; a recurring entry
        records the outcome and goes back to the queue for its next
        occurrence (cancel it to stop it).

        :returns: the entry in its new state.
        :raises EntryStateError: if this process has not claimed the entry.
        """
        return self._finish(entry_id, outcome, State.FAILED)

    def reschedule(
        self, entry_id: str, when: datetime | float, attempt: Attempt | None = None
    ) -> Entry:
        """
        Return a claimed entry to the queue after a temporary failure, due at
        ``when``; only its pending recipients will be tried again.

        :param when: the next attempt's time (see
            :meth:`~txsmtpclient.spool.schedule.RetryPolicy.next_attempt`).
        :param attempt: an attempt to record first, if not yet recorded.
        :returns: the queued entry.
        :raises EntryStateError: if this process has not claimed the entry.
        :raises ValueError: if no recipient is pending (complete or fail it).
        """
        held = self._held_path(entry_id)
        entry = self._read_held(entry_id)
        if attempt is not None:
            entry = apply_attempt(entry, attempt)
        if not entry.pending:
            raise ValueError(f"entry {entry_id} has no pending recipients to retry")
        entry = replace(entry, due=to_epoch(when))
        self._write_entry(entry, held)
        self._move(held, self._queued_path(entry.due, entry.id))
        return replace(entry, state=State.QUEUED)

    def release(self, entry_id: str) -> Entry:
        """
        Return a claimed entry to the queue as it was (claimed but not sent,
        say at shutdown).

        :raises EntryStateError: if this process has not claimed the entry.
        """
        held = self._held_path(entry_id)
        entry = self._read_held(entry_id)
        self._move(held, self._queued_path(entry.due, entry.id))
        return replace(entry, state=State.QUEUED)

    # --- operator commands ----------------------------------------------------

    def get(self, entry_id: str) -> Entry:
        """
        An entry in any state but corrupt.

        :raises EntryNotFound: if there is none with this id.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        for _ in range(3):
            where = self._locate(entry_id)
            if where is None:
                break
            try:
                return self._read(where[1], entry_id, where[0])
            except FileNotFoundError:
                continue  # moved while being read; look again
            except EnvelopeError as e:
                raise SpoolError(f"entry {entry_id} is unreadable: {e}") from e
        raise EntryNotFound(f"no entry {entry_id!r}")

    def cancel(self, entry_id: str) -> Entry:
        """
        Cancel a queued or held entry (recurring ones stop recurring): it
        moves to ``cancelled/`` in one rename.

        :returns: the cancelled entry.
        :raises EntryNotFound: if there is none with this id.
        :raises EntryBusy: if it is being sent right now.
        :raises EntryStateError: if it is already done, failed or cancelled.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        target = self._final_path(State.CANCELLED, entry_id)
        if self._take_queued(entry_id, target):
            return self._read(target, entry_id, State.CANCELLED)
        try:
            self._move(self._final_path(State.HELD, entry_id), target)
        except FileNotFoundError:
            raise self._not_queued(entry_id) from None
        return self._read(target, entry_id, State.CANCELLED)

    def retry(self, entry_id: str) -> Entry:
        """
        Make an entry due now: a queued or held one keeps its history; a failed or
        cancelled one is queued again with its failed recipients pending and
        a fresh queue lifetime.

        :returns: the queued entry.
        :raises EntryNotFound: if there is none with this id.
        :raises EntryBusy: if it is being sent right now.
        :raises EntryStateError: if it was delivered.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        now = self._clock()
        held = self._held_path(entry_id)
        try:
            self._hold_queued(entry_id)
            fresh = False
        except EntryStateError:
            for state in (State.HELD, State.FAILED, State.CANCELLED):
                try:
                    self._move(self._final_path(state, entry_id), held)
                except FileNotFoundError:
                    continue
                break
            else:
                raise
            # A held entry keeps its history and lifetime, as a queued one.
            fresh = state is not State.HELD
        entry = self._read(held, entry_id, State.SENDING)
        if fresh:
            entry = replace(
                entry,
                recipients=tuple(
                    Recipient(r.address, RecipientState.PENDING, r.reply)
                    if r.state is RecipientState.FAILED
                    else r
                    for r in entry.recipients
                ),
                occurrence_due=now,
            )
            if not entry.pending:
                entry = replace(
                    entry, recipients=tuple(Recipient(r.address) for r in entry.recipients)
                )
        entry = replace(entry, due=now)
        self._write_entry(entry, held)
        self._move(held, self._queued_path(now, entry_id))
        return replace(entry, state=State.QUEUED)

    def list(self, state: State | None = None) -> builtins.list[Entry]:
        """
        Every entry in a state, or in every state but corrupt; queued ones by
        due time, the rest by creation.  Reads every file: for operators, not
        for the daemon's ticks.  Unreadable files are skipped (``due`` sets
        them aside).
        """
        states: Iterable[State] = (
            (state,) if state is not None else (s for s in State if s is not State.CORRUPT)
        )
        entries: builtins.list[Entry] = []
        for st in states:
            if st is State.CORRUPT:
                continue
            with os.scandir(self._dir(st)) as it:
                names = [d.name for d in it]
            for name in names:
                if st is State.QUEUED:
                    parsed_q = parse_queue_name(name)
                    entry_id = parsed_q[1] if parsed_q else None
                elif st is State.SENDING:
                    parsed_h = parse_held_name(name)
                    entry_id = parsed_h[0] if parsed_h else None
                else:
                    stem = name.removesuffix(".json")
                    entry_id = stem if name.endswith(".json") and is_valid_id(stem) else None
                if entry_id is None:
                    continue
                try:
                    entries.append(self._read(os.path.join(self._dir(st), name), entry_id, st))
                except (OSError, EnvelopeError):
                    continue
        entries.sort(key=lambda e: (e.due if e.state is State.QUEUED else e.created, e.id))
        return entries

    def corrupt(self) -> builtins.list[tuple[str, str]]:
        """
        Files set aside in ``corrupt/``, as ``(path, reason)``.
        """
        found = []
        with os.scandir(self._dir(State.CORRUPT)) as it:
            for dirent in it:
                if dirent.name.endswith(".reason"):
                    with open(dirent.path, encoding="utf-8", errors="replace") as f:
                        found.append((dirent.path.removesuffix(".reason"), f.read().strip()))
        return sorted(found)

    def counts(self) -> dict[str, int]:
        """
        Entries per state, by state name (``"queue"``, ``"sending"``,
        ``"done"``, ``"failed"``, ``"cancelled"``, ``"corrupt"``), from names
        only.
        """
        result: dict[str, int] = {}
        for st in State:
            with os.scandir(self._dir(st)) as it:
                suffix = ".reason" if st is State.CORRUPT else ".json"
                result[st.value] = sum(1 for d in it if d.name.endswith(suffix))
        return result

    def purge(self, before: float, states: Iterable[State] = FINISHED) -> int:
        """
        Delete finished entries (and their messages) last changed before
        ``before`` (epoch seconds).

        :returns: how many were deleted.
        :raises ValueError: if asked to purge queued or in-flight entries.
        """
        count = 0
        for st in states:
            if st not in FINISHED:
                raise ValueError(f"only finished entries can be purged, not {st.value}")
            with os.scandir(self._dir(st)) as it:
                old = [d for d in it if d.name.endswith(".json") and d.stat().st_mtime < before]
            for dirent in old:
                unlink_if_present(dirent.path)
                unlink_if_present(self._msg_path(dirent.name.removesuffix(".json")))
                count += 1
        return count
