"""
The spool's operator commands: look entries up, list and count them by
state, cancel, retry and purge; what the command line and the control plane
call, not the daemon's ticks.

:class:`Operations` is a base of :class:`~txsmtpclient.spool.store.Spool`,
whose module docstring describes the layout; every method does blocking
file I/O.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable
from dataclasses import replace

from txsmtpclient.spool._files import FINISHED
from txsmtpclient.spool._holds import Holds
from txsmtpclient.spool._names import (
    parse_held_name,
    parse_queue_name,
    unlink_if_present,
)
from txsmtpclient.spool.envelope import (
    Entry,
    EnvelopeError,
    Recipient,
    RecipientState,
    State,
    is_valid_id,
)
from txsmtpclient.spool.queue import (
    EntryNotFound,
    EntryStateError,
    SpoolError,
)

__all__ = ["Operations"]


class Operations(Holds):
    """
    Reading and changing entries for operators.
    """

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
                    with self._finishing:  # see _finish_held
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
        self._write_entry(entry, held, sync_dir=False)
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
