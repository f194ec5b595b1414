"""
The spool: a folder of queued messages that any process can write into.

Layout (Maildir-like; every state is a folder, every state change a rename)::

    SPOOL/
      tmp/        files being written: {pid}.{random}.tmp
      msg/        message bytes, written once: {id}.eml (see below)
      queue/      waiting entries, due time first: {due_ms:015d}.{id}.json
      sending/    entries claimed by process pid: {id}.{pid}.json; a held
                  entry being changed: {id}.{pid}.held.json; a delivery's
                  claimed copy until a checkpoint: {id}.{pid}.delivered
      done/       {id}.json
      failed/     {id}.json
      cancelled/  {id}.json
      corrupt/    entries set aside, each with a {name}.reason text file
      held/       {id}.json, held by an operator: never sent until released
      keys/       idempotency keys: {sha256(key)}.id holding the first id

An entry's envelope (:class:`~txsmtpclient.spool.envelope.Entry`, JSON) is
always written whole to ``tmp/``, fsynced, and renamed into place; its folder
is its state.  A change of content happens only while the entry is held in
``sending/`` under the holder's pid (written to ``tmp/``, fsynced, renamed over
the held file), and a change of state is one rename.  Finishing is one write
and one rename: the final envelope goes from ``tmp/`` straight to ``done/``
or ``failed/``, and the held file is dropped after.  So a SIGKILL at any
moment leaves each message in one well-formed place, plus at worst an
orphan file in ``tmp/`` or ``msg/``, or a held copy of a finished entry,
that :meth:`Spool.recover` removes.

A message enqueued as bytes is one file with two names, ``msg/{id}.eml``
and the entry in ``queue/``: the envelope's JSON on the first line, then the
message, so that enqueueing fsyncs one file (and the two folders).  Readers
of an envelope read its first line only; :meth:`Spool.read_message` skips
that line when it names the entry.  The envelope's later versions are files
of their own.

Due entries are found from file names alone: ``queue/`` is listed with
:func:`os.listdir` (and not even that while the folder is unchanged) and
nothing is read until an entry is claimed.

Every method of :class:`Spool` does blocking file I/O: a change fsyncs the
file it writes and the folders it renames into before returning (inside
:meth:`Spool.group_commit`, at the end of the block), except a claim, whose
loss in a power cut only leaves the entry queued, and a delivery finished
inside a group commit, whose loss in a power cut only sends the message
again: it is made durable by a later :meth:`Spool.checkpoint`, many at once
(see :mod:`._finish` and "Durability" in ``docs/spool-format.rst``).  All
of them survive a killed process as soon as they return.  A Twisted daemon calls them through
``twisted.internet.threads.deferToThread``; methods on different ids may run
in different threads at once.  The spool assumes one host: a held entry's
owner is recognised by pid.  For several machines, implement :class:`IQueue`
over a shared database instead.

For several users to write into one spool, make the folder group-writable
with the setgid bit and run writers with ``umask 002``; files get the mode
the umask allows.

The interface and its errors are in :mod:`.queue` (and importable from here
too); the file mechanics (names, atomic writes and renames, the queue index)
in :mod:`._files`; finishing, checkpoints and crash recovery in :mod:`._finish`.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import BinaryIO

from txsmtpclient.spool._files import ORPHAN_AGE
from txsmtpclient.spool._names import (
    new_id,
    parse_queue_name,
    raise_if_full,
    unlink_if_present,
)
from txsmtpclient.spool._operations import Operations
from txsmtpclient.spool._submit import message_start, new_entry
from txsmtpclient.spool.codec import decode_entry, encode_entry
from txsmtpclient.spool.envelope import (
    Attempt,
    Dsn,
    Entry,
    EnvelopeError,
    Outcome,
    OutcomeKind,
    State,
    apply_attempt,
    is_valid_id,
    start_next_occurrence,
)
from txsmtpclient.spool.queue import (
    EntryBusy,
    EntryNotFound,
    EntryStateError,
    IQueue,
    SpoolError,
    SpoolFull,
    Submission,
)
from txsmtpclient.spool.schedule import Recurrence, to_epoch

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


class Spool(Operations):
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
        Queue a message, atomically and durably: no reader ever sees half an
        entry, and once it returns the entry survives a crash (one fsync of
        the file and one of each folder it lands in).

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
        submission = Submission(
            message,
            sender,
            recipients,
            mail_options,
            rcpt_options,
            dsn,
            at,
            recurrence,
            timezone,
            idempotency_key,
        )
        return self.enqueue_many([submission])[0]

    def _store_keyed(self, entry: Entry, submission: Submission) -> str:
        """
        Store one checked entry under its idempotency key: the key names the
        new id before the entry is written, under a lock held until it is
        (see :meth:`_reserve_key`), so a crash in between is taken over by
        the next request with the key, never stored twice.

        :returns: the id, or the first one stored under the key.
        """
        assert submission.idempotency_key is not None
        first, keys_lock = self._reserve_key(submission.idempotency_key, entry.id)
        try:
            if first is not None:
                return first
            self._store([entry], [submission])
            return entry.id
        finally:
            if keys_lock is not None:
                os.close(keys_lock)

    def enqueue_many(self, messages: Sequence[Submission]) -> builtins.list[str]:
        """
        Queue several messages with one group commit: each is written and
        fsynced, then all are renamed into place and each folder is fsynced
        once.  Every message is checked before anything is written.

        :param messages: what :meth:`enqueue` takes, one :class:`Submission`
            per message.
        :returns: the new entries' ids, in order.
        :raises EnvelopeError: for a malformed address or option, or no
            recipients: nothing was stored.
        :raises ScheduleError: for a bad recurrence or time zone: nothing
            was stored.
        :raises ValueError: for a malformed idempotency key: nothing was
            stored.
        :raises SpoolFull: if the disk is full; nothing was left behind.
        :raises OSError: for other file errors; nothing was left behind
            (but an entry a daemon already took stays stored).  A crash
            before it returns may leave any of them stored, each whole.
        """
        now = self._clock()
        # Every message is checked (its key too) before anything is stored.
        entries = [new_entry(m, now, i) for i, m in enumerate(messages)]
        if all(m.idempotency_key is None for m in messages):
            self._store(entries, messages)
            return [entry.id for entry in entries]
        # A keyed message is reserved and stored on its own: no group commit.
        ids = []
        for entry, m in zip(entries, messages, strict=True):
            if m.idempotency_key is not None:
                ids.append(self._store_keyed(entry, m))
            else:
                self._store([entry], [m])
                ids.append(entry.id)
        return ids

    def _store(self, entries: Sequence[Entry], messages: Sequence[Submission]) -> None:
        """
        Write checked new entries and their messages (see
        :meth:`enqueue_many`).
        """
        written: builtins.list[tuple[Entry, str, str | None]] = []
        placed: builtins.list[str] = []
        try:
            for entry, submission in zip(entries, messages, strict=True):
                written.append(self._write_new(entry, submission.message, sync=len(entries) == 1))
            if len(entries) > 1:
                # Fsynced together: the file system merges their commits.
                self._sync_files([p for _, m, e in written for p in (m, e) if p is not None])
            for entry, message_tmp, envelope_tmp in written:
                # The message first: the daemon may claim the entry the
                # moment its envelope lands in queue/.
                msg_path = self._msg_path(entry.id)
                if envelope_tmp is None:
                    os.link(message_tmp, msg_path)
                else:
                    os.rename(message_tmp, msg_path)
                placed.append(msg_path)
                queued = self._queued_path(entry.due, entry.id)
                os.rename(envelope_tmp or message_tmp, queued)
                placed.append(queued)
            self._sync_dir(self._dir("msg"), self._dir(State.QUEUED))
        except OSError as e:
            for _, message_tmp, envelope_tmp in written:
                unlink_if_present(message_tmp)
                if envelope_tmp is not None:
                    unlink_if_present(envelope_tmp)
            for path in placed:
                unlink_if_present(path)
            raise_if_full(e, "cannot enqueue message")
            raise

    def _write_new(
        self, entry: Entry, message: bytes | str | BinaryIO, *, sync: bool = True
    ) -> tuple[Entry, str, str | None]:
        """
        Write a new entry's files to ``tmp/``, fsynced.  A message given as
        bytes goes in one file with its envelope: the envelope's line, then
        the message (one fsync).  A stream goes to its own file, and the
        envelope to another.

        :returns: the entry (with its size), the message's temporary file,
            and the envelope's (``None`` when it is the same file).
        """
        if isinstance(message, str):
            message = message.encode("utf-8")
        if isinstance(message, bytes):
            entry = replace(entry, size=len(message))
            head = encode_entry(entry) + b"\n"
            path, _ = self._write_tmp(message, head=head, sync=sync)
            return entry, path, None
        message_tmp, size = self._write_tmp(message, sync=sync)
        entry = replace(entry, size=size)
        try:
            envelope_tmp, _ = self._write_tmp(encode_entry(entry), sync=sync)
        except BaseException:
            unlink_if_present(message_tmp)
            raise
        return entry, message_tmp, envelope_tmp

    # --- the daemon's cycle -----------------------------------------------------

    def due(self, now: float, limit: int) -> builtins.list[str]:
        """
        The ids of queued entries due at ``now``, earliest first, from file
        names alone: nothing is read or decoded (:meth:`claim` does that).
        Files whose names are not an entry's are set aside.

        :param now: epoch seconds.
        :param limit: the most ids to return.
        """
        found: builtins.list[str] = []
        recent: dict[str, str] = {}
        queue = self._dir(State.QUEUED)
        index = self._queue_index()
        for name in index.names[: index.due_count(now)]:
            if len(found) >= limit:
                break
            parsed = parse_queue_name(name)
            path = os.path.join(queue, name)
            if parsed is None:
                self.set_aside(path, "file name is not {due_ms:015d}.{id}.json")
                continue
            found.append(parsed[1])
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
        dies, :meth:`recover` puts it back.  The rename is not fsynced: a
        claim lost in a power cut leaves the entry queued, which is safe;
        the finish that follows syncs the queue folder.

        :returns: the entry, or ``None`` if it is no longer queued (claimed,
            cancelled) or was unreadable (it is then set aside).
        """
        held = self._held_path(entry_id)
        if not self._take_queued(entry_id, held, sync=False, claim=True):
            return None
        try:
            return self._read_held(entry_id, keep=True)
        except (OSError, EnvelopeError, EntryStateError) as e:
            self.set_aside(held, str(e))
            return None

    def claim_with_message(self, entry_id: str) -> tuple[Entry, bytes | None] | None:
        """
        :meth:`claim`, and the message read in the same read when it is
        stored with its envelope (enqueued as bytes, so the held file is the
        message file too).

        :returns: the entry and its message (``None``: not in the same file,
            call :meth:`read_message`), or ``None`` as :meth:`claim` does.
        """
        held = self._held_path(entry_id)
        if not self._take_queued(entry_id, held, sync=False, claim=True):
            return None
        try:
            with open(held, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
            start = message_start(data, entry_id)
            entry = decode_entry(data[:start] if start else data, id=entry_id, state=State.SENDING)
        except (OSError, EnvelopeError) as e:
            self.set_aside(held, str(e))
            return None
        self._claimed[entry_id] = ((st.st_ino, st.st_mtime_ns, st.st_size), entry)
        return entry, data[start:] if start else None

    def read_message(self, entry_id: str) -> bytes:
        """
        The message's bytes, as enqueued.

        :raises EntryNotFound: if there is no message with this id.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        try:
            with open(self._msg_path(entry_id), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise EntryNotFound(f"no message for entry {entry_id}") from None
        return data[message_start(data, entry_id) :]

    def message_path(self, entry_id: str) -> str:
        """
        The message file's path, to stream a big message rather than read it
        whole.  A message enqueued as bytes shares its file with the
        envelope; this copies it out to a file of its own first (once).

        :raises EntryNotFound: if there is no message with this id.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        path = self._msg_path(entry_id)
        try:
            with open(path, "rb") as f:
                head = f.readline()
                start = message_start(head, entry_id)
                if start:
                    f.seek(start)
                    tmp, _ = self._write_tmp(f)
                    os.replace(tmp, path)
                    self._sync_dir(os.path.dirname(path))
        except FileNotFoundError:
            raise EntryNotFound(f"no message for entry {entry_id}") from None
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

    def _finish(
        self, entry_id: str, outcome: Outcome | None, state: State, attempt: Attempt | None
    ) -> Entry:
        held = self._held_path(entry_id)
        entry = self._read_held(entry_id)
        if attempt is not None:
            entry = apply_attempt(entry, attempt)
        if outcome is None:
            last = entry.attempts[-1] if entry.attempts else None
            kind = OutcomeKind.DELIVERED if state is State.DONE else OutcomeKind.FAILED
            outcome = Outcome.from_attempt(last, kind) if last else Outcome(self._clock(), kind)
        if entry.recurrence is not None:
            entry = start_next_occurrence(entry, outcome, self._clock())
            self._write_entry(entry, held, sync_dir=False)
            self._move(held, self._queued_path(entry.due, entry_id))
            return replace(entry, state=State.QUEUED)
        entry = replace(entry, outcome=outcome)
        self._finish_held(entry, held, self._final_path(state, entry_id), lazy=state is State.DONE)
        return replace(entry, state=state)

    def complete(
        self, entry_id: str, outcome: Outcome | None = None, *, attempt: Attempt | None = None
    ) -> Entry:
        """
        Finish a claimed entry as delivered: it moves to ``done/``; a
        recurring entry instead goes back to the queue for its next
        occurrence after now (missed ones are not caught up), every recipient
        pending again.  Call it only after the server's reply to the final
        dot.  One write and one rename (a recurring entry: two renames).

        :param outcome: what to record; by default built from the attempt
            (its reply and queue id).
        :param attempt: the attempt to record first, if not yet recorded.
        :returns: the entry in its new state.
        :raises EntryStateError: if this process has not claimed the entry.
        :raises SpoolFull: if the disk is full (the entry is unchanged).
        """
        return self._finish(entry_id, outcome, State.DONE, attempt)

    def fail(self, entry_id: str, outcome: Outcome, *, attempt: Attempt | None = None) -> Entry:
        """
        Finish a claimed entry as failed (a 5xx reply, or expired after the
        maximum queue lifetime): it moves to ``failed/``; a recurring entry
        records the outcome and goes back to the queue for its next
        occurrence (cancel it to stop it).  One write and one rename.

        :param attempt: the attempt to record first, if not yet recorded.
        :returns: the entry in its new state.
        :raises EntryStateError: if this process has not claimed the entry.
        :raises SpoolFull: if the disk is full (the entry is unchanged).
        """
        return self._finish(entry_id, outcome, State.FAILED, attempt)

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
        self._write_entry(entry, held, sync_dir=False)
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
