"""
Drain rate of ``twist txsmtp`` daemons with 1, 2 and 4 workers on one queue,
the PostgreSQL queue (``--queue``) side by side with the spool folder
(``--spool``, several daemons on one folder), all sending to Postfix's
``smtp-sink`` on loopback.

Run it on its own (as root it runs PostgreSQL as ``nobody``)::

    .venv/bin/python bench/pg_drain.py                 # 2,000 messages per run
    .venv/bin/python bench/pg_drain.py --smoke         # 100, a quick check
    .venv/bin/python bench/pg_drain.py --messages 5000 --workers 1,2,4 --json

Each run: a fresh queue is filled with N messages, the workers start, and the
rate is the messages the sink accepted between the first arrival and the
last, divided by that time (start-up is not counted); CPU per message is
the daemons' (and, for PostgreSQL, the server's processes') user and system
time over the same span, divided by the messages.  Before the drain the
queue is filled with ``enqueue_many`` (500 a batch), and a further 200
messages are enqueued one by one into a scratch queue: both rates are
reported.  The private
PostgreSQL cluster is durable (fsync on) and so is the spool folder, unless
``--no-fsync`` turns both off.  Numbers depend on the machine and its load:
read the ratios, not the absolutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO / "tests"), str(REPO)]

from pgcluster import PostgresCluster  # noqa: E402
from sink import Sink, ensure_smtp_sink  # noqa: E402

from txsmtpclient.spool.postgres import PostgresQueue  # noqa: E402
from txsmtpclient.spool.queue import Submission  # noqa: E402
from txsmtpclient.spool.store import Spool  # noqa: E402

SENDER = "bench@example.test"
CONCURRENCY = 10


def _message(n: int) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: r{n}@example.test\r\nSubject: drain {n}\r\n"
        f"Message-ID: <drain-{n}@example.test>\r\n\r\n" + "x" * 2000 + "\r\n"
    ).encode()


def _fill(backend: str, where: str, count: int, fsync: bool) -> float:
    """Fill the queue with ``enqueue_many`` (500 a batch); returns msgs/s."""
    batch = [Submission(_message(n), SENDER, f"r{n}@example.test") for n in range(count)]
    started = time.perf_counter()
    if backend == "postgres":
        queue = PostgresQueue(where, max_connections=2)
        try:
            queue.next_due()  # connected before the clock counts
            started = time.perf_counter()
            for start in range(0, count, 500):
                queue.enqueue_many(batch[start : start + 500])
        finally:
            queue.close()
    else:
        spool = Spool(where, fsync=fsync)
        spool.enqueue_many(batch)
    return count / (time.perf_counter() - started)


def _enqueue_one_by_one(backend: str, where: str, count: int, fsync: bool) -> float:
    """Enqueue ``count`` messages one call each into a scratch queue; msgs/s."""
    if backend == "postgres":
        queue = PostgresQueue(where, max_connections=2)
        try:
            queue.next_due()
            started = time.perf_counter()
            for n in range(count):
                queue.enqueue(_message(n), SENDER, f"r{n}@example.test")
        finally:
            queue.close()
    else:
        spool = Spool(where, fsync=fsync)
        started = time.perf_counter()
        for n in range(count):
            spool.enqueue(_message(n), SENDER, f"r{n}@example.test")
    return count / (time.perf_counter() - started)


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU seconds used so far by these processes (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone (a server backend that ended)
        total += int(fields[11]) + int(fields[12])
    return total / tick


def _commits(url: str) -> int:
    """
    Transactions committed in the database so far (the server's statistics,
    complete once the daemons' connections have closed).
    """
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        time.sleep(1.5)  # let ended backends' statistics arrive
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def _server_pids(cluster: PostgresCluster | None) -> list[int]:
    """The PostgreSQL server's processes: the postmaster and its children."""
    if cluster is None:
        return []
    try:
        postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [postmaster]
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rpartition(")")[2].split()[1]) == postmaster:
                        pids.append(int(name))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def _daemon(
    backend: str, where: str, sink: Sink, log: Path, fsync: bool
) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    queue = ["--queue", where] if backend == "postgres" else ["--spool", where]
    if not fsync and backend == "spool":
        queue.append("--no-fsync")
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twisted",
                "txsmtp",
                *queue,
                "--relay",
                f"127.0.0.1:{sink.port}",
                "--tls",
                "never",
                "--concurrency",
                str(CONCURRENCY),
                "--poll-interval",
                "1s",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def drain(
    backend: str,
    workers: int,
    count: int,
    sink_path: str,
    cluster: PostgresCluster | None,
    fsync: bool,
    folder: Path,
) -> dict[str, Any]:
    """
    One run: fill a fresh queue, start the workers, time the drain.

    :returns: the run's numbers (``rate`` in messages per second).
    """
    if backend == "postgres":
        assert cluster is not None
        where = cluster.migrated_database()
    else:
        where = str(folder / f"spool-{workers}")
    many_rate = _fill(backend, where, count, fsync)
    scratch = (
        cluster.migrated_database()
        if cluster is not None and backend == "postgres"
        else str(folder / f"scratch-{workers}")
    )
    one_rate = _enqueue_one_by_one(backend, scratch, 200, fsync)
    commits = _commits(where) if backend == "postgres" else 0
    with Sink(sink_path) as sink:
        daemons = [
            _daemon(backend, where, sink, folder / f"{backend}-{workers}-{n}.log", fsync)
            for n in range(workers)
        ]
        try:
            deadline = time.monotonic() + 600
            while sink.messages() == 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{backend}: nothing arrived; logs in {folder}")
                time.sleep(0.01)
            first_count, first = sink.messages(), time.monotonic()
            pids = [d.pid for d in daemons]
            server = _server_pids(cluster) if backend == "postgres" else []
            cpu_first = _cpu_seconds(pids), _cpu_seconds(server)
            while (seen := sink.messages()) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{backend}: {seen} of {count} arrived; logs in {folder}")
                time.sleep(0.01)
            last = time.monotonic()
            if backend == "postgres":
                server = sorted({*server, *_server_pids(cluster)})
            cpu_last = _cpu_seconds(pids), _cpu_seconds(server)
        finally:
            for daemon in daemons:
                daemon.send_signal(signal.SIGTERM)
            for daemon in daemons:
                daemon.wait(60)
    if backend == "postgres":
        commits = _commits(where) - commits
    elapsed = max(last - first, 1e-6)
    drained = max(count - first_count, 1)
    return {
        "backend": backend,
        "workers": workers,
        "messages": count,
        "seconds": round(elapsed, 3),
        "rate": round(drained / elapsed, 1),
        "daemon_cpu_ms": round((cpu_last[0] - cpu_first[0]) * 1000 / drained, 2),
        "server_cpu_ms": round((cpu_last[1] - cpu_first[1]) * 1000 / drained, 2),
        "enqueue_many_rate": round(many_rate, 1),
        "enqueue_rate": round(one_rate, 1),
        "commits_per_message": round(commits / count, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenario and print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--backends", default="spool,postgres")
    parser.add_argument("--smoke", action="store_true", help="100 messages, 1 and 2 workers")
    parser.add_argument("--no-fsync", action="store_true", help="no fsync in either queue")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    count = 100 if args.smoke else args.messages
    workers = [1, 2] if args.smoke else [int(w) for w in args.workers.split(",")]
    backends = args.backends.split(",")
    sink_path = ensure_smtp_sink()
    folder = Path(tempfile.mkdtemp(prefix="txsmtp-pg-drain-"))
    cluster = (
        PostgresCluster(durable=not args.no_fsync).start() if "postgres" in backends else None
    )
    results = []
    try:
        for backend in backends:
            for w in workers:
                results.append(
                    drain(backend, w, count, sink_path, cluster, not args.no_fsync, folder)
                )
                if not args.json:
                    r = results[-1]
                    print(
                        f"{r['backend']:9} {r['workers']} worker(s): {r['messages']} messages "
                        f"in {r['seconds']:.2f}s = {r['rate']:.0f} msg/s, CPU per message "
                        f"{r['daemon_cpu_ms']:.2f} ms daemons + {r['server_cpu_ms']:.2f} ms "
                        f"server; enqueue_many {r['enqueue_many_rate']:.0f} msg/s, "
                        f"enqueue {r['enqueue_rate']:.0f} msg/s; "
                        f"{r['commits_per_message']:.2f} commits per message",
                        flush=True,
                    )
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
