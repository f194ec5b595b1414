"""
The connection side of :class:`~txsmtpclient.spool.postgres.PostgresQueue`:
the bounded connection pool, transactions retried with backoff while the
database is unreachable (logged once when it goes and once when it is back),
and the row <-> :class:`~txsmtpclient.spool.envelope.Entry` mapping.

Every method blocks on the database.  Nothing here imports Twisted.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from txsmtpclient.spool.codec import decode_entry, encode_entry
from txsmtpclient.spool.envelope import Entry, State
from txsmtpclient.spool.postgres_schema import (
    QueueDatabaseError,
    QueueUnavailable,
    describe_error,
    redact_url,
)

__all__ = [
    "CHANNEL",
    "CHUNK_SIZE",
    "COLUMNS",
    "E_COLUMNS",
    "HELD",
    "INLINE_SIZE",
    "Conn",
    "QueueDatabase",
    "entry_json",
    "row_entry",
    "to_state",
]

T = TypeVar("T")
Conn = psycopg.Connection[tuple[Any, ...]]

#: The NOTIFY channel enqueues and requeues signal on; the payload is the
#: entry's due time in epoch seconds.
CHANNEL = "txsmtp_queue"

#: Bytes per stored chunk of a message.
CHUNK_SIZE = 1024 * 1024

#: The held state's name in the database (control's ``State.HELD``).
HELD = "held"
#: The columns :func:`row_entry` reads.
COLUMNS = "id, state, envelope::text"
#: The same, of ``txsmtp_entry e``.
E_COLUMNS = "e.id, e.state, e.envelope::text"
#: Messages up to this size are read with their claim.
INLINE_SIZE = 64 * 1024


def to_state(value: str) -> State:
    """The :class:`State` named in the database."""
    return State(value)


def row_entry(row: tuple[Any, ...]) -> Entry:
    """An entry from a row of :data:`COLUMNS`."""
    return decode_entry(row[2].encode("utf-8"), id=row[0], state=to_state(row[1]))


def entry_json(entry: Entry) -> str:
    """An entry's JSON for the ``envelope`` column."""
    return encode_entry(entry).decode("utf-8")


class _Group:
    """
    One open :meth:`QueueDatabase.group_commit` in a thread: its connection
    and transaction, the calls run in it (to run again alone if it breaks),
    what to do once it commits, and the entries it changed.
    """

    def __init__(self) -> None:
        self.conn: Conn | None = None
        self.calls: list[Callable[[Conn, bool], Any]] = []
        self.after: list[Callable[[], None]] = []
        self.touched: set[str] = set()
        # Entries claimed (and committed) inside the block: if the block
        # fails, its caller never sends them.
        self.claimed: set[str] = set()
        self.broken = False
        self.failure: Exception | None = None


class QueueDatabase:
    """
    A queue in a PostgreSQL database (see the module docstring).  Implements
    :class:`~txsmtpclient.spool.queue.IQueue`; every method blocks.

    :param url: a libpq URL, ``postgresql://user:password@host:port/db``
        (a ``host=/path`` query parameter names a Unix socket folder).
    :param clock: the current time in epoch seconds, for due times and
        records (leases use the database's clock).
    :param lease: seconds a claim lasts unless renewed
        (:meth:`renew_leases`); a dead worker's entries are sent again this
        long after it died.
    :param max_connections: the connection pool's bound.
    :param reconnect_for: seconds a call keeps retrying while the database
        is unreachable before it raises :class:`QueueUnavailable`; 0 for
        one try (the command line).
    :param worker: this worker's name in leases (default host:pid:random).
    :param on_outage: called with a one-line message once when the database
        becomes unreachable and once when it is back (the daemon logs it).
    :param on_set_aside: called with ``(id, reason)`` for each entry set aside.
    :param chunk_size: bytes per stored chunk of a message.
    :raises QueueDatabaseError: if ``url`` cannot be parsed (a one-line
        message, its password redacted).
    :raises ValueError: if ``lease`` is not positive.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        lease: float = 60.0,
        max_connections: int = 10,
        reconnect_for: float = 60.0,
        worker: str | None = None,
        on_outage: Callable[[str], None] | None = None,
        on_set_aside: Callable[[str, str], None] | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if lease <= 0:
            raise ValueError(f"lease must be positive, got {lease!r}")
        try:
            conninfo_to_dict(url)
        except psycopg.Error as e:
            # Else the pool would retry a URL that can never work.
            raise QueueDatabaseError(describe_error(e, url)) from None
        self.url = url
        self.lease = lease
        self.reconnect_for = reconnect_for
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.chunk_size = chunk_size
        self._clock = clock
        self._on_outage = on_outage
        self._on_set_aside = on_set_aside
        self._lock = threading.Lock()
        self._held: dict[str, uuid.UUID] = {}
        # The entries this worker holds, as last written, so that a change
        # is one UPDATE checked by the lease token (nothing read first), and
        # the first chunk of small claimed messages, read with the claim.
        self._claimed: dict[str, Entry] = {}
        self._first: dict[str, bytes] = {}
        self._outage = False
        # Per thread: the open group_commit(), if any.
        self._local = threading.local()
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, max_connections),
            open=False,
            timeout=max(5.0, min(reconnect_for, 30.0)),
            name="txsmtp-queue",
        )
        self._pool.open(wait=False)

    def __repr__(self) -> str:
        return f"PostgresQueue({redact_url(self.url)!r})"

    def close(self) -> None:
        """
        Close the connection pool (claims not finished stay leased until
        they expire).
        """
        self._pool.close()

    # --- running transactions ---------------------------------------------------

    def _run(
        self, fn: Callable[[Conn, bool], T], *, shared: bool = False, retrying: bool = False
    ) -> T:
        """
        Run ``fn(conn, retrying)`` in one transaction, retrying with backoff
        while the database is unreachable.  With ``shared``, inside a
        :meth:`group_commit` block, ``fn`` runs in the block's transaction
        instead: it must raise (other than a database error) only before
        it writes.

        :raises QueueUnavailable: after ``reconnect_for`` seconds of trying.
        :raises QueueDatabaseError: for a database error that retrying cannot
            cure.
        """
        group: _Group | None = getattr(self._local, "group", None)
        if group is not None and not group.broken:
            if shared:
                return self._run_grouped(group, fn)
            return self._run_then_commit(group, fn)
        deadline: float | None = None
        delay = 0.1
        while True:
            try:
                with self._pool.connection() as conn:
                    result = fn(conn, retrying)
            except psycopg.OperationalError as e:
                now = time.monotonic()
                if deadline is None:
                    # Maybe only pooled connections from before a restart:
                    # drop the dead ones and retry at once, unannounced.
                    deadline = now + self.reconnect_for
                    with contextlib.suppress(psycopg.Error):
                        self._pool.check()
                    if self.reconnect_for > 0:
                        retrying = True
                        continue
                self._note_outage(e)
                if now >= deadline:
                    raise QueueUnavailable(describe_error(e, self.url)) from e
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 5.0)
                retrying = True
                continue
            except psycopg.Error as e:
                raise QueueDatabaseError(describe_error(e, self.url)) from e
            if self._outage:
                self._note_back()
            return result

    # --- group commit -------------------------------------------------------------

    @contextlib.contextmanager
    def group_commit(self) -> Iterator[None]:
        """
        Make the changes of claimed entries (complete, fail, reschedule,
        release, record an attempt, set aside) and message reads done in
        this thread inside the block in one transaction, committed when the
        block ends: one commit, one WAL flush, for a batch of messages.  A
        change made inside the block is durable only once the block has
        ended: acknowledge none before.  Other calls (enqueue, claims,
        operator commands) commit when they return, the block's changes so
        far with them.  Blocks nest (the outermost commits).

        If the database fails inside the block, the calls made so far are
        run again, each in its own transaction with the usual retries, and
        the rest of the block runs that way too.

        :raises QueueUnavailable: if the changes could not be committed (none
            of the block's changes is then known durable).
        :raises QueueDatabaseError: likewise, for another database error.
        """
        if getattr(self._local, "group", None) is not None:
            yield
            return
        group = _Group()
        self._local.group = group
        done = False
        try:
            yield
            done = True
        finally:
            self._local.group = None
            self._end_group(group, done)

    def _after_commit(self, entry_id: str, action: Callable[[], None]) -> None:
        """
        Run ``action`` once the change of ``entry_id`` just made is
        committed: now, or when this thread's group commits.
        """
        group: _Group | None = getattr(self._local, "group", None)
        if group is None:
            action()
        else:
            group.touched.add(entry_id)
            group.after.append(action)

    def _note_claimed(self, entry_ids: list[str]) -> None:
        """These entries were just claimed (in this thread's group, if any)."""
        group: _Group | None = getattr(self._local, "group", None)
        if group is not None:
            group.claimed.update(entry_ids)

    def _run_grouped(self, group: _Group, fn: Callable[[Conn, bool], T]) -> T:
        if group.conn is None:
            try:
                group.conn = self._pool.getconn()
            except psycopg.Error:
                group.broken = True
                return self._run(fn)
        try:
            result = fn(group.conn, False)
        except psycopg.Error:
            self._break_group(group)
            return self._run(fn)
        group.calls.append(fn)
        return result

    def _run_then_commit(self, group: _Group, fn: Callable[[Conn, bool], T]) -> T:
        """
        A call that cannot wait for the block's end (a claim, an enqueue, an
        operator's command): run it in the group's transaction and commit
        at once, the group's changes so far with it (one commit for both;
        and a thread never holds two pooled connections).
        """
        try:
            result = self._run_grouped(group, fn)
        except Exception:
            if not group.broken:
                # It may have written before it raised: undo the whole
                # transaction; the calls before it run again on their own.
                self._break_group(group)
            raise
        if group.broken:
            return result  # it ran on its own, committed
        group.calls.pop()
        if self._commit_group(group):
            return result
        # Committed or not: the calls before it ran again on their own, and
        # so does it (each call can tell a committed earlier try from none).
        return self._run(fn, retrying=True)

    def _break_group(self, group: _Group) -> None:
        """
        The group's transaction failed: drop it, and run the calls made in
        it again, each in its own transaction (``retrying``: the commit may
        have happened before its reply was lost).
        """
        group.broken = True
        conn, group.conn = group.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()
            self._pool.putconn(conn)
        calls, group.calls = group.calls, []
        for call in calls:
            try:
                self._run(call, retrying=True)
            except Exception as e:
                # An earlier call of the block returned: the block must fail.
                group.failure = e
                raise

    def _commit_group(self, group: _Group) -> bool:
        """
        Commit the group's transaction so far; if that fails, run its calls
        again on their own.

        :returns: whether the commit succeeded.
        """
        conn = group.conn
        if conn is None:
            return True
        try:
            conn.commit()
        except psycopg.Error:
            self._break_group(group)
            return False
        group.conn, group.calls = None, []
        self._pool.putconn(conn)
        if self._outage:
            self._note_back()
        return True

    def _end_group(self, group: _Group, done: bool) -> None:
        try:
            if not done:
                conn, group.conn = group.conn, None
                if conn is not None:
                    with contextlib.suppress(psycopg.Error):
                        conn.rollback()
                    self._pool.putconn(conn)
                return
            self._commit_group(group)
            if group.failure is not None:
                raise QueueDatabaseError(
                    f"a group of changes could not be committed: {group.failure}"
                ) from group.failure
        except BaseException:
            done = False
            raise
        finally:
            if done:
                for action in group.after:
                    action()
            else:
                self._forget(group.touched)
                with self._lock:
                    # Reported as failed, so never sent: stop renewing their
                    # leases, and any worker claims them again when they end.
                    for entry_id in group.claimed:
                        self._held.pop(entry_id, None)

    def _forget(self, entry_ids: set[str]) -> None:
        """
        What this worker remembers of these entries may not be what the
        database has (a group that did not commit): read them again.
        """
        with self._lock:
            for entry_id in entry_ids:
                self._claimed.pop(entry_id, None)
                self._first.pop(entry_id, None)

    def _note_outage(self, error: BaseException) -> None:
        with self._lock:
            first, self._outage = not self._outage, True
        if first and self._on_outage is not None:
            self._on_outage(
                f"queue database unreachable, retrying with backoff: "
                f"{describe_error(error, self.url)}"
            )

    def _note_back(self) -> None:
        with self._lock:
            was, self._outage = self._outage, False
        if was and self._on_outage is not None:
            self._on_outage(f"queue database reachable again: {redact_url(self.url)}")

    @staticmethod
    def _notify(conn: Conn, due: float) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, repr(due)))
