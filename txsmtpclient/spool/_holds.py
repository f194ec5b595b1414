"""
Operator holds and idempotency keys in the spool folder: the held state
(``held/{id}.json``, never sent from), rescheduling a waiting entry, and the
``keys/`` folder that makes a repeated enqueue return the first id.

:class:`Holds` is a base of :class:`~txsmtpclient.spool.store.Spool`, whose
module docstring describes the layout; every method does blocking file I/O.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import replace
from datetime import datetime

from txsmtpclient.spool._finish import Finishing
from txsmtpclient.spool._names import HELD_TAG, raise_if_full
from txsmtpclient.spool._submit import check_idempotency_key
from txsmtpclient.spool.envelope import Entry, State, is_valid_id
from txsmtpclient.spool.queue import EntryBusy, EntryNotFound, EntryStateError
from txsmtpclient.spool.schedule import to_epoch

__all__ = ["Holds"]


class Holds(Finishing):
    """
    Holding, releasing and rescheduling entries, and idempotency keys.
    """

    def hold(self, entry_id: str) -> Entry:
        """
        Hold a queued entry: it moves to ``held/`` in one rename, and the
        daemon never sends it from there until :meth:`unhold`.

        :returns: the held entry.
        :raises EntryNotFound: if there is none with this id.
        :raises EntryBusy: if it is being sent right now.
        :raises EntryStateError: if it is not queued (held already, or
            finished).
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        target = self._final_path(State.HELD, entry_id)
        if self._take_queued(entry_id, target):
            return self._read(target, entry_id, State.HELD)
        raise self._not_queued(entry_id)

    def unhold(self, entry_id: str) -> Entry:
        """
        Release a held entry back to the queue, due at its due time (at
        once if that has passed).

        :returns: the queued entry.
        :raises EntryNotFound: if there is none with this id.
        :raises EntryStateError: if it is not held.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        path = self._final_path(State.HELD, entry_id)
        for _ in range(2):
            try:
                entry = self._read(path, entry_id, State.QUEUED)
                self._move(path, self._queued_path(entry.due, entry_id))
            except FileNotFoundError:
                continue  # being rescheduled by another process; look again
            return entry
        where = self._locate(entry_id)
        if where is None:
            raise EntryNotFound(f"no entry {entry_id!r}")
        if where[0] is State.SENDING:
            raise EntryBusy(f"entry {entry_id} is being changed; try again")
        raise EntryStateError(f"entry {entry_id} is {where[0].value}, not held")

    def set_due(self, entry_id: str, when: datetime | float) -> Entry:
        """
        Reschedule a queued or held entry (a held one stays held, even if
        the process dies half-way: :meth:`recover` returns it to ``held/``).  An entry
        not yet attempted in its current occurrence also has its maximum
        queue lifetime counted from the new time.

        :param when: the new due time: an aware datetime, a naive one (local
            time), or epoch seconds.
        :returns: the entry in its state.
        :raises EntryNotFound: if there is none with this id.
        :raises EntryBusy: if it is being sent right now.
        :raises EntryStateError: if it is neither queued nor held.
        """
        if not is_valid_id(entry_id):
            raise EntryNotFound(f"not a spool id: {entry_id!r}")
        due = to_epoch(when)
        held = self._held_path(entry_id)
        if self._take_queued(entry_id, held):
            state, back = State.QUEUED, self._queued_path(due, entry_id)
        else:
            # Tagged as held: a crash before it is back leaves it to
            # recover() to return to held/, never to the queue.
            held = self._held_path(entry_id, tag=HELD_TAG)
            back = self._final_path(State.HELD, entry_id)
            try:
                self._move(back, held)
            except FileNotFoundError:
                raise self._not_queued(entry_id) from None
            state = State.HELD
        entry = replace(self._read(held, entry_id, State.SENDING), due=due)
        if entry.failures == 0:
            entry = replace(entry, occurrence_due=due)
        self._write_entry(entry, held)
        self._move(held, back)
        return replace(entry, state=state)

    def _reserve_key(self, key: str, entry_id: str) -> tuple[str | None, int | None]:
        """
        Look up an idempotency key, holding the lock on ``keys/`` that every
        keyed enqueue takes (an ``flock``, so a dead holder frees it).

        ``keys/{sha256(key)}.id`` holds the id enqueued under the key.  It is
        written before the entry, so a crash in between leaves a key naming
        an entry that does not exist, which the next request with the key
        takes over: a message is neither lost nor stored twice.  Once the
        entry is purged (or set aside) the key may be used again.

        :returns: ``(first_id, None)`` if an entry stored under the key is in
            the spool (the lock is released); else ``(None, lock)``, the key
            now naming ``entry_id``, and the caller closes ``lock`` after
            storing the entry.
        :raises ValueError: for an empty, over-long or unprintable key.
        :raises SpoolFull: if the disk is full.
        """
        check_idempotency_key(key)
        folder = os.path.join(self.path, "keys")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, hashlib.sha256(key.encode("utf-8")).hexdigest() + ".id")
        lock = os.open(os.path.join(folder, "lock"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                with open(path, encoding="ascii", errors="replace") as f:
                    first = f.read().strip()
            except FileNotFoundError:
                first = ""
            if (
                is_valid_id(first)
                and os.path.exists(self._msg_path(first))
                and self._locate(first) is not None
            ):
                os.close(lock)
                return first, None
            try:
                tmp, _ = self._write_tmp(entry_id.encode("ascii"))
                os.replace(tmp, path)
                self._sync_dir(folder)
            except OSError as e:
                raise_if_full(e, "cannot record the idempotency key")
                raise
        except BaseException:
            os.close(lock)
            raise
        return None, lock
