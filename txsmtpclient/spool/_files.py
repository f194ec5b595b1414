"""
The spool folder's files: names, atomic writes and renames, the queue index,
and setting entries aside.

:class:`SpoolFiles` is the base of :class:`~txsmtpclient.spool.store.Spool`
(whose module docstring describes the layout): it knows where each state's
files are and how to change them safely (write to ``tmp/``, fsync, rename),
and nothing about when to (recovery after a crash is in :mod:`._finish`).
Every method does blocking file I/O.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from txsmtpclient.spool._names import (
    QueueIndex,
    parse_held_name,
    queue_name,
    raise_if_full,
    unlink_if_present,
    write_all,
)
from txsmtpclient.spool.codec import decode_entry, encode_entry
from txsmtpclient.spool.envelope import (
    Entry,
    EnvelopeError,
    State,
    is_valid_id,
)
from txsmtpclient.spool.queue import (
    EntryBusy,
    EntryNotFound,
    EntryStateError,
    SpoolError,
)

__all__ = ["DELIVERED_SUFFIX", "FINISHED", "ORPHAN_AGE", "SpoolFiles"]

#: Files in ``tmp/`` and ``msg/`` whose writer is still alive are left alone
#: by :meth:`._finish.Finishing.recover` unless they are older than this (pid reuse).
ORPHAN_AGE = 24 * 3600.0

# A folder whose mtime is this close to now may still change within the same
# timestamp tick, so its cached listing is not trusted (git's "racy" rule).
_RACY_SECONDS = 2.0

#: A delivered entry's held copy, kept in ``sending/`` as
#: ``{id}.{pid}.delivered`` until a checkpoint has made its finished file
#: durable (see :mod:`._finish`).
DELIVERED_SUFFIX = ".delivered"

#: The states an entry ends in (until an operator retries it).
FINISHED = (State.DONE, State.FAILED, State.CANCELLED)


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


class SpoolFiles:
    """
    A spool folder's files and the safe ways to change them; the base of
    :class:`~txsmtpclient.spool.store.Spool`, which documents the
    parameters.
    """

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
        self._finishing = threading.Lock()
        # Per thread: the folders and held files of an open group_commit().
        self._group = threading.local()
        # The queue folder's listing: (mtime_ns, [(due_ms, id, name)] sorted,
        # {id: name}).  Refreshed from names only.
        self._index: QueueIndex | None = None
        # Paths of entries due() returned lately, so claim() finds them
        # without building the whole id map.
        self._recent: dict[str, str] = {}
        # Entries this process claimed, as last read, with the held file's
        # (inode, mtime, size) then: finishing reuses them rather than
        # reading and decoding the file again.  Any rewrite makes a new file.
        self._claimed: dict[str, tuple[tuple[int, int, int], Entry]] = {}
        # Deliveries finished without fsync, waiting for a checkpoint:
        # (finished file, held copy, time.monotonic() when finished).
        self._unsynced: builtins.list[tuple[str, str, float]] = []
        for sub in ("tmp", "msg", *(s.value for s in State)):
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)

    # --- paths and low-level file operations --------------------------------

    def _dir(self, state: State | str) -> str:
        return os.path.join(self.path, state.value if isinstance(state, State) else state)

    def _msg_path(self, entry_id: str) -> str:
        return os.path.join(self.path, "msg", f"{entry_id}.eml")

    def _held_path(self, entry_id: str, *, tag: str = "") -> str:
        tagged = f".{tag}" if tag else ""
        return os.path.join(self._dir(State.SENDING), f"{entry_id}.{os.getpid()}{tagged}.json")

    def _queued_path(self, due: float, entry_id: str) -> str:
        return os.path.join(self._dir(State.QUEUED), queue_name(due, entry_id))

    def _final_path(self, state: State, entry_id: str) -> str:
        return os.path.join(self._dir(state), f"{entry_id}.json")

    @contextlib.contextmanager
    def group_commit(self) -> Iterator[None]:
        """
        Share folder fsyncs among the changes made in this thread inside the
        block (group commit): each folder is fsynced once when the block
        ends, and only then are finished entries' held files removed.  A
        change made inside the block is durable only once the block has
        ended: acknowledge none before.  Blocks nest (the outermost
        commits).

        :raises OSError: if a folder cannot be fsynced at the end.
        """
        if getattr(self._group, "dirs", None) is not None:
            yield
            return
        dirs: dict[str, None] = {}
        after: builtins.list[tuple[str, int]] = []
        self._group.dirs, self._group.after = dirs, after
        try:
            yield
        finally:
            self._group.dirs = self._group.after = None
            try:
                self._sync_dir(*dirs)
            finally:
                for path, inode in after:
                    self._drop_held(path, inode)

    def _sync_files(self, paths: builtins.list[str], *, missing_ok: bool = False) -> None:
        """
        Fsync files written without it, several at once (a few threads), so
        that the file system can merge their journal commits.
        ``missing_ok``: a file removed meanwhile is skipped.
        """
        if not self._fsync or not paths:
            return

        def sync(path: str) -> None:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                if missing_ok:
                    return
                raise
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        # Imported here: a one-message submission never needs threads.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, len(paths))) as pool:
            for _ in pool.map(sync, paths):
                pass

    def _sync_dir(self, *dirs: str, now: bool = False) -> None:
        """
        Fsync folders: at once, or inside :meth:`group_commit` at its end
        (``now`` forces at once).
        """
        if not self._fsync:
            return
        group = None if now else getattr(self._group, "dirs", None)
        if group is not None:
            group.update(dict.fromkeys(dirs))
            return
        for d in dict.fromkeys(dirs):
            fd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _write_tmp(
        self, data: bytes | BinaryIO, *, head: bytes = b"", sync: bool = True
    ) -> tuple[str, int]:
        """
        Write ``head`` and then data to a new file in ``tmp/``, fsynced
        unless ``sync`` is false; returns (path, size of data).  The file is
        removed again if writing fails.
        """
        path = os.path.join(self.path, "tmp", f"{os.getpid()}.{os.urandom(8).hex()}.tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            if isinstance(data, bytes):
                # One write call for the whole file: no buffered file object.
                write_all(fd, head + data if head else data)
                size = len(data)
            else:
                with os.fdopen(fd, "wb", closefd=False) as f:
                    f.write(head)
                    import shutil  # only for streams: submissions give bytes

                    shutil.copyfileobj(data, f, 1024 * 1024)
                    size = f.tell() - len(head)
            if sync and self._fsync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            unlink_if_present(path)
            raise
        os.close(fd)
        return path, size

    def _write_entry(self, entry: Entry, path: str, *, sync_dir: bool = True) -> None:
        """
        Replace the file at ``path`` (held by this process) with ``entry``,
        atomically: tmp, fsync, rename.  ``sync_dir=False`` leaves the
        folder's fsync to a move that follows.
        """
        try:
            tmp, _ = self._write_tmp(encode_entry(entry))
        except OSError as e:
            raise_if_full(e, f"cannot update entry {entry.id}")
            raise
        try:
            os.replace(tmp, path)
        except BaseException:
            unlink_if_present(tmp)
            raise
        if sync_dir:
            self._sync_dir(os.path.dirname(path))

    def _drop_held(self, held: str, inode: int) -> None:
        """
        Remove a finished entry's held file, unless an in-process retry()
        has meanwhile taken the finished file into the same name (another
        inode); the lock keeps the two from interleaving.
        """
        with self._finishing, contextlib.suppress(FileNotFoundError):
            if os.stat(held).st_ino == inode:
                os.unlink(held)

    def _move(self, src: str, dst: str, *, sync: bool = True) -> None:
        os.rename(src, dst)
        if sync:
            self._sync_dir(os.path.dirname(dst), os.path.dirname(src))

    def _read(self, path: str, entry_id: str, state: State) -> Entry:
        # Only the first line: an entry enqueued whole shares its file with
        # the message, which follows the envelope's line.
        with open(path, "rb") as f:
            data = f.readline()
        return decode_entry(data, id=entry_id, state=state)

    # --- the queue index ----------------------------------------------------

    def _queue_index(self, *, fresh: bool = False) -> QueueIndex:
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
        index = QueueIndex(mtime, names)
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
                parsed = parse_held_name(dirent.name)
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
            for state in (*FINISHED, State.HELD):
                path = self._final_path(state, entry_id)
                if os.path.exists(path):
                    return state, path
        return None

    # --- held entries -----------------------------------------------------

    def _read_held(self, entry_id: str, *, keep: bool = False) -> Entry:
        """
        An entry this process holds, from memory if its file is unchanged
        since it was last read (``keep``: remember it for next time).

        :raises EntryStateError: if this process does not hold it.
        """
        path = self._held_path(entry_id)
        try:
            # A stat, not an open, when the copy in memory is current.  Only
            # this process changes a file held under its pid.
            st = os.stat(path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._claimed.get(entry_id)
            if cached is not None and cached[0] == key:
                entry = cached[1]
            else:
                with open(path, "rb") as f:
                    entry = decode_entry(f.readline(), id=entry_id, state=State.SENDING)
        except FileNotFoundError:
            self._claimed.pop(entry_id, None)
            raise EntryStateError(f"entry {entry_id} is not claimed by this process") from None
        if keep:
            self._claimed[entry_id] = (key, entry)
        else:
            self._claimed.pop(entry_id, None)
        return entry

    def _take_queued(
        self, entry_id: str, target: str, *, sync: bool = True, claim: bool = False
    ) -> bool:
        """
        Move a queued entry to ``target`` in one rename (fsynced unless
        ``sync`` is false).  Looks twice, since another process may move it
        between finding and renaming.

        :param claim: a claim of an id :meth:`due` returned: if the entry
            is no longer where ``due()`` saw it (rescheduled, held or
            claimed since), it is not taken; its new name says when it is
            due, and the next ``due()`` finds it then.
        :returns: whether it was moved; ``False`` if it is not queued.
        """
        with self._lock:
            recent = self._recent.pop(entry_id, None)
        if recent is not None:
            # Where due() saw it: one rename, no lookup, in the usual case.
            try:
                self._move(recent, target, sync=sync)
            except FileNotFoundError:
                if claim:
                    return False
            else:
                return True
        for _ in range(2):
            path = self._find_queued(entry_id)
            if path is None:
                return False
            try:
                self._move(path, target, sync=sync)
            except FileNotFoundError:
                continue  # moved by someone else meanwhile; look again
            return True
        return False

    def _hold_queued(self, entry_id: str) -> str:
        """
        Claim a queued entry for an operator change; returns the held path.
        """
        held = self._held_path(entry_id)
        if self._take_queued(entry_id, held):
            return held
        raise self._not_queued(entry_id)

    def _not_queued(self, entry_id: str) -> SpoolError:
        where = self._locate(entry_id)
        if where is None:
            return EntryNotFound(f"no entry {entry_id!r}")
        if where[0] is State.SENDING:
            return EntryBusy(f"entry {entry_id} is being sent; try again when it is back")
        return EntryStateError(f"entry {entry_id} is {where[0].value}, not queued")

    # --- setting aside and recovery ---------------------------------------

    @staticmethod
    def _abandoned(pid: int) -> bool:
        """
        Whether files held by ``pid`` are left over: it is gone, or it is
        this process (recovering, before it claims anything).
        """
        return pid == os.getpid() or not _pid_alive(pid)

    @staticmethod
    def _left_behind(pid: int, mtime: float) -> bool:
        """
        Whether a file in ``tmp/`` or ``msg/`` written by ``pid`` at
        ``mtime`` is left over.  This process may be enqueueing right now
        (a daemon embedded in an application): only its files from before
        it loaded this module can be an earlier process's with a reused pid.
        """
        if pid == os.getpid():
            return mtime < _LOADED_AT
        return not _pid_alive(pid)

    def _finished_readable(self, entry_id: str) -> bool:
        """
        Whether the entry has a finished file that reads whole.  One that
        does not (a delivery's file a power cut caught before its
        checkpoint: empty or torn) goes to ``corrupt/`` with its reason,
        without the message: the held copy beside it is the one to keep.
        """
        for state in FINISHED:
            path = self._final_path(state, entry_id)
            try:
                self._read(path, entry_id, state)
            except FileNotFoundError:
                continue
            except (OSError, EnvelopeError) as e:
                target = os.path.join(
                    self._dir(State.CORRUPT), f"{state.value}.{entry_id}.{os.urandom(4).hex()}"
                )
                os.rename(path, target)
                with open(target + ".reason", "w", encoding="utf-8") as f:
                    f.write(f"unreadable, its held copy requeued: {e}\n")
                return False
            return True
        return False

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
            target = os.path.join(corrupt, f"{name}.{os.urandom(4).hex()}")
        try:
            self._move(path, target)
        except FileNotFoundError:
            return
        with open(target + ".reason", "w", encoding="utf-8") as f:
            f.write(reason.rstrip("\n") + "\n")
        for part in name.split("."):
            if is_valid_id(part):
                # No longer claimed: its cached entry would only take memory.
                self._claimed.pop(part, None)
                if os.path.exists(self._msg_path(part)):
                    with contextlib.suppress(OSError):
                        os.rename(self._msg_path(part), os.path.join(corrupt, f"{part}.eml"))
                break
        self._sync_dir(corrupt)
        with self._lock:
            self._index = None
        if self._on_set_aside is not None:
            self._on_set_aside(target, reason)
