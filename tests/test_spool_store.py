"""
Tests for txsmtpclient.spool.store: the Spool folder queue (real files in a
temporary folder; crash tests SIGKILL real subprocesses).
"""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from txsmtpclient.spool.codec import encode_entry
from txsmtpclient.spool.envelope import (
    Attempt,
    Entry,
    Outcome,
    OutcomeKind,
    RecipientState,
    ReplyRecord,
    State,
)
from txsmtpclient.spool.schedule import Recurrence
from txsmtpclient.spool.store import (
    EntryBusy,
    EntryNotFound,
    EntryStateError,
    IQueue,
    Spool,
    SpoolFull,
    new_id,
)

REPO = Path(__file__).resolve().parent.parent
MESSAGE = b"From: a@x\r\nTo: b@x\r\nSubject: hi\r\n\r\nHello.\r\n"
T0 = 1_900_000_000.0


class FakeClock:
    """
    A settable clock for the spool.
    """

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def spool(tmp_path: Path, clock: FakeClock) -> Spool:
    return Spool(tmp_path / "spool", clock=clock)


def files(spool: Spool, sub: str) -> list[str]:
    return sorted(os.listdir(os.path.join(spool.path, sub)))


def attempt(
    at: float,
    *,
    code: int | None = 250,
    text: str = "2.0.0 Ok: queued as Q1",
    delivered: tuple[str, ...] = (),
    refused: dict[str, ReplyRecord] | None = None,
    temporary: bool = False,
) -> Attempt:
    return Attempt(
        at=at,
        duration=0.5,
        relay="tcp:127.0.0.1:2525",
        code=code,
        text=text,
        queue_id="Q1" if code == 250 else None,
        temporary=temporary,
        delivered=delivered,
        refused=refused or {},
    )


def test_spool_implements_iqueue(spool: Spool) -> None:
    """
    Spool satisfies the IQueue protocol the daemon codes against.
    """
    queue: IQueue = spool
    assert isinstance(queue, IQueue)


def test_enqueue_writes_message_and_envelope(spool: Spool) -> None:
    """
    Enqueue leaves the message in msg/ and the envelope in queue/, named by
    due time, with nothing in tmp/; get() reads it back.
    """
    entry_id = spool.enqueue(
        MESSAGE, "a@x", ["b@x", "c@x"], mail_options=["SMTPUTF8"], rcpt_options=["X=1"]
    )
    assert files(spool, "tmp") == []
    assert files(spool, "msg") == [f"{entry_id}.eml"]
    assert files(spool, "queue") == [f"{int(T0 * 1000):015d}.{entry_id}.json"]
    assert spool.read_message(entry_id) == MESSAGE
    entry = spool.get(entry_id)
    assert (entry.state, entry.sender, entry.pending) == (State.QUEUED, "a@x", ("b@x", "c@x"))
    assert (entry.mail_options, entry.rcpt_options) == (("SMTPUTF8",), ("X=1",))
    assert (entry.due, entry.created, entry.size) == (T0, T0, len(MESSAGE))
    assert spool.counts() == {
        "queue": 1,
        "sending": 0,
        "done": 0,
        "failed": 0,
        "cancelled": 0,
        "corrupt": 0,
        "held": 0,
    }


def test_enqueue_accepts_str_and_file_objects(spool: Spool) -> None:
    """
    A str is stored UTF-8 encoded; a binary file is streamed in.
    """
    first = spool.enqueue("Subject: é\n\nx\n", "a@x", "b@x")
    second = spool.enqueue(io.BytesIO(MESSAGE * 1000), "a@x", ["b@x"])
    assert spool.read_message(first) == "Subject: é\n\nx\n".encode()
    assert spool.read_message(second) == MESSAGE * 1000
    assert spool.get(second).size == len(MESSAGE) * 1000
    with open(spool.message_path(second), "rb") as f:
        assert f.read(4) == b"From"


def test_ids_are_unique(spool: Spool) -> None:
    """
    Ids from one process at one instant still differ.
    """
    ids = {spool.enqueue(MESSAGE, "a@x", ["b@x"]) for _ in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize(
    ("sender", "recipients", "options"),
    [("a@x", [], []), ("a@x\r\n", ["b@x"], []), ("a@x", ["<b@x>"], []), ("a@x", ["b@x"], ["A B"])],
)
def test_enqueue_rejects_bad_envelope(
    spool: Spool, sender: str, recipients: list[str], options: list[str]
) -> None:
    """
    A bad envelope raises before anything is written.
    """
    with pytest.raises(ValueError):
        spool.enqueue(MESSAGE, sender, recipients, mail_options=options)
    assert files(spool, "msg") == files(spool, "queue") == files(spool, "tmp") == []


def test_enqueue_disk_full_leaves_nothing(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    """
    ENOSPC while writing raises SpoolFull (an OSError with the errno) and
    leaves no partial entry or temporary file.
    """
    calls = []

    def full_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:  # the envelope, after the message was written
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_fsync)
    with pytest.raises(SpoolFull, match="disk is full") as info:
        spool.enqueue(MESSAGE, "a@x", ["b@x"])
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    assert files(spool, "msg") == files(spool, "queue") == files(spool, "tmp") == []


def test_enqueue_rename_failure_leaves_nothing(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A failure renaming the envelope into queue/ removes the message already
    moved into msg/.
    """
    real_rename = os.rename

    def failing_rename(src: str, dst: str) -> None:
        if os.sep + "queue" + os.sep in dst:
            raise OSError(errno.EIO, "I/O error")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="I/O error"):
        spool.enqueue(MESSAGE, "a@x", ["b@x"])
    assert files(spool, "msg") == files(spool, "queue") == files(spool, "tmp") == []


def test_due_finds_only_due_entries_in_order(spool: Spool, clock: FakeClock) -> None:
    """
    due() returns entries due by now, earliest first, at most limit.
    """
    late = spool.enqueue(MESSAGE, "a@x", ["b@x"], at=T0 + 100)
    early = spool.enqueue(MESSAGE, "a@x", ["b@x"], at=T0 - 100)
    middle = spool.enqueue(MESSAGE, "a@x", ["b@x"], at=T0 - 50)
    assert spool.due(T0, 10) == [early, middle]
    assert spool.due(T0, 1) == [early]
    assert spool.due(T0 + 100, 10) == [early, middle, late]
    assert spool.next_due() == T0 - 100


def test_due_scales_by_name(tmp_path: Path) -> None:
    """
    With 20,000 waiting entries, due() finds the few due ones from file
    names alone, reading none of them, quickly.  (20,000 rather than 100,000
    keeps creating the files to about a second; the cost of due() is one
    listdir and a sort, linear in names, and 100,000 measured 0.1 s.)
    """
    spool = Spool(tmp_path / "spool", fsync=False)
    now = time.time()
    due_ids = [spool.enqueue(MESSAGE, "a@x", ["b@x"], at=now - k) for k in range(5)]
    queue = os.path.join(spool.path, "queue")
    later = int((now + 3600) * 1000)
    for k in range(20_000):
        # Empty envelopes: reading any of them would set it aside as corrupt.
        name = f"{later + k:015d}.{k:x}-1-00000000.json"
        os.close(os.open(os.path.join(queue, name), os.O_CREAT | os.O_WRONLY))
    reads = []
    real_read = Spool._read

    def counting_read(self: Spool, path: str, entry_id: str, state: State) -> Entry:
        reads.append(path)
        return real_read(self, path, entry_id, state)

    Spool._read = counting_read  # type: ignore[method-assign]
    try:
        found = spool.due(now, 100)
        again = spool.due(now, 100)
    finally:
        Spool._read = real_read  # type: ignore[method-assign]
    assert sorted(found) == sorted(due_ids)
    assert again == found
    assert reads == []
    assert files(spool, "corrupt") == []
    assert spool.counts()["queue"] == 20_005


def test_claim_is_exclusive(spool: Spool) -> None:
    """
    claim() moves the entry to sending/ under this pid; a second claim gets
    None.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    claimed = spool.claim(entry_id)
    assert claimed is not None and claimed.state is State.SENDING
    assert files(spool, "sending") == [f"{entry_id}.{os.getpid()}.json"]
    assert files(spool, "queue") == []
    assert spool.claim(entry_id) is None
    assert spool.get(entry_id).state is State.SENDING


def test_claim_of_an_id_rescheduled_since_due_saw_it(
    spool: Spool, clock: FakeClock, tmp_path: Path
) -> None:
    """
    An id due() returned, rescheduled later by another process before the
    claim (an operator's set_due, another daemon's retry), is not claimed:
    it is sent when its new time comes, not at once.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    assert spool.due(clock(), 10) == [entry_id]
    Spool(tmp_path / "spool", clock=clock).set_due(entry_id, clock() + 86400)
    assert spool.claim_with_message(entry_id) is None
    assert spool.claim(entry_id) is not None  # a claim by id alone still takes it


CLAIMER = """
import sys
from txsmtpclient.spool.store import Spool
spool = Spool(sys.argv[1])
sys.stdin.readline()  # start together
for entry_id in sys.argv[2:]:
    if spool.claim(entry_id) is not None:
        print(entry_id, flush=True)
"""


def test_claim_across_processes_gives_each_entry_once(spool: Spool) -> None:
    """
    Four processes claiming the same 40 entries claim each exactly once.
    """
    ids = [spool.enqueue(MESSAGE, "a@x", ["b@x"]) for _ in range(40)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, spool.path, *random.sample(ids, len(ids))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate("go\n", timeout=60)[0].split() for p in procs]
    claimed = [i for out in outputs for i in out]
    assert sorted(claimed) == sorted(ids)
    assert len(files(spool, "sending")) == 40


def test_partial_refusal_reschedules_remaining(spool: Spool, clock: FakeClock) -> None:
    """
    After an attempt that delivered to one recipient, failed one (5xx) and
    deferred one (4xx), reschedule() queues only the deferred one again.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["ok@x", "later@x", "bad@x"])
    spool.claim(entry_id)
    recorded = spool.record_attempt(
        entry_id,
        attempt(
            T0,
            delivered=("ok@x",),
            refused={"later@x": ReplyRecord(451, "4.3.0 later"), "bad@x": ReplyRecord(550, "no")},
        ),
    )
    assert recorded.state is State.SENDING
    assert recorded.pending == ("later@x",)
    queued = spool.reschedule(entry_id, T0 + 300)
    assert queued.state is State.QUEUED
    assert files(spool, "queue") == [f"{int((T0 + 300) * 1000):015d}.{entry_id}.json"]
    assert spool.due(T0 + 299, 10) == []
    assert spool.due(T0 + 300, 10) == [entry_id]
    again = spool.get(entry_id)
    assert again.pending == ("later@x",)
    assert again.failed == ("bad@x",)
    assert again.recipients[2].reply == ReplyRecord(550, "no")
    assert len(again.attempts) == 1 and again.failures == 1


def test_reschedule_records_attempt_and_needs_pending(spool: Spool) -> None:
    """
    reschedule() may record the attempt itself; with nobody pending it
    refuses.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    queued = spool.reschedule(entry_id, T0 + 60, attempt(T0, code=None, text="timeout"))
    assert [a.text for a in queued.attempts] == ["timeout"]
    spool.claim(entry_id)
    spool.record_attempt(entry_id, attempt(T0 + 60, delivered=("b@x",)))
    with pytest.raises(ValueError, match="no pending"):
        spool.reschedule(entry_id, T0 + 120)


def test_complete_moves_to_done_with_outcome(spool: Spool) -> None:
    """
    complete() moves the entry to done/ with the outcome from the last
    attempt (reply and queue id).
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    spool.record_attempt(entry_id, attempt(T0, delivered=("b@x",)))
    done = spool.complete(entry_id)
    assert done.state is State.DONE
    assert files(spool, "done") == [f"{entry_id}.json"]
    assert files(spool, "sending") == []
    outcome = spool.get(entry_id).outcome
    assert outcome is not None
    assert (outcome.kind, outcome.code, outcome.queue_id) == (OutcomeKind.DELIVERED, 250, "Q1")
    assert spool.read_message(entry_id) == MESSAGE


def test_fail_moves_to_failed(spool: Spool) -> None:
    """
    fail() moves the entry to failed/ with the given outcome.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    spool.record_attempt(entry_id, attempt(T0, code=550, text="5.1.1 no", refused={}))
    failed = spool.fail(entry_id, Outcome(T0, OutcomeKind.FAILED, 550, "5.1.1 no"))
    assert failed.state is State.FAILED
    assert spool.get(entry_id).outcome == Outcome(T0, OutcomeKind.FAILED, 550, "5.1.1 no")


def test_operations_need_a_claim(spool: Spool) -> None:
    """
    Changing an entry this process has not claimed raises EntryStateError.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    with pytest.raises(EntryStateError, match="not claimed"):
        spool.record_attempt(entry_id, attempt(T0))
    with pytest.raises(EntryStateError):
        spool.complete(entry_id)
    with pytest.raises(EntryStateError):
        spool.reschedule(entry_id, T0)
    assert spool.get(entry_id).state is State.QUEUED


def test_release_returns_unchanged(spool: Spool) -> None:
    """
    release() puts a claimed entry back in the queue as it was.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"], at=T0 - 5)
    spool.claim(entry_id)
    released = spool.release(entry_id)
    assert released.state is State.QUEUED
    assert spool.due(T0, 10) == [entry_id]
    assert spool.get(entry_id).due == T0 - 5


def test_recurring_complete_requeues_next_occurrence(spool: Spool, clock: FakeClock) -> None:
    """
    Completing a recurring entry queues it again for the next occurrence,
    every recipient pending, the outcome and count recorded.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x", "c@x"], recurrence="every 1h")
    assert spool.get(entry_id).due == T0
    spool.claim(entry_id)
    spool.record_attempt(entry_id, attempt(T0, delivered=("b@x", "c@x")))
    clock.now = T0 + 1
    after = spool.complete(entry_id)
    assert after.state is State.QUEUED
    assert after.due == T0 + 3600
    assert after.pending == ("b@x", "c@x")
    assert after.occurrences == 1
    assert after.outcome is not None and after.outcome.queue_id == "Q1"
    assert files(spool, "done") == []
    assert spool.due(T0 + 3599, 10) == []
    assert spool.due(T0 + 3600, 10) == [entry_id]


def test_recurring_missed_occurrences_sent_once(spool: Spool, clock: FakeClock) -> None:
    """
    A cron entry whose daemon was down for days is due once; after that send
    its next due time is the next occurrence after now.
    """
    day = Recurrence.cron("0 9 * * *", "UTC")
    first = day.next_after(T0)
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"], recurrence=day)
    assert spool.get(entry_id).due == first
    clock.now = first + 3 * 86400 + 60
    assert spool.due(clock.now, 10) == [entry_id]
    spool.claim(entry_id)
    spool.record_attempt(entry_id, attempt(clock.now, delivered=("b@x",)))
    after = spool.complete(entry_id)
    assert after.due == first + 4 * 86400
    assert spool.due(clock.now, 10) == []


def test_cancel(spool: Spool) -> None:
    """
    cancel() moves a queued entry to cancelled/; cancelling again, a busy
    entry or an unknown id raises.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    assert spool.cancel(entry_id).state is State.CANCELLED
    assert files(spool, "cancelled") == [f"{entry_id}.json"]
    with pytest.raises(EntryStateError, match="cancelled"):
        spool.cancel(entry_id)
    busy = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(busy)
    with pytest.raises(EntryBusy):
        spool.cancel(busy)
    with pytest.raises(EntryNotFound):
        spool.cancel("6615ae2d8caa3-7967-af987231")
    with pytest.raises(EntryNotFound):
        spool.cancel("../../etc/passwd")


def test_hold_keeps_entry_back_until_retry(spool: Spool, clock: FakeClock) -> None:
    """
    hold() moves a queued entry to held/, where due() never finds it; get()
    and counts() see it; retry() queues it again with its history.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    held = spool.hold(entry_id)
    assert held.state is State.HELD
    assert files(spool, "held") == [f"{entry_id}.json"]
    assert spool.due(T0 + 10, 10) == []
    assert spool.get(entry_id).state is State.HELD
    assert spool.counts()["held"] == 1
    with pytest.raises(EntryStateError, match="held"):
        spool.hold(entry_id)
    requeued = spool.retry(entry_id)
    assert requeued.state is State.QUEUED and requeued.occurrence_due == held.occurrence_due
    assert spool.due(T0, 10) == [entry_id]
    assert files(spool, "held") == []


def test_retry_queued_makes_due_now(spool: Spool, clock: FakeClock) -> None:
    """
    retry() on a queued entry keeps its history and makes it due now.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"], at=T0 + 86400)
    assert spool.due(T0, 10) == []
    retried = spool.retry(entry_id)
    assert retried.due == T0
    assert spool.due(T0, 10) == [entry_id]
    assert files(spool, "sending") == []


def test_retry_failed_requeues_failed_recipients(spool: Spool, clock: FakeClock) -> None:
    """
    retry() on a failed entry makes its failed recipients pending again with
    a fresh queue lifetime; a delivered entry cannot be retried.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["ok@x", "bad@x"])
    spool.claim(entry_id)
    spool.record_attempt(
        entry_id, attempt(T0, delivered=("ok@x",), refused={"bad@x": ReplyRecord(550, "no")})
    )
    spool.fail(entry_id, Outcome(T0, OutcomeKind.FAILED, 550, "no"))
    clock.now = T0 + 1000
    retried = spool.retry(entry_id)
    assert retried.state is State.QUEUED
    assert retried.pending == ("bad@x",)
    assert retried.delivered == ("ok@x",)
    assert retried.occurrence_due == retried.due == T0 + 1000
    spool.claim(entry_id)
    spool.record_attempt(entry_id, attempt(T0 + 1000, delivered=("bad@x",)))
    spool.complete(entry_id)
    with pytest.raises(EntryStateError, match="done"):
        spool.retry(entry_id)


def test_corrupt_entry_is_set_aside(spool: Spool) -> None:
    """
    An unreadable due entry is moved to corrupt/ with a reason when it is
    claimed, reported to on_set_aside, and the other entries are still served.
    """
    reported: list[tuple[str, str]] = []
    spool = Spool(spool.path, clock=FakeClock(), on_set_aside=lambda p, r: reported.append((p, r)))
    good = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    bad = spool.enqueue(MESSAGE, "a@x", ["c@x"], at=T0 - 1)
    bad_name = files(spool, "queue")[0]
    bad_path = os.path.join(spool.path, "queue", bad_name)
    os.unlink(bad_path)  # the spool never writes a file in place: replace it
    with open(bad_path, "wb") as f:
        f.write(b'{"version": 1, "trunc')
    stray = os.path.join(spool.path, "queue", "0000000000001.junk")
    open(stray, "wb").close()
    assert spool.due(T0, 10) == [bad, good]
    assert spool.claim(bad) is None
    assert spool.claim(good) is not None
    held_name = f"{bad}.{os.getpid()}.json"
    assert sorted(files(spool, "corrupt")) == sorted(
        [
            held_name,
            held_name + ".reason",
            "0000000000001.junk",
            "0000000000001.junk.reason",
            f"{bad}.eml",
        ]
    )
    assert [os.path.basename(p) for p, _ in reported] == ["0000000000001.junk", held_name]
    assert (
        "not UTF-8 JSON" in dict(spool.corrupt())[os.path.join(spool.path, "corrupt", held_name)]
    )
    assert spool.counts()["corrupt"] == 2
    with pytest.raises(EntryNotFound):
        spool.get(bad)


def test_set_aside_by_id(spool: Spool) -> None:
    """
    set_aside() also takes an id, wherever the entry is.
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.set_aside(entry_id, "operator says so")
    assert files(spool, "queue") == []
    assert spool.corrupt()[0][1] == "operator says so"


def test_list_and_counts(spool: Spool, clock: FakeClock) -> None:
    """
    list() reads entries of one state or all; counts() counts names.
    """
    a = spool.enqueue(MESSAGE, "a@x", ["b@x"], at=T0 + 10)
    b = spool.enqueue(MESSAGE, "a@x", ["b@x"], at=T0 + 5)
    c = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.cancel(c)
    assert [e.id for e in spool.list(State.QUEUED)] == [b, a]
    assert {e.id: e.state for e in spool.list()} == {
        a: State.QUEUED,
        b: State.QUEUED,
        c: State.CANCELLED,
    }
    assert spool.counts()["queue"] == 2 and spool.counts()["cancelled"] == 1


def test_purge_removes_old_finished(spool: Spool) -> None:
    """
    purge() deletes finished entries and their messages, never queued ones.
    """
    queued = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    gone = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.cancel(gone)
    assert spool.purge(time.time() + 10) == 1
    assert files(spool, "msg") == [f"{queued}.eml"]
    with pytest.raises(ValueError):
        spool.purge(time.time(), [State.QUEUED])


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recover_puts_abandoned_entries_back(spool: Spool, clock: FakeClock) -> None:
    """
    recover() returns entries held by dead processes (or an earlier process
    with this pid) to the queue, finishes those every recipient answered,
    leaves live holders alone, and removes orphan tmp and msg files.
    """
    pid = dead_pid()
    requeue = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    finished = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    recurring = spool.enqueue(MESSAGE, "a@x", ["b@x"], recurrence="every 1h")
    mine = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    live = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    for entry_id in (requeue, finished, recurring, mine, live):
        spool.claim(entry_id)
    for entry_id in (finished, recurring):
        spool.record_attempt(entry_id, attempt(T0, delivered=("b@x",)))
    sending = os.path.join(spool.path, "sending")
    for entry_id in (requeue, finished, recurring):
        os.rename(
            os.path.join(sending, f"{entry_id}.{os.getpid()}.json"),
            os.path.join(sending, f"{entry_id}.{pid}.json"),
        )
    os.rename(
        os.path.join(sending, f"{live}.{os.getpid()}.json"),
        os.path.join(sending, f"{live}.1.json"),  # pid 1 is always alive
    )
    tmp = os.path.join(spool.path, "tmp")
    open(os.path.join(tmp, f"{pid}.dead.tmp"), "wb").close()
    open(os.path.join(tmp, "1.alive.tmp"), "wb").close()
    orphan = f"6615ae2d8caa3-{pid}-00000000"
    open(os.path.join(spool.path, "msg", f"{orphan}.eml"), "wb").close()
    clock.now = T0 + 10

    report = spool.recover()

    assert report == {
        "requeued": 3,
        "finished": 1,
        "set_aside": 0,
        "tmp_removed": 1,
        "orphans_removed": 1,
    }
    assert spool.get(requeue).state is State.QUEUED
    assert spool.get(mine).state is State.QUEUED
    assert spool.get(finished).state is State.DONE
    again = spool.get(recurring)
    assert (again.state, again.due, again.occurrences) == (State.QUEUED, T0 + 3600, 1)
    assert files(spool, "sending") == [f"{live}.1.json"]
    assert files(spool, "tmp") == ["1.alive.tmp"]
    assert f"{orphan}.eml" not in files(spool, "msg")


CRASHER = """
import os, sys, time
from txsmtpclient.spool.store import Spool
from txsmtpclient.spool.envelope import Attempt
spool = Spool(sys.argv[1])
n = 0
while True:
    entry_id = spool.enqueue(b"Subject: %d\\r\\n\\r\\nx\\r\\n" % n, "a@x", ["b@x", "c@x"])
    print(entry_id, flush=True)
    n += 1
    for entry_id in spool.due(time.time(), 3):
        if spool.claim(entry_id) is None:
            continue
        attempt = Attempt(time.time(), 0.1, "r", 250, "Ok", delivered=("b@x",))
        if n % 2:
            spool.record_attempt(entry_id, attempt)
            spool.reschedule(entry_id, time.time())
        elif n % 4:
            spool.complete(entry_id, attempt=attempt)
        else:
            with spool.group_commit():  # the daemon's way: a checkpoint later
                spool.complete(entry_id, attempt=attempt)
"""


def test_sigkill_at_any_moment_loses_nothing(tmp_path: Path) -> None:
    """
    A process enqueueing, claiming, recording and completing (alone, or in a
    group commit that leaves deliveries to a checkpoint) is SIGKILLed at
    random moments; after recover() every id it reported is in exactly one
    well-formed place with its message, and no temporary file is left.
    """
    path = str(tmp_path / "spool")
    Spool(path)
    reported: set[str] = set()
    rng = random.Random(4)
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHER, path], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        assert proc.stdout is not None
        for _ in range(rng.randint(1, 25)):
            line = proc.stdout.readline()
            assert line, "the writer died on its own"
            reported.add(line.strip())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reported.update(line.strip() for line in proc.stdout if line.strip())
        proc.stdout.close()

    left = os.listdir(os.path.join(path, "sending"))
    assert any(name.endswith(".delivered") for name in left), left  # a checkpoint's work left
    spool = Spool(path)
    spool.recover()
    assert os.listdir(os.path.join(path, "tmp")) == []
    assert os.listdir(os.path.join(path, "sending")) == []
    assert spool.corrupt() == []
    places: dict[str, list[State]] = {}
    for state in State:
        for name in os.listdir(os.path.join(path, state.value)):
            entry_id = name.split(".")[1] if state is State.QUEUED else name.split(".")[0]
            places.setdefault(entry_id, []).append(state)
    assert reported <= set(places)
    assert all(len(states) == 1 for states in places.values())
    for entry in spool.list():
        assert spool.read_message(entry.id).startswith(b"Subject: ")
        assert entry.state in (State.QUEUED, State.DONE)
    messages = {name.removesuffix(".eml") for name in os.listdir(os.path.join(path, "msg"))}
    assert messages == set(places)


def test_entry_json_on_disk_matches_envelope_module(spool: Spool) -> None:
    """
    The queue file holds exactly encode_entry() of the entry, on its first
    line, and then the message (one file, so one fsync at enqueue).
    """
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    entry = spool.get(entry_id)
    with open(os.path.join(spool.path, "queue", files(spool, "queue")[0]), "rb") as f:
        assert f.read() == encode_entry(entry) + b"\n" + MESSAGE
    assert entry.recipients[0].state is RecipientState.PENDING


def test_queue_listing_cached_until_folder_changes(
    spool: Spool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    While queue/ is unchanged (and its mtime safely in the past) due() does
    not list it again; an enqueue from anywhere changes it and is seen.
    """
    first = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    queue = os.path.join(spool.path, "queue")
    past = time.time() - 60
    os.utime(queue, (past, past))
    listings = []
    real_listdir = os.listdir

    def counting_listdir(path: str) -> list[str]:
        listings.append(path)
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", counting_listdir)
    assert spool.due(T0, 10) == [first]
    assert spool.due(T0, 10) == [first]
    assert len(listings) == 1
    second = Spool(spool.path, clock=FakeClock()).enqueue(MESSAGE, "a@x", ["b@x"])
    assert sorted(spool.due(T0, 10)) == sorted([first, second])
    assert len(listings) == 2


def test_recover_keeps_this_process_s_enqueue_in_progress(spool: Spool) -> None:
    """
    A daemon embedded in an application recovers while the application may be
    enqueueing: files this process wrote since it started are not orphans.
    """
    entry_id = new_id(time.time())
    message = os.path.join(spool.path, "msg", f"{entry_id}.eml")
    half_written = os.path.join(spool.path, "tmp", f"{os.getpid()}.abc.tmp")
    for path in (message, half_written):
        with open(path, "wb") as f:
            f.write(b"Subject: x\r\n\r\nbody\r\n")
    report = spool.recover()
    assert report["orphans_removed"] == 0 and report["tmp_removed"] == 0
    assert os.path.exists(message) and os.path.exists(half_written)
    # The same files from before this process started are an earlier
    # process's with a reused pid: removed.
    old = time.time() - 3600
    for path in (message, half_written):
        os.utime(path, (old, old))
    report = spool.recover()
    assert report["orphans_removed"] == 1 and report["tmp_removed"] == 1


def test_set_aside_forgets_the_claimed_entry(spool: Spool) -> None:
    """A claimed entry set aside leaves nothing in the claim cache, which grew before."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    assert spool.claim(entry_id) is not None
    assert entry_id in spool._claimed
    spool.set_aside(entry_id, "test")
    assert entry_id not in spool._claimed
    assert spool.counts()["corrupt"] == 1
