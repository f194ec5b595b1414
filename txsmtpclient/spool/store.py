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
      corrupt/    entries set aside, each with a {name}.reason text file

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
"""

from __future__ import annotations

import bisect
import builtins
import contextlib
import errno
import math
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

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
    decode_entry,
    encode_entry,
    is_valid_id,
    make_recipients,
    start_next_occurrence,
)
from txsmtpclient.spool.schedule import Recurrence, parse_recurrence, to_epoch

__all__ = [
    "EntryBusy",
    "EntryNotFound",
    "EntryStateError",
    "IQueue",
    "Spool",
    "SpoolError",
    "SpoolFull",
    "new_id",
]

#: Files in ``tmp/`` and ``msg/`` whose writer is still alive are left alone
#: by :meth:`Spool.recover` unless they are older than this (pid reuse).
ORPHAN_AGE = 24 * 3600.0

# A folder whose mtime is this close to now may still change within the same
# timestamp tick, so its cached listing is not trusted (git's "racy" rule).
_RACY_SECONDS = 2.0

_FINISHED = (State.DONE, State.FAILED, State.CANCELLED)


class SpoolError(Exception):
    """
    A spool operation that could not be done.
    """


class SpoolFull(SpoolError, OSError):
    """
    The spool's disk is full (or over quota): nothing was enqueued or changed,
    and no partial entry was left behind.  ``errno`` is the original one.
    """


class EntryNotFound(SpoolError, KeyError):
    """
    No entry with this id is in the spool (in the states looked at).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "entry not found"


class EntryBusy(SpoolError):
    """
    The entry is held by another process (being sent, or being changed) and
    cannot be changed now.
    """


class EntryStateError(SpoolError):
    """
    The entry is not in a state that allows the operation (cancelling a
    delivered message, completing one this process has not claimed).
    """


def new_id(now: float) -> str:
    """
    A spool id unique across processes and hosts sharing a spool: the time in
    microseconds (hex), the pid, and 32 random bits.

    :param now: the current time, epoch seconds.
    """
    return f"{int(now * 1_000_000):x}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


#: When this process loaded the store: files it wrote are newer.
_LOADED_AT = time.time()


def _pid_of_id(entry_id: str) -> int:
    return int(entry_id.split("-")[1])


def _queue_name(due: float, entry_id: str) -> str:
    return f"{max(0, math.floor(due * 1000)):015d}.{entry_id}.json"


def _parse_queue_name(name: str) -> tuple[int, str] | None:
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "json" or not parts[0].isdigit():
        return None
    if not is_valid_id(parts[1]):
        return None
    return int(parts[0]), parts[1]


def _parse_held_name(name: str) -> tuple[str, int] | None:
    parts = name.split(".")
    if len(parts) != 3 or parts[2] != "json" or not parts[1].isdigit():
        return None
    if not is_valid_id(parts[0]):
        return None
    return parts[0], int(parts[1])


@runtime_checkable
class IQueue(Protocol):
    """
    What the sending daemon needs from a queue.  :class:`Spool` implements it
    over a folder; a shared database backend can implement it for several
    machines.  Every method may block.

    The daemon's cycle: :meth:`recover` once at start; then each tick
    :meth:`due`, and for each entry :meth:`claim` (``None``: someone else took
    it), :meth:`read_message`, send to ``entry.pending``, then
    :meth:`record_attempt` and one of :meth:`complete`, :meth:`reschedule`,
    :meth:`fail` or :meth:`release`.
    """

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
    ) -> str:
        """
        Queue a message durably; returns its id.  See :meth:`Spool.enqueue`.
        """

    def due(self, now: float, limit: int) -> builtins.list[Entry]:
        """
        Up to ``limit`` queued entries due at ``now``, earliest first.
        """

    def claim(self, entry_id: str) -> Entry | None:
        """
        Take a queued entry for sending; ``None`` if it is no longer queued.
        """

    def read_message(self, entry_id: str) -> bytes:
        """
        The message bytes.
        """

    def message_path(self, entry_id: str) -> str:
        """
        A path to the message file, for streaming a big message.
        """

    def record_attempt(self, entry_id: str, attempt: Attempt) -> Entry:
        """
        Record an attempt on a claimed entry and its recipients' results.
        """

    def complete(self, entry_id: str, outcome: Outcome | None = None) -> Entry:
        """
        Finish a claimed entry as delivered (recurring: queue the next one).
        """

    def reschedule(
        self, entry_id: str, when: datetime | float, attempt: Attempt | None = None
    ) -> Entry:
        """
        Return a claimed entry to the queue, due at ``when``.
        """

    def fail(self, entry_id: str, outcome: Outcome) -> Entry:
        """
        Finish a claimed entry as failed (recurring: queue the next one).
        """

    def release(self, entry_id: str) -> Entry:
        """
        Return a claimed entry to the queue unchanged (not attempted).
        """

    def set_aside(self, entry_id_or_path: str, reason: str) -> None:
        """
        Move an unreadable or bad entry out of the way, with the reason.
        """

    def cancel(self, entry_id: str) -> Entry:
        """
        Cancel a queued entry.
        """

    def retry(self, entry_id: str) -> Entry:
        """
        Make a queued, failed or cancelled entry due now.
        """

    def get(self, entry_id: str) -> Entry:
        """
        An entry in any state but corrupt.
        """

    def list(self, state: State | None = None) -> builtins.list[Entry]:
        """
        Every entry in a state (or in all states but corrupt).
        """

    def counts(self) -> dict[str, int]:
        """
        How many entries are in each state, by state name.
        """

    def recover(self) -> dict[str, int]:
        """
        At daemon start: return abandoned in-flight entries to the queue and
        remove orphan files.
        """


class Spool:
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

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        fsync: bool = True,
        on_set_aside: Callable[[str, str], None] | None = None,
    ) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self._clock = clock
        self._fsync = fsync
        self._on_set_aside = on_set_aside
        self._lock = threading.Lock()
        # The queue folder's listing: (mtime_ns, [(due_ms, id, name)] sorted,
        # {id: name}).  Refreshed from names only.
        self._index: _QueueIndex | None = None
        # Paths of entries due() returned lately, so claim() finds them
        # without building the whole id map.
        self._recent: dict[str, str] = {}
        for sub in ("tmp", "msg", *(s.value for s in State)):
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)

    def __repr__(self) -> str:
        return f"Spool({self.path!r})"

    # --- paths and low-level file operations --------------------------------

    def _dir(self, state: State | str) -> str:
        return os.path.join(self.path, state.value if isinstance(state, State) else state)

    def _msg_path(self, entry_id: str) -> str:
        return os.path.join(self.path, "msg", f"{entry_id}.eml")

    def _held_path(self, entry_id: str) -> str:
        return os.path.join(self._dir(State.SENDING), f"{entry_id}.{os.getpid()}.json")

    def _queued_path(self, entry: Entry) -> str:
        return os.path.join(self._dir(State.QUEUED), _queue_name(entry.due, entry.id))

    def _final_path(self, state: State, entry_id: str) -> str:
        return os.path.join(self._dir(state), f"{entry_id}.json")

    def _sync_dir(self, *dirs: str) -> None:
        if not self._fsync:
            return
        for d in dict.fromkeys(dirs):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_tmp(self, data: bytes | BinaryIO) -> tuple[str, int]:
        """
        Write data to a new file in ``tmp/``, fsynced; returns (path, size).
        The file is removed again if writing fails.
        """
        path = os.path.join(self.path, "tmp", f"{os.getpid()}.{secrets.token_hex(8)}.tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, bytes):
                    f.write(data)
                    size = len(data)
                else:
                    shutil.copyfileobj(data, f, 1024 * 1024)
                    size = f.tell()
                f.flush()
                if self._fsync:
                    os.fsync(f.fileno())
        except BaseException:
            _unlink(path)
            raise
        return path, size

    def _write_entry(self, entry: Entry, path: str) -> None:
        """
        Replace the file at ``path`` (held by this process) with ``entry``,
        atomically: tmp, fsync, rename.
        """
        try:
            tmp, _ = self._write_tmp(encode_entry(entry))
        except OSError as e:
            _raise_if_full(e, f"cannot update entry {entry.id}")
            raise
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink(tmp)
            raise
        self._sync_dir(os.path.dirname(path))

    def _move(self, src: str, dst: str) -> None:
        os.rename(src, dst)
        self._sync_dir(os.path.dirname(dst), os.path.dirname(src))

    def _read(self, path: str, entry_id: str, state: State) -> Entry:
        with open(path, "rb") as f:
            data = f.read()
        return decode_entry(data, id=entry_id, state=state)

    # --- the queue index ----------------------------------------------------

    def _queue_index(self, *, fresh: bool = False) -> _QueueIndex:
        """
        The queue's file names, sorted (so by due time), relisted only if
        the folder changed since the last listing: its mtime moves on every
        rename in or out.
        """
        mtime = os.stat(self._dir(State.QUEUED)).st_mtime_ns
        with self._lock:
            index = self._index
        if (
            not fresh
            and index is not None
            and index.mtime_ns == mtime
            and time.time() - mtime / 1e9 > _RACY_SECONDS
        ):
            return index
        # listdir and a plain sort: the zero-padded due time makes name order
        # due order, so nothing is parsed or read here.
        names = os.listdir(self._dir(State.QUEUED))
        names.sort()
        index = _QueueIndex(mtime, names)
        with self._lock:
            self._index = index
        return index

    def _find_queued(self, entry_id: str) -> str | None:
        """
        The path of a queued entry, or ``None``.
        """
        with self._lock:
            recent = self._recent.get(entry_id)
        if recent is not None and os.path.exists(recent):
            return recent
        for fresh in (False, True):
            name = self._queue_index(fresh=fresh).name_of(entry_id)
            if name is not None:
                path = os.path.join(self._dir(State.QUEUED), name)
                if os.path.exists(path):
                    return path
        return None

    def _find_held(self, entry_id: str) -> builtins.list[tuple[str, int]]:
        """
        Paths and holder pids of an entry in ``sending/``.
        """
        found = []
        with os.scandir(self._dir(State.SENDING)) as it:
            for dirent in it:
                parsed = _parse_held_name(dirent.name)
                if parsed is not None and parsed[0] == entry_id:
                    found.append((dirent.path, parsed[1]))
        return found

    def _locate(self, entry_id: str) -> tuple[State, str] | None:
        """
        Where an entry is now.  Looks twice, since an entry may move from a
        folder not yet looked at to one already looked at.
        """
        for _ in range(2):
            path = self._find_queued(entry_id)
            if path is not None:
                return State.QUEUED, path
            held = self._find_held(entry_id)
            if held:
                return State.SENDING, held[0][0]
            for state in _FINISHED:
                path = self._final_path(state, entry_id)
                if os.path.exists(path):
                    return state, path
        return None

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
        :returns: the new entry's id.
        :raises EnvelopeError: for a malformed address or option, or no
            recipients.
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
            queued = os.path.join(self._dir(State.QUEUED), _queue_name(due, entry_id))
            os.rename(env_tmp, queued)
            created[1] = queued
            self._sync_dir(self._dir(State.QUEUED), self._dir("tmp"))
        except OSError as e:
            for path in created:
                _unlink(path)
            _raise_if_full(e, "cannot enqueue message")
            raise
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
            parsed = _parse_queue_name(name)
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
            parsed = _parse_queue_name(name)
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
        for _ in range(2):
            path = self._find_queued(entry_id)
            if path is None:
                return None
            try:
                self._move(path, held)
            except FileNotFoundError:
                continue  # moved by someone else meanwhile; look again
            break
        else:
            return None
        try:
            return self._read(held, entry_id, State.SENDING)
        except (OSError, EnvelopeError) as e:
            self.set_aside(held, str(e))
            return None

    def _read_held(self, entry_id: str) -> Entry:
        path = self._held_path(entry_id)
        try:
            return self._read(path, entry_id, State.SENDING)
        except FileNotFoundError:
            raise EntryStateError(f"entry {entry_id} is not claimed by this process") from None

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
            self._move(
                held, os.path.join(self._dir(State.QUEUED), _queue_name(entry.due, entry_id))
            )
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
        self._move(held, self._queued_path(entry))
        return replace(entry, state=State.QUEUED)

    def release(self, entry_id: str) -> Entry:
        """
        Return a claimed entry to the queue as it was (claimed but not sent,
        say at shutdown).

        :raises EntryStateError: if this process has not claimed the entry.
        """
        held = self._held_path(entry_id)
        entry = self._read_held(entry_id)
        self._move(held, self._queued_path(entry))
        return replace(entry, state=State.QUEUED)

    def set_aside(self, entry_id_or_path: str, reason: str) -> None:
        """
        Move an entry (by id, or the path of any file in the spool) to
        ``corrupt/`` with a ``.reason`` file beside it, and its message too,
        so the rest of the spool keeps being served.  Calls ``on_set_aside``.

        :raises EntryNotFound: if an id is given and no such entry exists.
        """
        if os.sep in entry_id_or_path:
            path = entry_id_or_path
        else:
            where = self._locate(entry_id_or_path) if is_valid_id(entry_id_or_path) else None
            if where is None:
                raise EntryNotFound(f"no entry {entry_id_or_path!r}")
            path = where[1]
        corrupt = self._dir(State.CORRUPT)
        name = os.path.basename(path)
        target = os.path.join(corrupt, name)
        if os.path.exists(target):
            target = os.path.join(corrupt, f"{name}.{secrets.token_hex(4)}")
        try:
            self._move(path, target)
        except FileNotFoundError:
            return
        with open(target + ".reason", "w", encoding="utf-8") as f:
            f.write(reason.rstrip("\n") + "\n")
        for part in name.split("."):
            if is_valid_id(part) and os.path.exists(self._msg_path(part)):
                with contextlib.suppress(OSError):
                    os.rename(self._msg_path(part), os.path.join(corrupt, f"{part}.eml"))
                break
        self._sync_dir(corrupt)
        with self._lock:
            self._index = None
        if self._on_set_aside is not None:
            self._on_set_aside(target, reason)

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

    def _hold_queued(self, entry_id: str) -> str:
        """
        Claim a queued entry for an operator change; returns the held path.
        """
        held = self._held_path(entry_id)
        for _ in range(2):
            path = self._find_queued(entry_id)
            if path is None:
                break
            try:
                self._move(path, held)
            except FileNotFoundError:
                continue
            return held
        raise self._not_queued(entry_id)

    def _not_queued(self, entry_id: str) -> SpoolError:
        where = self._locate(entry_id)
        if where is None:
            return EntryNotFound(f"no entry {entry_id!r}")
        if where[0] is State.SENDING:
            return EntryBusy(f"entry {entry_id} is being sent; try again when it is back")
        return EntryStateError(f"entry {entry_id} is {where[0].value}, not queued")

    def cancel(self, entry_id: str) -> Entry:
        """
        Cancel a queued entry (recurring ones stop recurring): it moves to
        ``cancelled/`` in one rename.

        :returns: the cancelled entry.
        :raises EntryNotFound: if there is none with this id.
        :raises EntryBusy: if it is being sent right now.
        :raises EntryStateError: if it is already done, failed or cancelled.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        target = self._final_path(State.CANCELLED, entry_id)
        for _ in range(2):
            path = self._find_queued(entry_id)
            if path is None:
                break
            try:
                self._move(path, target)
            except FileNotFoundError:
                continue
            return self._read(target, entry_id, State.CANCELLED)
        raise self._not_queued(entry_id)

    def retry(self, entry_id: str) -> Entry:
        """
        Make an entry due now: a queued one keeps its history; a failed or
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
            for state in (State.FAILED, State.CANCELLED):
                try:
                    self._move(self._final_path(state, entry_id), held)
                except FileNotFoundError:
                    continue
                break
            else:
                raise
            fresh = True
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
        self._move(held, os.path.join(self._dir(State.QUEUED), _queue_name(now, entry_id)))
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
                    parsed_q = _parse_queue_name(name)
                    entry_id = parsed_q[1] if parsed_q else None
                elif st is State.SENDING:
                    parsed_h = _parse_held_name(name)
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

    def purge(self, before: float, states: Iterable[State] = _FINISHED) -> int:
        """
        Delete finished entries (and their messages) last changed before
        ``before`` (epoch seconds).

        :returns: how many were deleted.
        :raises ValueError: if asked to purge queued or in-flight entries.
        """
        count = 0
        for st in states:
            if st not in _FINISHED:
                raise ValueError(f"only finished entries can be purged, not {st.value}")
            with os.scandir(self._dir(st)) as it:
                old = [d for d in it if d.name.endswith(".json") and d.stat().st_mtime < before]
            for dirent in old:
                _unlink(dirent.path)
                _unlink(self._msg_path(dirent.name.removesuffix(".json")))
                count += 1
        return count

    def recover(self, *, orphan_age: float = ORPHAN_AGE) -> dict[str, int]:
        """
        Call once when the daemon starts, before claiming anything.  Entries
        left in ``sending/`` by a process that is gone (or by an earlier
        process with this pid) go back to the queue to be sent again, or on
        to ``done/`` / ``failed/`` if the server had already answered the
        final dot for every recipient; unreadable ones are set aside.  Files
        in ``tmp/``, and messages in ``msg/`` with no envelope, left by dead
        processes (or older than ``orphan_age``) are removed.

        :returns: counts: ``requeued``, ``finished``, ``set_aside``,
            ``tmp_removed``, ``orphans_removed``.
        """
        report = dict.fromkeys(
            ("requeued", "finished", "set_aside", "tmp_removed", "orphans_removed"), 0
        )
        me = os.getpid()
        now = time.time()

        def abandoned(pid: int) -> bool:
            return pid == me or not _pid_alive(pid)

        def left_behind(pid: int, mtime: float) -> bool:
            # This process may be enqueueing right now (a daemon embedded in
            # an application): only its files from before it loaded this
            # module can be an earlier process's with a reused pid.
            if pid == me:
                return mtime < _LOADED_AT
            return not _pid_alive(pid)

        with os.scandir(self._dir(State.SENDING)) as it:
            held = [(d.path, d.name) for d in it]
        for path, name in held:
            parsed = _parse_held_name(name)
            if parsed is None:
                self.set_aside(path, "file name is not {id}.{pid}.json")
                report["set_aside"] += 1
                continue
            entry_id, pid = parsed
            if not abandoned(pid):
                continue
            try:
                entry = self._read(path, entry_id, State.SENDING)
            except FileNotFoundError:
                continue
            except (OSError, EnvelopeError) as e:
                self.set_aside(path, str(e))
                report["set_aside"] += 1
                continue
            if not entry.pending and entry.recurrence is not None:
                # Every recipient answered but complete() never ran: this
                # occurrence is over, queue the next.
                last = entry.attempts[-1] if entry.attempts else None
                kind = OutcomeKind.DELIVERED if entry.delivered else OutcomeKind.FAILED
                outcome = (
                    Outcome.from_attempt(last, kind) if last else Outcome(self._clock(), kind)
                )
                entry = start_next_occurrence(entry, outcome, self._clock())
                self._write_entry(entry, path)
            if entry.pending:
                target = os.path.join(self._dir(State.QUEUED), _queue_name(entry.due, entry_id))
                report["requeued"] += 1
            else:
                state = State.DONE if entry.delivered else State.FAILED
                target = self._final_path(state, entry_id)
                report["finished"] += 1
            try:
                self._move(path, target)
            except FileNotFoundError:
                continue

        with os.scandir(self._dir("tmp")) as it:
            tmps = [(d.path, d.name, d.stat().st_mtime) for d in it]
        for path, name, mtime in tmps:
            head = name.split(".")[0]
            pid = int(head) if head.isdigit() else me
            if left_behind(pid, mtime) or now - mtime > orphan_age:
                _unlink(path)
                report["tmp_removed"] += 1

        known: set[str] = set()
        for st in State:
            with os.scandir(self._dir(st)) as it:
                for d in it:
                    known.update(p for p in d.name.split(".") if is_valid_id(p))
        with os.scandir(os.path.join(self.path, "msg")) as it:
            messages = [(d.path, d.name, d.stat().st_mtime) for d in it]
        for path, name, mtime in messages:
            entry_id = name.removesuffix(".eml")
            if entry_id in known or not is_valid_id(entry_id):
                continue
            # A live writer may be between renaming the message and the
            # envelope into place: leave its files alone.
            # Look once more: the envelope may have landed meanwhile.
            if (
                left_behind(_pid_of_id(entry_id), mtime) or now - mtime > orphan_age
            ) and self._locate(entry_id) is None:
                _unlink(path)
                report["orphans_removed"] += 1
        self._sync_dir(*(self._dir(s) for s in State), self._dir("tmp"))
        with self._lock:
            self._index = None
        return report


class _QueueIndex:
    """
    A listing of ``queue/``: names sorted, which is due order, and an id to
    name map built only when first asked for.
    """

    __slots__ = ("_by_id", "mtime_ns", "names")

    def __init__(self, mtime_ns: int, names: builtins.list[str]) -> None:
        self.mtime_ns = mtime_ns
        self.names = names
        self._by_id: dict[str, str] | None = None

    def due_count(self, now: float) -> int:
        """
        How many names, from the start, are due at ``now``.
        """
        # "/" sorts just after ".", so every "{now_ms}.{id}.json" is below.
        bound = f"{max(0, math.floor(now * 1000)):015d}/"
        return bisect.bisect_right(self.names, bound)

    def name_of(self, entry_id: str) -> str | None:
        """
        The file name of a queued id, if listed.
        """
        if self._by_id is None:
            by_id = {}
            for name in self.names:
                parts = name.split(".")
                if len(parts) == 3:
                    by_id[parts[1]] = name
            self._by_id = by_id
        return self._by_id.get(entry_id)


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _raise_if_full(error: OSError, what: str) -> None:
    """
    Raise :class:`SpoolFull` for a full disk or quota; return otherwise.
    """
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        raise SpoolFull(
            error.errno, f"{what}: the spool's disk is full ({error.strerror})"
        ) from error
