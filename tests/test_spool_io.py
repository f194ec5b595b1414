"""
Tests for the spool's file operations per message: how many files are
written, fsynced and renamed to enqueue, claim and finish an entry (counted
by wrapping the ``os`` functions), group commit in ``enqueue_many``, and the
one-file layout of a message enqueued as bytes.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from txsmtpclient.spool import _files, _finish, store
from txsmtpclient.spool.codec import decode_entry
from txsmtpclient.spool.envelope import Attempt, EnvelopeError, Outcome, OutcomeKind, State
from txsmtpclient.spool.queue import Submission
from txsmtpclient.spool.store import EntryBusy, Spool, SpoolFull

MESSAGE = b"From: a@x\r\nTo: b@x\r\nSubject: hi\r\n\r\nHello.\r\n"
T0 = 1_900_000_000.0


def files(spool: Spool, sub: str) -> list[str]:
    return sorted(os.listdir(os.path.join(spool.path, sub)))


class Counted:
    """Counts file and folder fsyncs, renames, links, new files and envelope decodes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_fsync_at: int | None = None
        lock = threading.Lock()  # enqueue_many fsyncs from several threads
        real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace
        real_link, real_open = os.link, os.open
        real_decode = decode_entry

        def fsync(fd: int) -> None:
            kind = "dir_fsync" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file_fsync"
            with lock:
                self.calls[kind] += 1
                count = self.calls[kind]
            if kind == "file_fsync" and count == self.fail_fsync_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_fsync(fd)

        def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                with lock:
                    self.calls[name] += 1
                return real(*args, **kwargs)

            return wrapper

        def open_(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_CREAT:
                with lock:
                    self.calls["file_created"] += 1
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", counting("rename", real_rename))
        monkeypatch.setattr(os, "replace", counting("replace", real_replace))
        monkeypatch.setattr(os, "link", counting("link", real_link))
        monkeypatch.setattr(os, "open", open_)
        monkeypatch.setattr(_files, "decode_entry", counting("decode", real_decode))
        monkeypatch.setattr(store, "decode_entry", counting("decode", real_decode))

    def take(self) -> dict[str, int]:
        """The counts since the last take, without zeros."""
        taken = {k: v for k, v in self.calls.items() if v}
        self.calls.clear()
        return taken


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", clock=lambda: T0)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counted]:
    yield Counted(monkeypatch)


def delivered(at: float = T0) -> Attempt:
    return Attempt(at, 0.1, "relay", 250, "2.0.0 Ok: queued as Q1", "Q1", delivered=("b@x",))


def test_enqueue_fsyncs_one_file_and_the_two_folders(spool: Spool, counted: Counted) -> None:
    """A message given as bytes is one new file, fsynced once; msg/ and queue/ once each."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    assert counted.take() == {
        "file_created": 1,
        "file_fsync": 1,
        "dir_fsync": 2,
        "link": 1,
        "rename": 1,
    }
    assert spool.read_message(entry_id) == MESSAGE
    assert spool.get(entry_id).pending == ("b@x",)


def test_delivered_message_is_one_write_and_one_rename_to_finish(
    spool: Spool, counted: Counted
) -> None:
    """
    Claiming is one rename, not fsynced; finishing with the attempt is one new
    file, one fsync of it, one rename, and no second decode of the envelope.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    assert spool.due(T0, 10) == [entry_id]
    counted.take()
    claimed = spool.claim(entry_id)
    assert claimed is not None
    assert counted.take() == {"rename": 1, "decode": 1}
    assert spool.read_message(entry_id) == MESSAGE
    done = spool.complete(entry_id, attempt=delivered())
    taken = counted.take()
    assert taken.pop("dir_fsync") <= 2
    assert taken == {"file_created": 1, "file_fsync": 1, "rename": 1}
    assert done.state is State.DONE
    stored = spool.get(entry_id)
    assert stored.state is State.DONE
    assert [a.queue_id for a in stored.attempts] == ["Q1"]
    assert stored.outcome is not None and stored.outcome.kind is OutcomeKind.DELIVERED
    assert files(spool, "sending") == files(spool, "queue") == files(spool, "tmp") == []


def test_claim_with_message_reads_the_one_file_once(
    spool: Spool, counted: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    claim_with_message() of an entry enqueued as bytes is one rename and one
    read: the held file is the message file too.  Once its envelope has been
    rewritten (a retry), the message is not in that file: None, and
    read_message() reads it.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x", "c@x"])
    assert spool.due(T0, 10) == [entry_id]
    counted.take()
    opened: list[str] = []
    real_open = open

    def recording_open(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.path.basename(os.fspath(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", recording_open)
    taken = spool.claim_with_message(entry_id)
    assert taken is not None
    entry, message = taken
    assert (entry.id, entry.pending, message) == (entry_id, ("b@x", "c@x"), MESSAGE)
    assert counted.take() == {"rename": 1, "decode": 1}
    assert opened == [f"{entry_id}.{os.getpid()}.json"]
    later = Attempt(T0, 0.1, "relay", 451, "later", temporary=True, delivered=("b@x",))
    spool.reschedule(entry_id, T0, later)
    assert spool.due(T0, 10) == [entry_id]
    retaken = spool.claim_with_message(entry_id)
    assert retaken is not None and retaken[1] is None
    assert retaken[0].pending == ("c@x",)
    assert spool.read_message(entry_id) == MESSAGE
    assert spool.complete(entry_id, attempt=delivered()).state is State.DONE
    assert spool.claim_with_message(entry_id) is None


def test_failed_message_is_one_write_and_one_rename(spool: Spool, counted: Counted) -> None:
    """fail() with the attempt records both in one write and moves to failed/."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    counted.take()
    refused = Attempt(T0, 0.1, "relay", 550, "5.1.1 no such user")
    failed = spool.fail(entry_id, Outcome(T0, OutcomeKind.FAILED, 550, "no"), attempt=refused)
    taken = counted.take()
    taken.pop("dir_fsync")
    assert taken == {"file_created": 1, "file_fsync": 1, "rename": 1}
    assert failed.state is State.FAILED
    assert spool.get(entry_id).attempts == (refused,)
    assert spool.read_message(entry_id) == MESSAGE


def test_recovery_drops_the_held_copy_a_finish_left(spool: Spool) -> None:
    """
    A crash between a finish's rename and the removal of the held file
    leaves both; recovery keeps the finished one and sends nothing again.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    [held] = files(spool, "sending")
    held_path = os.path.join(spool.path, "sending", held)
    shutil.copy(held_path, held_path + ".copy")
    spool.complete(entry_id, attempt=delivered())
    os.rename(held_path + ".copy", held_path)
    report = Spool(spool.path).recover()
    assert report["finished"] == 1 and report["requeued"] == 0
    assert files(spool, "sending") == files(spool, "queue") == []
    assert spool.get(entry_id).state is State.DONE


def test_enqueue_many_is_one_group_commit(spool: Spool, counted: Counted) -> None:
    """N messages: N files each fsynced, and each folder fsynced once for all."""
    subs = [Submission(MESSAGE + b"%d" % i, "a@x", [f"r{i}@x"]) for i in range(5)]
    ids = spool.enqueue_many(subs)
    assert counted.take() == {
        "file_created": 5,
        "file_fsync": 5,
        "dir_fsync": 2,
        "link": 5,
        "rename": 5,
    }
    assert spool.due(T0, 10) == ids
    assert [spool.read_message(i) for i in ids] == [s.message for s in subs]
    assert [spool.get(i).recipients[0].address for i in ids] == [f"r{i}@x" for i in range(5)]


def test_enqueue_many_checks_every_message_before_storing_any(spool: Spool) -> None:
    """One bad address among several: EnvelopeError, and nothing is stored."""
    subs = [
        Submission(MESSAGE, "a@x", ["b@x"]),
        Submission(MESSAGE, "a@x", ["bad\r\nRCPT TO:<x@y>"]),
        Submission(MESSAGE, "a@x", ["c@x"]),
    ]
    with pytest.raises(EnvelopeError):
        spool.enqueue_many(subs)
    assert files(spool, "queue") == files(spool, "msg") == files(spool, "tmp") == []


def test_enqueue_many_full_disk_leaves_nothing(spool: Spool, counted: Counted) -> None:
    """A full disk while writing the third message: SpoolFull, no file left anywhere."""
    counted.fail_fsync_at = 3
    subs = [Submission(MESSAGE, "a@x", [f"r{i}@x"]) for i in range(4)]
    with pytest.raises(SpoolFull):
        spool.enqueue_many(subs)
    assert files(spool, "queue") == files(spool, "msg") == files(spool, "tmp") == []


def test_streamed_message_gets_a_file_of_its_own(spool: Spool, tmp_path: Path) -> None:
    """A message given as a file object is copied to msg/ as it is, its envelope apart."""
    source = tmp_path / "big.eml"
    source.write_bytes(MESSAGE * 100)
    with open(source, "rb") as f:
        entry_id = spool.enqueue(f, "a@x", ["b@x"])
    assert Path(spool.message_path(entry_id)).read_bytes() == MESSAGE * 100
    assert spool.get(entry_id).size == len(MESSAGE) * 100


def test_message_path_splits_a_message_stored_with_its_envelope(spool: Spool) -> None:
    """message_path() gives a file holding only the message; the queued entry still reads."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    [queued] = files(spool, "queue")
    assert Path(spool.path, "queue", queued).read_bytes().endswith(b"\n" + MESSAGE)
    assert Path(spool.message_path(entry_id)).read_bytes() == MESSAGE
    assert spool.read_message(entry_id) == MESSAGE
    assert spool.claim(entry_id) is not None


def test_group_commit_shares_folder_fsyncs(spool: Spool, counted: Counted) -> None:
    """
    Three failures finished in one group_commit(): three file fsyncs, each
    folder fsynced once at the end, and the held files removed only after that.
    """
    ids = spool.enqueue_many([Submission(MESSAGE, "a@x", [f"r{i}@x"]) for i in range(3)])
    for entry_id in ids:
        spool.claim(entry_id)
    counted.take()
    refused = Attempt(T0, 0.1, "relay", 550, "5.1.1 no such user")
    with spool.group_commit():
        for entry_id in ids:
            spool.fail(entry_id, Outcome(T0, OutcomeKind.FAILED, 550, "no"), attempt=refused)
        assert counted.calls["dir_fsync"] == 0
        assert len(files(spool, "sending")) == 3
    assert counted.take() == {"file_created": 3, "file_fsync": 3, "rename": 3, "dir_fsync": 2}
    assert files(spool, "sending") == []
    assert [spool.get(i).state for i in ids] == [State.FAILED] * 3


def claimed_three(spool: Spool) -> list[str]:
    ids = spool.enqueue_many([Submission(MESSAGE, "a@x", [f"r{i}@x"]) for i in range(3)])
    for entry_id in ids:
        assert spool.claim(entry_id) is not None
    return ids


def test_deliveries_in_a_group_wait_for_a_checkpoint(spool: Spool, counted: Counted) -> None:
    """
    Deliveries finished in a group_commit() fsync nothing: each is one new
    file and two renames (into done/, and the held file to its copy).  They
    read as done at once; checkpoint() then fsyncs the three files and done/
    and queue/ once, and removes the copies.
    """
    ids = claimed_three(spool)
    counted.take()
    with spool.group_commit():
        for entry_id in ids:
            spool.complete(entry_id, attempt=delivered())
    assert counted.take() == {"file_created": 3, "rename": 6}
    assert files(spool, "sending") == sorted(f"{i}.{os.getpid()}.delivered" for i in ids)
    assert spool.unsynced() == 3
    assert [spool.get(i).state for i in ids] == [State.DONE] * 3
    assert spool.counts()["sending"] == 0
    counted.take()
    assert spool.checkpoint() == 3
    assert counted.take() == {"file_fsync": 3, "dir_fsync": 2}
    assert files(spool, "sending") == [] and spool.unsynced() == 0
    assert spool.checkpoint() == 0


def test_group_commit_ends_with_a_due_checkpoint(
    spool: Spool, counted: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once enough deliveries wait, the group commit that ends makes them durable."""
    monkeypatch.setattr(_finish, "CHECKPOINT_COUNT", 3)
    ids = claimed_three(spool)
    counted.take()
    with spool.group_commit():
        for entry_id in ids[:2]:
            spool.complete(entry_id, attempt=delivered())
    assert counted.take().get("file_fsync", 0) == 0
    with spool.group_commit():
        spool.complete(ids[2], attempt=delivered())
    assert counted.take()["file_fsync"] == 3
    assert files(spool, "sending") == []


def test_delivery_outside_a_group_is_durable_on_return(spool: Spool, counted: Counted) -> None:
    """A complete() on its own keeps the strict path: fsynced before it returns."""
    [entry_id, *_] = claimed_three(spool)
    counted.take()
    spool.complete(entry_id, attempt=delivered())
    assert counted.take()["file_fsync"] == 1
    assert spool.unsynced() == 0
    assert f"{entry_id}.{os.getpid()}.delivered" not in files(spool, "sending")


class Journal:
    """Records fsyncs (by path) and removals, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, str]] = []
        self.fail_on: str | None = None
        lock = threading.Lock()
        real_fsync, real_unlink = os.fsync, os.unlink

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if self.fail_on is not None and path.endswith(self.fail_on):
                raise OSError(errno.EIO, "Input/output error")
            real_fsync(fd)
            with lock:
                self.events.append(("fsync", path))

        def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
            real_unlink(path, *args, **kwargs)
            with lock:
                self.events.append(("unlink", os.fspath(path)))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "unlink", unlink)

    def index(self, event: tuple[str, str]) -> int:
        return self.events.index(event)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_checkpoint_drops_a_copy_only_once_its_delivery_is_durable(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A delivery's held copy is removed only after its finished file and the
    done/ and queue/ folders were fsynced; if an fsync fails, checkpoint()
    raises, every copy stays, and the next checkpoint makes them durable.
    """
    ids = claimed_three(spool)
    with spool.group_commit():
        for entry_id in ids:
            spool.complete(entry_id, attempt=delivered())
    journal = Journal(monkeypatch)
    journal.fail_on = f"{ids[1]}.json"
    with pytest.raises(OSError, match="Input/output"):
        spool.checkpoint()
    assert not [e for e in journal.events if e[0] == "unlink"]
    assert len(files(spool, "sending")) == 3 and spool.unsynced() == 3
    journal.fail_on = None
    journal.events.clear()
    assert spool.checkpoint() == 3
    sending = os.path.join(spool.path, "sending")
    for entry_id in ids:
        removed = journal.index(("unlink", f"{sending}/{entry_id}.{os.getpid()}.delivered"))
        done = os.path.join(spool.path, "done")
        assert journal.index(("fsync", f"{done}/{entry_id}.json")) < removed
        assert journal.index(("fsync", done)) < removed
        assert journal.index(("fsync", os.path.join(spool.path, "queue"))) < removed


def test_failing_backstop_checkpoint_fails_no_change_of_its_group(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    When the checkpoint a group commit ends with fails, the group's own
    (durable) changes are not reported failed; the deliveries keep waiting,
    copies kept, until a checkpoint succeeds.
    """
    monkeypatch.setattr(_finish, "CHECKPOINT_COUNT", 1)
    [entry_id, *_] = claimed_three(spool)
    real_sync = spool._sync_files

    def failing(paths: list[str], **kwargs: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool, "_sync_files", failing)
    with spool.group_commit():
        done = spool.complete(entry_id, attempt=delivered())
    assert done.state is State.DONE
    assert spool.unsynced() == 1
    assert f"{entry_id}.{os.getpid()}.delivered" in files(spool, "sending")
    monkeypatch.setattr(spool, "_sync_files", real_sync)
    assert spool.checkpoint() == 1
    assert f"{entry_id}.{os.getpid()}.delivered" not in files(spool, "sending")


def as_dead_process(spool: Spool) -> None:
    """Rename this process's files in sending/ as a dead process's."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sending = os.path.join(spool.path, "sending")
    for name in os.listdir(sending):
        os.rename(
            os.path.join(sending, name),
            os.path.join(sending, name.replace(f".{os.getpid()}.", f".{dead.pid}.")),
        )


@pytest.mark.parametrize("left", ["intact", "empty", "torn", "missing"])
def test_power_cut_before_a_checkpoint_loses_no_message(spool: Spool, left: str) -> None:
    """
    Whatever a power cut before the checkpoint left of a delivery's finished
    file, recover() keeps the entry in one well-formed place: done if the
    file reads whole, else queued again from the held copy (sent twice,
    never lost).
    """
    [entry_id, *_] = claimed_three(spool)
    with spool.group_commit():
        spool.complete(entry_id, attempt=delivered())
    done = Path(spool.path, "done", f"{entry_id}.json")
    if left == "empty":
        done.write_bytes(b"")
    elif left == "torn":
        done.write_bytes(done.read_bytes()[:20])
    elif left == "missing":
        done.unlink()
    as_dead_process(spool)
    spool._unsynced.clear()  # the power cut took this process's memory too
    report = Spool(spool.path, clock=lambda: T0).recover()
    entry = spool.get(entry_id)
    if left == "intact":
        assert (report["finished"], entry.state) == (1, State.DONE)
        assert entry.outcome is not None and entry.outcome.queue_id == "Q1"
    else:
        assert (report["requeued"], entry.state, entry.pending) == (3, State.QUEUED, ("r0@x",))
        assert files(spool, "done") == []
    # A torn record is kept aside for the operator, without the message.
    assert len(spool.corrupt()) == (1 if left in ("empty", "torn") else 0)
    assert spool.read_message(entry_id) == MESSAGE
    assert files(spool, "sending") == []


def test_retry_waits_for_a_finish_to_be_committed(spool: Spool) -> None:
    """
    Retrying an entry whose finish is not yet committed answers EntryBusy
    (it is still held); once committed, the retry queues it again.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    refused = Attempt(T0, 0.1, "relay", 550, "5.1.1 no such user")
    with spool.group_commit():
        spool.fail(entry_id, Outcome(T0, OutcomeKind.FAILED, 550, "no"), attempt=refused)
        with pytest.raises(EntryBusy):
            spool.retry(entry_id)
    spool.retry(entry_id)
    assert spool.due(T0, 10) == [entry_id]
    assert spool.get(entry_id).state is State.QUEUED
