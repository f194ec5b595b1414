"""
The daemon scenario (issue 9): N queued 1 KB messages drain to ``smtp-sink`` from
txsmtpclient's spool through ``twist txsmtp``, and the same N through a private
Postfix relaying to the same sink, side by side in one run.

Each side has two phases, measured apart:

enqueue
    txsmtpclient: ``Spool.enqueue`` called N times in a fresh process (each call
    durable before it returns), timed and CPU-measured in that process; also
    ``enqueue_many`` in batches where the spool has it.  Postfix: N messages over one
    SMTP connection (``bench/reference.py``'s pipelining client) into an instance
    started without its queue manager, so they wait in the ``incoming`` queue; CPU is
    that of all Postfix's processes.
drain
    The daemon is started on the full queue (``twist txsmtp``; Postfix with its queue
    manager), and the clock runs from its start until the sink has counted all N.
    CPU: the ``twist`` process's own (``wait4``), or Postfix's process tree.

Run it with ``bench/run.py --scenario daemon``; ``python bench/daemon.py enqueue``
is the enqueuing child process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reference import RawClient
from services import PrivatePostfix, TxsmtpDaemon, postfix_unavailable
from sink import Sink
from workload import SENDER, cpu_seconds, emit, recipients, small_message

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: Messages per run; the smoke run's.
FULL_MESSAGES = 10_000
SMOKE_MESSAGES = 50
#: Postfix's default_destination_concurrency_limit, so both sides may open as many
#: connections to the sink.
CONCURRENCY = 20
#: ``enqueue_many`` batch size, where the spool has it.
BATCH = 100

SIDES = ("txsmtpclient", "postfix")
#: Each measured number: (JSON field, label, unit, higher is better).
METRICS = (
    ("enqueue_msgs_per_s", "enqueue", "msgs/s", True),
    ("enqueue_cpu_ms_per_msg", "enqueue CPU", "ms/msg", False),
    ("drain_msgs_per_s", "drain", "msgs/s", True),
    ("drain_cpu_ms_per_msg", "drain CPU", "ms/msg", False),
    ("first_delivery_s", "first message at the sink", "s", False),
)


def child_env() -> dict[str, str]:
    """
    :returns: the environment for a measured child: this checkout importable, and
        byte code cached as an installed package's would be.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def enqueue_child(spool: str, count: int, batch: int) -> None:
    """
    In this fresh process: queue ``count`` messages in ``spool`` (one ``enqueue`` per
    message, or ``enqueue_many`` in batches of ``batch`` when ``batch`` > 0) and print
    one JSON line with the wall-clock and CPU seconds.
    """
    sys.path.insert(1, str(ROOT))
    from txsmtpclient.spool import Spool

    message = small_message()
    rcpts = recipients(1)
    store = Spool(spool)
    cpu, start = cpu_seconds(), time.perf_counter()
    if batch:
        from txsmtpclient.spool.queue import Submission  # type: ignore[attr-defined]

        for first in range(0, count, batch):
            store.enqueue_many(  # type: ignore[attr-defined]
                [
                    Submission(message=message, sender=SENDER, recipients=rcpts)
                    for _ in range(min(batch, count - first))
                ]
            )
    else:
        for _ in range(count):
            store.enqueue(message, SENDER, rcpts)
    emit({"seconds": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu})


def enqueue(python: str, spool: Path, count: int, batch: int = 0) -> dict[str, Any]:
    """
    Run :func:`enqueue_child` in a fresh process.

    :returns: its measurement.
    :raises RuntimeError: if it failed.
    """
    command = [python, str(BENCH / "daemon.py"), "enqueue", str(spool), str(count), str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, env=child_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"enqueue failed: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def has_enqueue_many(python: str) -> bool:
    """
    :returns: whether this checkout's spool has the batch ``enqueue_many``.
    """
    probe = "from txsmtpclient.spool import Spool; print(hasattr(Spool, 'enqueue_many'))"
    done = subprocess.run(
        [python, "-c", probe], capture_output=True, text=True, env=child_env(), check=False
    )
    return done.stdout.strip() == "True"


def wait_for(sink: Sink, count: int, timeout: float, alive: Any = None) -> float | None:
    """
    Poll the sink's counter (every 5 ms, with a bound) until it reaches ``count``.

    :param alive: a callable; the wait ends early when it returns ``False``.
    :returns: the ``time.perf_counter()`` at which it was seen there, or ``None`` if
        it was not within ``timeout`` seconds.
    """
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if sink.messages() >= count:
            return time.perf_counter()
        if alive is not None and not alive():
            return None
        time.sleep(0.005)
    return None


def run_txsmtpclient(python: str, sink: Sink, base: Path, count: int) -> dict[str, Any]:
    """
    :returns: txsmtpclient's side: enqueue and drain rates and CPU.
    :raises RuntimeError: if a phase failed or not every message arrived.
    """
    spool = base / "spool"
    queued = enqueue(python, spool, count)
    result: dict[str, Any] = {
        "enqueue_msgs_per_s": count / queued["seconds"],
        "enqueue_cpu_ms_per_msg": queued["cpu_s"] * 1000 / count,
    }
    if has_enqueue_many(python):
        # An extra row, not the comparison: its API may still be settling.
        try:
            batched = enqueue(python, base / "spool-batched", count, BATCH)
        except RuntimeError as e:
            print(f"(daemon) enqueue_many not measured: {e}", file=sys.stderr)
        else:
            result["enqueue_many_msgs_per_s"] = count / batched["seconds"]
            result["enqueue_many_cpu_ms_per_msg"] = batched["cpu_s"] * 1000 / count
    before = sink.messages()
    daemon = TxsmtpDaemon(python, spool, sink.port, base / "txsmtp.log", concurrency=CONCURRENCY)
    start = time.perf_counter()
    daemon.start()
    try:
        first = wait_for(sink, before + 1, 120, daemon.running)
        last = wait_for(sink, before + count, 120 + count / 20, daemon.running)
    finally:
        cpu = daemon.stop()
    if first is None or last is None:
        raise RuntimeError(
            f"the daemon delivered {sink.messages() - before} of {count} messages "
            f"(log: {daemon.log})"
        )
    result.update(
        drain_msgs_per_s=count / (last - start),
        drain_cpu_ms_per_msg=cpu * 1000 / count,
        first_delivery_s=first - start,
        drain_s=last - start,
        drain_cpu_s=cpu,
    )
    return result


def run_postfix(sink: Sink, base: Path, count: int) -> dict[str, Any]:
    """
    :returns: Postfix's side: SMTP acceptance and drain rates and CPU.
    :raises RuntimeError: if a phase failed or not every message arrived.
    """
    message = small_message()
    with PrivatePostfix(base / "postfix", sink.port) as postfix:
        postfix.start(queue_manager=False)
        cpu = postfix.cpu_seconds()
        start = time.perf_counter()
        RawClient(postfix.port).send(count, recipients(1), message)
        seconds = time.perf_counter() - start
        enqueue_cpu = postfix.cpu_seconds() - cpu
        postfix.stop()
        if postfix.queued() != count:
            raise RuntimeError(f"Postfix queued {postfix.queued()} of {count}")
        before = sink.messages()
        start = time.perf_counter()
        postfix.start()
        first = wait_for(sink, before + 1, 120)
        last = wait_for(sink, before + count, 120 + count / 20)
        drain_cpu = postfix.cpu_seconds()
        if first is None or last is None:
            raise RuntimeError(
                f"Postfix delivered {sink.messages() - before} of {count}{postfix.log_tail()}"
            )
    return {
        "enqueue_msgs_per_s": count / seconds,
        "enqueue_cpu_ms_per_msg": enqueue_cpu * 1000 / count,
        "drain_msgs_per_s": count / (last - start),
        "drain_cpu_ms_per_msg": drain_cpu * 1000 / count,
        "first_delivery_s": first - start,
        "drain_s": last - start,
        "drain_cpu_s": drain_cpu,
    }


def run(
    python: str, sink: Sink, *, smoke: bool, repeat: int, messages: int | None = None
) -> dict[str, Any]:
    """
    Run both sides ``repeat`` times, interleaved, and summarise.

    :param messages: how many to queue, instead of 10,000 (50 for ``smoke``).

    :returns: ``{"messages", "runs", "medians", "ratios", "targets", "skipped",
        "errors"}``; Postfix's side is skipped (with the reason) where it cannot run.
    """
    count = messages or (SMOKE_MESSAGES if smoke else FULL_MESSAGES)
    skipped = postfix_unavailable()
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    errors: list[str] = []
    for repetition in range(1, repeat + 1):
        for side in SIDES:
            if side == "postfix" and skipped:
                continue
            with tempfile.TemporaryDirectory(prefix="txsmtp-bench-", dir="/tmp") as tmp:
                # Postfix's unprivileged processes must reach their queue inside it.
                os.chmod(tmp, 0o755)
                try:
                    if side == "postfix":
                        result = run_postfix(sink, Path(tmp), count)
                    else:
                        result = run_txsmtpclient(python, sink, Path(tmp), count)
                except (RuntimeError, OSError) as e:
                    errors.append(f"{side}: {e}")
                    print(f"[{repetition}/{repeat}] (daemon) {side}: FAILED: {e}", file=sys.stderr)
                    continue
            runs[side].append(result)
            print(
                f"[{repetition}/{repeat}] (daemon) {side}: enqueue "
                f"{result['enqueue_msgs_per_s']:,.0f} msgs/s, drain "
                f"{result['drain_msgs_per_s']:,.0f} msgs/s",
                file=sys.stderr,
                flush=True,
            )
    medians = {
        side: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
        for side, rs in runs.items()
        if rs
    }
    return {
        "messages": count,
        "concurrency": CONCURRENCY,
        "runs": runs,
        "medians": medians,
        "ratios": ratios(medians),
        "targets": [] if smoke else judge(medians),
        "skipped": skipped,
        "errors": errors,
    }


def ratios(medians: dict[str, dict[str, float]]) -> dict[str, float]:
    """
    :returns: per metric, how many times better txsmtpclient did than Postfix (rate
        divided by rate, or cost inverted): above 1 txsmtpclient is ahead.
    """
    ours, theirs = medians.get("txsmtpclient"), medians.get("postfix")
    if not ours or not theirs:
        return {}
    found = {}
    for key, _label, _unit, higher in METRICS:
        if ours.get(key) and theirs.get(key):
            found[key] = ours[key] / theirs[key] if higher else theirs[key] / ours[key]
    return found


def judge(medians: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """
    :returns: issue 9's daemon targets, each with the measured ratio and whether it
        was met.
    """
    found = ratios(medians)
    wanted = (
        ("drain at least Postfix's", "drain_msgs_per_s"),
        ("drain CPU per message at most Postfix's", "drain_cpu_ms_per_msg"),
        ("enqueue at least Postfix's SMTP acceptance", "enqueue_msgs_per_s"),
    )
    judged = []
    for text, key in wanted:
        measured = found.get(key)
        judged.append(
            {
                "target": text,
                "measured": measured,
                "met": None if measured is None else measured >= 1,
            }
        )
    return judged


def render(result: dict[str, Any], table: Any, number: Any) -> str:
    """
    :param table: ``run.table``; :param number: ``run.number`` (shared formatting).
    :returns: the scenario's reStructuredText report.
    """
    title = f"Daemon: {result['messages']:,} queued 1 KB messages drained to smtp-sink"
    out = [title, "~" * len(title), ""]
    medians, found = result["medians"], result["ratios"]
    rows = []
    extra = [("enqueue_many_msgs_per_s", f"enqueue_many ({BATCH} a batch)", "msgs/s")]
    extra.append(("enqueue_many_cpu_ms_per_msg", f"enqueue_many CPU ({BATCH} a batch)", "ms/msg"))
    for key, label, unit, *_ in (*METRICS, *extra):
        ours = medians.get("txsmtpclient", {}).get(key)
        theirs = medians.get("postfix", {}).get(key)
        if ours is None and theirs is None:
            continue
        digits = 2 if unit != "msgs/s" else 0
        ratio = found.get(key)
        rows.append(
            [
                f"{label} ({unit})",
                number(ours, digits),
                number(theirs, digits),
                f"{ratio:.2f}" if ratio else "n/a",
            ]
        )
    out += [table(["", "txsmtpclient", "Postfix", "txsmtpclient ratio"], rows), ""]
    if result["skipped"]:
        out += [f"Postfix skipped: {result['skipped']}.", ""]
    out += [f"- {error}" for error in result["errors"]]
    if result["targets"]:
        rows = [
            [
                t["target"],
                "n/a" if t["measured"] is None else f"{t['measured']:.2f}x",
                {True: "yes", False: "NO", None: "n/a"}[t["met"]],
            ]
            for t in result["targets"]
        ]
        out += ["", table(["target (issue 9)", "measured", "met"], rows), ""]
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> None:
    """
    ``python bench/daemon.py enqueue SPOOL COUNT BATCH``: the enqueuing child.
    """
    parser = argparse.ArgumentParser(description="The daemon scenario's enqueuing child.")
    parser.add_argument("command", choices=["enqueue"])
    parser.add_argument("spool")
    parser.add_argument("count", type=int)
    parser.add_argument("batch", type=int)
    args = parser.parse_args(argv)
    enqueue_child(args.spool, args.count, args.batch)


if __name__ == "__main__":
    main()
