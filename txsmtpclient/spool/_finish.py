"""
Finishing claimed entries: the one write and one rename that move a held
entry to ``done/`` or ``failed/``; checkpoints, which make deliveries
finished inside a group commit durable in bulk; and recovery after a crash
(:meth:`Finishing.recover`).

A delivery finished inside :meth:`~._files.SpoolFiles.group_commit` (the
daemon's way) is not fsynced at once.  Its final envelope is written to
``tmp/`` and renamed into ``done/`` without an fsync, and the held file, the
claimed entry as it was (its content fsynced when it was written), stays in
``sending/`` renamed ``{id}.{pid}.delivered``.  A checkpoint then fsyncs the
finished files of many deliveries at once, from a few threads so that the
file system merges their journal commits, fsyncs ``done/`` and ``queue/``,
and only then removes the held copies.  The daemon runs one about every
second while deliveries wait (in a thread of its own, so that no
acknowledgement waits for it) and at stop; a group commit also ends with one
once :data:`CHECKPOINT_COUNT` deliveries wait or the oldest has waited
:data:`CHECKPOINT_AGE` seconds.

So the record of a delivery survives SIGKILL as soon as ``complete``
returns (the page cache survives a killed process; :meth:`Finishing.recover`
keeps the finished file and drops the copy), and a power cut before its
checkpoint loses at most that record: the held copy is still there, or the
entry is still in ``queue/``, and the message is sent again.  A duplicate,
never a loss; Postfix removes a delivered queue file without an fsync for
the same reason.  A finished file the power cut left empty or torn is set
aside in ``corrupt/`` by recovery (without the message), which requeues
the copy.  This relies on the file
system keeping renames in the order they were made (ext4 and XFS journal
them in order), as the claim's unsynced rename already does.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

from txsmtpclient.spool._files import DELIVERED_SUFFIX, ORPHAN_AGE, SpoolFiles, _pid_of_id
from txsmtpclient.spool._names import (
    HELD_TAG,
    parse_held_name,
    raise_if_full,
    unlink_if_present,
)
from txsmtpclient.spool.codec import encode_entry
from txsmtpclient.spool.envelope import (
    Entry,
    EnvelopeError,
    Outcome,
    OutcomeKind,
    State,
    is_valid_id,
    start_next_occurrence,
)

__all__ = ["CHECKPOINT_AGE", "CHECKPOINT_COUNT", "Finishing"]

#: A group commit ends with a checkpoint once this many deliveries wait...
CHECKPOINT_COUNT = 1000
#: ...or once the oldest has waited this many seconds (a bound: the daemon
#: runs one about every second, in a thread of its own).
CHECKPOINT_AGE = 5.0


class Finishing(SpoolFiles):
    """
    Finishing held entries, checkpoints of deliveries, and recovery.
    """

    @contextlib.contextmanager
    def group_commit(self) -> Iterator[None]:
        """
        Share folder fsyncs among the changes made in this thread inside the
        block (group commit): each folder is fsynced once when the block
        ends, and only then are finished entries' held files removed.  A
        change made inside the block is durable only once the block has
        ended: acknowledge none before.  Deliveries (``complete`` to
        ``done/``) finished inside it are the exception: they survive a
        killed process at once, and a power cut only after the next
        :meth:`checkpoint` (see the module docstring).  Blocks nest (the
        outermost commits).

        :raises OSError: if a folder cannot be fsynced at the end.
        """
        outermost = getattr(self._group, "dirs", None) is None
        with super().group_commit():
            yield
        if outermost and self._checkpoint_due():
            # A backstop: if it fails, the deliveries stay waiting (copies
            # kept) for the next checkpoint, and this block's own changes,
            # durable already, are not reported failed.
            with contextlib.suppress(OSError):
                self.checkpoint()

    def _finish_held(self, entry: Entry, held: str, target: str, *, lazy: bool = False) -> None:
        """
        Move a held entry to a finished state's ``target`` with its new
        content in one write and one rename: tmp, fsync, rename to
        ``target``, fsync the folders, then drop the held file.  A crash
        before the drop leaves both; :meth:`recover` drops the held one,
        since the finished file is the newer.  The queue folder is synced
        too, so that the claim's rename out of it is as durable as the
        finish (a claim itself is not fsynced).

        ``lazy`` (a delivery), inside a group commit: no fsync now; the held
        file is kept as ``{id}.{pid}.delivered`` until a checkpoint.
        """
        lazy = lazy and self._fsync and getattr(self._group, "dirs", None) is not None
        try:
            tmp, _ = self._write_tmp(encode_entry(entry), sync=not lazy)
        except OSError as e:
            raise_if_full(e, f"cannot update entry {entry.id}")
            raise
        inode = 0 if lazy else os.stat(held).st_ino
        try:
            os.rename(tmp, target)
        except BaseException:
            unlink_if_present(tmp)
            raise
        if lazy:
            copy = held.removesuffix(".json") + DELIVERED_SUFFIX
            os.rename(held, copy)
            with self._lock:
                self._unsynced.append((target, copy, time.monotonic()))
            return
        self._sync_dir(os.path.dirname(target), self._dir(State.QUEUED))
        after = getattr(self._group, "after", None)
        if after is not None:
            after.append((held, inode))  # once the group's fsyncs are done
        else:
            self._drop_held(held, inode)

    def _checkpoint_due(self) -> bool:
        with self._lock:
            waiting = self._unsynced
            return bool(waiting) and (
                len(waiting) >= CHECKPOINT_COUNT
                or time.monotonic() - waiting[0][2] >= CHECKPOINT_AGE
            )

    def unsynced(self) -> int:
        """
        How many deliveries wait for a :meth:`checkpoint` (they survive a
        killed process, not yet a power cut).  Does no I/O.
        """
        with self._lock:
            return len(self._unsynced)

    def checkpoint(self) -> int:
        """
        Make the deliveries finished so far durable: fsync their finished
        files (a few threads at once) and ``done/`` and ``queue/``, then
        remove their held copies.  Safe to call at any time, from any thread.

        :returns: how many deliveries it made durable.
        :raises OSError: if an fsync failed (they stay waiting, copies kept).
        """
        with self._lock:
            waiting, self._unsynced = self._unsynced, []
        if not waiting:
            return 0
        try:
            self._sync_files([target for target, _, _ in waiting], missing_ok=True)
            self._sync_dir(self._dir(State.DONE), self._dir(State.QUEUED), now=True)
        except BaseException:
            with self._lock:
                self._unsynced[:0] = waiting
            raise
        # Not fsynced: a removal lost in a power cut leaves a copy beside a
        # durable finished file, which recovery drops.
        for _, copy, _ in waiting:
            unlink_if_present(copy)
        return len(waiting)

    def recover(self, *, orphan_age: float = ORPHAN_AGE) -> dict[str, int]:
        """
        Call once when the daemon starts, before claiming anything.  Entries
        left in ``sending/`` by a process that is gone (or by an earlier
        process with this pid) go back to the queue to be sent again, or on
        to ``done/`` / ``failed/`` if the server had already answered the
        final dot for every recipient; unreadable ones are set aside.  A
        delivery's held copy is dropped if its finished file reads whole,
        and requeued if not (a power cut before its checkpoint).  Files in
        ``tmp/``, and messages in ``msg/`` with no envelope, left by dead
        processes (or older than ``orphan_age``) are removed.

        :returns: counts: ``requeued``, ``finished``, ``set_aside``,
            ``tmp_removed``, ``orphans_removed``.
        """
        self.checkpoint()
        requeued = finished = set_aside = 0
        with os.scandir(self._dir(State.SENDING)) as it:
            copies = [(d.path, d.name) for d in it if d.name.endswith(DELIVERED_SUFFIX)]
        for path, name in copies:
            parsed = parse_held_name(name.removesuffix(DELIVERED_SUFFIX) + ".json")
            if parsed is None or not self._abandoned(parsed[1]):
                continue
            entry_id = parsed[0]
            if self._finished_readable(entry_id) or not os.path.exists(self._msg_path(entry_id)):
                # Delivered (or delivered and purged since): nothing to send.
                unlink_if_present(path)
                finished += 1
                continue
            try:
                entry = self._read(path, entry_id, State.QUEUED)
                self._move(path, self._queued_path(entry.due, entry_id))
            except FileNotFoundError:
                continue
            except (OSError, EnvelopeError) as e:
                self.set_aside(path, str(e))
                set_aside += 1
                continue
            requeued += 1
        report = self._recover_files(orphan_age)
        report["requeued"] += requeued
        report["finished"] += finished
        report["set_aside"] += set_aside
        return report

    def _recover_files(self, orphan_age: float) -> dict[str, int]:
        """
        :meth:`recover` but for deliveries' held copies: held entries,
        temporary files and orphan messages.
        """
        report = dict.fromkeys(
            ("requeued", "finished", "set_aside", "tmp_removed", "orphans_removed"), 0
        )
        me = os.getpid()
        now = time.time()
        self._claimed.clear()

        abandoned, left_behind = self._abandoned, self._left_behind

        with os.scandir(self._dir(State.SENDING)) as it:
            held = [(d.path, d.name) for d in it]
        for path, name in held:
            if name.endswith(DELIVERED_SUFFIX):
                continue  # see recover()
            parsed = parse_held_name(name)
            if parsed is None:
                self.set_aside(path, "file name is not {id}.{pid}.json")
                report["set_aside"] += 1
                continue
            entry_id, pid = parsed
            if not abandoned(pid):
                continue
            if name.endswith(f".{HELD_TAG}.json"):
                # An operator's change to a held entry (set_due): held it
                # stays, as it was before or after the change.
                with contextlib.suppress(FileNotFoundError):
                    self._move(path, self._final_path(State.HELD, entry_id))
                continue
            if self._finished_readable(entry_id):
                # A finish that crashed after its rename (see _finish_held):
                # the finished file is the newer copy.
                unlink_if_present(path)
                report["finished"] += 1
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
                target = self._queued_path(entry.due, entry_id)
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
                unlink_if_present(path)
                report["tmp_removed"] += 1

        # The ids named in every state, by where each kind of name has it
        # (a queue of thousands: no id check for each part of each name).
        known: set[str] = set()
        for st in State:
            names = os.listdir(self._dir(st))
            if st is State.QUEUED:
                known.update(n.split(".", 2)[1] for n in names if n.count(".") >= 2)
            elif st is State.CORRUPT:
                known.update(p for n in names for p in n.split(".") if is_valid_id(p))
            else:
                known.update(n.partition(".")[0] for n in names)
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
                unlink_if_present(path)
                report["orphans_removed"] += 1
        self._sync_dir(*(self._dir(s) for s in State), self._dir("tmp"))
        with self._lock:
            self._index = None
        return report
