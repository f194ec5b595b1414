"""
Tests for the spool's operator holds, rescheduling and idempotency keys
(:mod:`txsmtpclient.spool._holds`), on real files in a temporary folder, and
the ``hold`` / ``release`` commands of ``python -m txsmtpclient``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from txsmtpclient.spool.cli import main
from txsmtpclient.spool.envelope import Attempt, State
from txsmtpclient.spool.store import EntryBusy, EntryNotFound, EntryStateError, Spool

REPO = Path(__file__).resolve().parent.parent
MESSAGE = b"From: a@x\r\nTo: b@x\r\nSubject: hi\r\n\r\nHello.\r\n"
T0 = 1_900_000_000.0


def clock() -> float:
    return T0


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", clock=clock, fsync=False)


def files(spool: Spool, sub: str) -> list[str]:
    return sorted(os.listdir(os.path.join(spool.path, sub)))


def test_hold_is_never_due_until_released(spool: Spool) -> None:
    """A held entry leaves queue/ for held/, is never due, and release queues it again."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    held = spool.hold(entry_id)
    assert held.state is State.HELD
    assert files(spool, "held") == [f"{entry_id}.json"]
    assert files(spool, "queue") == []
    assert spool.due(T0 + 10 * 86400, 10) == []
    assert spool.claim(entry_id) is None
    assert spool.get(entry_id).state is State.HELD
    assert [e.id for e in spool.list(State.HELD)] == [entry_id]
    assert spool.counts()["held"] == 1
    assert spool.recover()["requeued"] == 0
    assert spool.get(entry_id).state is State.HELD
    queued = spool.unhold(entry_id)
    assert (queued.state, queued.due) == (State.QUEUED, T0)
    assert spool.due(T0, 10) == [entry_id]
    assert files(spool, "held") == []


def test_hold_and_release_refuse_wrong_states(spool: Spool) -> None:
    """Holding a held or busy entry, or releasing a queued one, raises the typed errors."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    with pytest.raises(EntryStateError, match="queue, not held"):
        spool.unhold(entry_id)
    spool.hold(entry_id)
    with pytest.raises(EntryStateError, match="held, not queued"):
        spool.hold(entry_id)
    # retry releases a held entry too, due now (the CLI's and API's retry).
    assert spool.retry(entry_id).state is State.QUEUED
    busy = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(busy)
    with pytest.raises(EntryBusy):
        spool.hold(busy)
    with pytest.raises(EntryBusy):
        spool.unhold(busy)
    for method in (spool.hold, spool.unhold):
        with pytest.raises(EntryNotFound):
            method("6615ae2d8caa3-7967-af987231")
        with pytest.raises(EntryNotFound):
            method("../../etc/passwd")


def test_cancel_held_entry(spool: Spool) -> None:
    """A held entry can be cancelled without releasing it first."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.hold(entry_id)
    assert spool.cancel(entry_id).state is State.CANCELLED
    assert files(spool, "held") == []
    assert files(spool, "cancelled") == [f"{entry_id}.json"]


def test_set_due_reschedules_queued_and_held(spool: Spool) -> None:
    """set_due renames a queued entry to its new due time and keeps a held one held."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    moved = spool.set_due(entry_id, T0 + 3600)
    assert (moved.state, moved.due, moved.occurrence_due) == (State.QUEUED, T0 + 3600, T0 + 3600)
    assert files(spool, "queue") == [f"{int((T0 + 3600) * 1000):015d}.{entry_id}.json"]
    assert spool.due(T0 + 3599, 10) == []
    assert spool.get(entry_id).due == T0 + 3600
    spool.hold(entry_id)
    still_held = spool.set_due(entry_id, T0 + 60)
    assert (still_held.state, still_held.due) == (State.HELD, T0 + 60)
    assert spool.get(entry_id).state is State.HELD
    assert spool.unhold(entry_id).due == T0 + 60
    done = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(done)
    spool.complete(done)
    with pytest.raises(EntryStateError, match="done"):
        spool.set_due(done, T0)


SET_DUE_DIES = """
import os, sys
from txsmtpclient.spool.store import Spool
spool = Spool(sys.argv[1], fsync=False)
moves = []
real_move = spool._move

def move(src, dst, **kw):
    moves.append(dst)
    if sys.argv[3] == str(len(moves)):
        os._exit(9)  # killed before this rename
    real_move(src, dst, **kw)

def die(*args, **kw):
    os._exit(9)  # killed before the new envelope is written

spool._move = move
if sys.argv[3] == "write":
    spool._write_entry = die
spool.set_due(sys.argv[2], 1_900_000_600.0)
"""


@pytest.mark.parametrize("dies_at", ["2", "write"])
def test_set_due_on_held_entry_stays_held_across_a_crash(tmp_path: Path, dies_at: str) -> None:
    """
    A process killed in the middle of set_due() on a held entry (before its
    new envelope is written, or before it is renamed back) leaves it held
    after recover(), never queued.
    """
    spool = Spool(tmp_path / "spool", clock=clock, fsync=False)
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.hold(entry_id)
    done = subprocess.run(
        [sys.executable, "-c", SET_DUE_DIES, spool.path, entry_id, dies_at],
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 9
    assert files(spool, "held") == []  # it was mid-change when killed
    Spool(spool.path, clock=clock, fsync=False).recover()
    assert files(spool, "held") == [f"{entry_id}.json"]
    assert files(spool, "queue") == files(spool, "sending") == []
    assert spool.get(entry_id).state is State.HELD
    assert spool.due(T0 + 10**6, 10) == []


def test_set_due_keeps_lifetime_of_attempted_entry(spool: Spool) -> None:
    """An entry already attempted keeps its queue lifetime's start when rescheduled."""
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    spool.reschedule(entry_id, T0 + 60, Attempt(T0, 1.0, "relay", 451, "later", temporary=True))
    moved = spool.set_due(entry_id, T0 + 7200)
    assert (moved.due, moved.occurrence_due, len(moved.attempts)) == (T0 + 7200, T0, 1)


def test_idempotency_key_stores_one_copy(spool: Spool) -> None:
    """A repeated key returns the first id and writes nothing; another key stores anew."""
    first = spool.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key="order-17")
    again = spool.enqueue(b"other", "c@x", ["d@x"], idempotency_key="order-17")
    assert again == first
    assert files(spool, "msg") == [f"{first}.eml"]
    assert len(files(spool, "queue")) == 1
    assert files(spool, "tmp") == []
    other = spool.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key="order-18")
    assert other != first
    assert len(files(spool, "queue")) == 2
    # The key survives a new Spool object (a restarted daemon): it is on disk.
    reopened = Spool(spool.path, clock=clock, fsync=False)
    assert reopened.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key="order-17") == first
    # Still the first id once the entry is delivered.
    spool.claim(first)
    spool.complete(first)
    assert spool.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key="order-17") == first


def test_idempotency_key_naming_missing_entry_is_taken_over(spool: Spool) -> None:
    """A key whose entry never landed (a crash in between) or was purged stores anew."""
    first = spool.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key="k")
    spool.cancel(first)
    assert spool.purge(T0 + 10**10) == 1
    second = spool.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key="k")
    assert second != first
    assert spool.get(second).state is State.QUEUED


@pytest.mark.parametrize("key", ["", "x" * 256, "a\nb", "a\x00b"])
def test_idempotency_key_rejects_bad_keys(spool: Spool, key: str) -> None:
    """Empty, over-long or unprintable keys are refused before anything is stored."""
    with pytest.raises(ValueError, match="idempotency key"):
        spool.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key=key)
    assert files(spool, "msg") == []


def test_idempotency_key_concurrent_writers_store_once(spool: Spool) -> None:
    """Threads enqueueing with one key at once all get one id, and one entry exists."""
    ids: list[str] = []
    barrier = threading.Barrier(6)

    def writer() -> None:
        barrier.wait(timeout=10)
        own = Spool(spool.path, clock=clock, fsync=False)
        ids.append(own.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key="same"))

    threads = [threading.Thread(target=writer) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(ids) == 6 and len(set(ids)) == 1
    assert files(spool, "msg") == [f"{ids[0]}.eml"]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, stdin=io.BytesIO(MESSAGE), stdout=out, stderr=err, environ={}, clock=clock)
    return code, out.getvalue(), err.getvalue()


def test_cli_hold_and_release(tmp_path: Path) -> None:
    """`hold ID` and `release ID` move an entry, `list --state held` shows it, errors exit 1."""
    spool_dir = str(tmp_path / "spool")
    _, out, _ = run(["enqueue", "--spool", spool_dir, "--from", "a@x", "--to", "b@x"])
    entry_id = out.split()[0]
    assert run(["hold", "--spool", spool_dir, entry_id]) == (0, f"held {entry_id}\n", "")
    code, out, _ = run(["list", "--spool", spool_dir, "--state", "held"])
    assert code == 0 and entry_id in out
    code, out, err = run(["hold", "--spool", spool_dir, entry_id])
    assert (code, out) == (1, "") and "held, not queued" in err
    code, out, _ = run(["release", "--spool", spool_dir, entry_id])
    assert code == 0 and out.startswith(f"queued {entry_id}, due ")
    code, out, err = run(["release", "--spool", spool_dir, entry_id])
    assert (code, out) == (1, "") and "not held" in err
    assert Spool(spool_dir).get(entry_id).state is State.QUEUED


def test_cli_hold_real_process(tmp_path: Path) -> None:
    """`python -m txsmtpclient hold ID` in a real process holds the entry."""
    spool_dir = str(tmp_path / "spool")
    entry_id = Spool(spool_dir).enqueue(MESSAGE, "a@x", ["b@x"])
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [sys.executable, "-m", "txsmtpclient", "hold", "--spool", spool_dir, entry_id],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, f"held {entry_id}\n", "")
    assert Spool(spool_dir).get(entry_id).state is State.HELD


def test_enqueue_many_honours_idempotency_keys(spool: Spool) -> None:
    """A keyed Submission in a batch is stored once, as a keyed enqueue is."""
    from txsmtpclient.spool.queue import Submission

    first = spool.enqueue(MESSAGE, "a@x", ["b@x"], idempotency_key="order-1")
    ids = spool.enqueue_many(
        [
            Submission(MESSAGE, "a@x", ["b@x"], idempotency_key="order-1"),
            Submission(MESSAGE, "a@x", ["c@x"]),
        ]
    )
    assert ids[0] == first and ids[1] != first
    assert spool.counts()["queue"] == 2
