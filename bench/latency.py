"""
The latency scenario (issue 14): what a program that hands one message at a time to
a sendmail(1) program feels, for ``txsmtp-sendmail`` with ``twist txsmtp`` running
on its spool, and for Postfix's ``sendmail`` with a private Postfix, both relaying to
the same ``smtp-sink``.

* Submission: 200 sequential submissions of a 1 KB message; the wall-clock time of
  each ``sendmail`` process, from start to exit (median and p95).
* Submit to sink: 30 single messages, each submitted once the previous one has
  arrived; the time from the start of the submission until the sink's counter shows
  it (polled every millisecond), median and p95.

Both daemons run with their default settings (txsmtpclient's ``--poll-interval``
is 1 s), and each is warmed up by one message delivered before measuring.  Run it
with ``bench/run.py --scenario latency``.
"""

from __future__ import annotations

import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon import child_env
from services import PrivatePostfix, TxsmtpDaemon, postfix_unavailable
from sink import Sink
from workload import SENDER, recipients, small_message

ROOT = Path(__file__).resolve().parent.parent
FULL = {"submissions": 200, "singles": 30}
SMOKE = {"submissions": 5, "singles": 3}
SIDES = ("txsmtpclient", "postfix")
#: Each reported number: (JSON field, label, the issue's bound as a ratio to Postfix).
METRICS = (
    ("submit_median_ms", "submission, median", 2.0),
    ("submit_p95_ms", "submission, p95", 3.0),
    ("deliver_median_ms", "submit until the sink has it, median", 2.0),
    ("deliver_p95_ms", "submit until the sink has it, p95", 3.0),
)


def p95(values: list[float]) -> float:
    """
    :returns: the 95th percentile, nearest rank.
    """
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def txsmtp_sendmail(python: str) -> list[str]:
    """
    :returns: the ``txsmtp-sendmail`` console script installed next to ``python``, or
        the same call through ``python -c`` when it is not installed.
    """
    script = Path(python).parent / "txsmtp-sendmail"
    if script.exists():
        return [str(script)]
    call = "import sys; from txsmtpclient.spool.sendmail import sendmail_main; "
    return [python, "-c", call + "sys.exit(sendmail_main())"]


def submit(command: list[str], message: bytes, env: dict[str, str]) -> float:
    """
    Run one submission.

    :returns: its wall-clock seconds.
    :raises RuntimeError: if it failed.
    """
    start = time.perf_counter()
    done = subprocess.run(command, input=message, capture_output=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {done.stderr.decode(errors='replace')[-500:]}")
    return seconds


def arrival(sink: Sink, count: int, timeout: float = 30.0) -> float:
    """
    Poll the sink's counter every millisecond, with a bound, until it reaches ``count``.

    :returns: the ``time.perf_counter()`` when it did.
    :raises RuntimeError: if it did not within ``timeout`` seconds.
    """
    deadline = time.perf_counter() + timeout
    while sink.messages() < count:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the sink has {sink.messages()} messages, not {count}")
        time.sleep(0.001)
    return time.perf_counter()


def measure(sink: Sink, command: list[str], env: dict[str, str], sizes: dict[str, int]) -> Any:
    """
    Warm up with one message, then time the sequential submissions and the single
    messages through one running daemon.

    :returns: the medians and p95s in milliseconds, and every sample.
    :raises RuntimeError: if a submission fails or a message does not arrive.
    """
    message = small_message()
    submit(command, message, env)
    arrival(sink, sink.messages() + 1)
    before = sink.messages()
    submissions = [submit(command, message, env) for _ in range(sizes["submissions"])]
    # Let the daemon finish the burst before timing single messages.
    arrival(sink, before + sizes["submissions"], 60 + sizes["submissions"])
    deliveries = []
    for _ in range(sizes["singles"]):
        count = sink.messages() + 1
        start = time.perf_counter()
        submit(command, message, env)
        deliveries.append(arrival(sink, count) - start)
    ms = 1000.0
    return {
        "submit_median_ms": statistics.median(submissions) * ms,
        "submit_p95_ms": p95(submissions) * ms,
        "deliver_median_ms": statistics.median(deliveries) * ms,
        "deliver_p95_ms": p95(deliveries) * ms,
        "submissions_ms": [s * ms for s in submissions],
        "deliveries_ms": [d * ms for d in deliveries],
    }


def run_txsmtpclient(
    python: str, sink: Sink, base: Path, sizes: dict[str, int], keep_log: Path | None
) -> Any:
    """
    :param keep_log: where to copy the daemon's log (JSON events), to look into an
        outlier afterwards.
    :returns: txsmtpclient's side, through ``twist txsmtp`` with its defaults.
    """
    spool = base / "spool"
    env = child_env()
    env["TXSMTP_SPOOL"] = str(spool)
    command = [*txsmtp_sendmail(python), "-i", "-f", SENDER, *recipients(1)]
    # Byte code cached as an installed package's is, so no run pays to compile.
    subprocess.run(
        [python, "-m", "compileall", "-q", str(ROOT / "txsmtpclient")], env=env, check=False
    )
    daemon = TxsmtpDaemon(python, spool, sink.port, base / "txsmtp.log", concurrency=10)
    daemon.start()
    try:
        return measure(sink, command, env, sizes)
    finally:
        daemon.stop()
        if keep_log is not None and daemon.log.exists():
            shutil.copyfile(daemon.log, keep_log)


def run_postfix(sink: Sink, base: Path, sizes: dict[str, int]) -> Any:
    """
    :returns: Postfix's side, through its ``sendmail`` (postdrop, pickup, cleanup,
        qmgr, smtp).
    """
    with PrivatePostfix(base / "postfix", sink.port) as postfix:
        postfix.start()
        command = [*postfix.sendmail_command(), "-f", SENDER, *recipients(1)]
        return measure(sink, command, child_env(), sizes)


def run(python: str, sink: Sink, *, smoke: bool, keep_log: Path | None = None) -> dict[str, Any]:
    """
    Run both sides once, one after the other.

    :param keep_log: where to copy ``twist txsmtp``'s log.

    :returns: ``{"sizes", "results", "ratios", "targets", "skipped", "errors"}``;
        Postfix's side is skipped (with the reason) where it cannot run.
    """
    sizes = SMOKE if smoke else FULL
    skipped = postfix_unavailable()
    results: dict[str, Any] = {}
    errors = []
    for side in SIDES:
        if side == "postfix" and skipped:
            continue
        with tempfile.TemporaryDirectory(prefix="txsmtp-bench-", dir="/tmp") as tmp:
            # Postfix's unprivileged processes must reach their queue inside it.
            os.chmod(tmp, 0o755)
            try:
                if side == "postfix":
                    results[side] = run_postfix(sink, Path(tmp), sizes)
                else:
                    results[side] = run_txsmtpclient(python, sink, Path(tmp), sizes, keep_log)
            except (RuntimeError, OSError) as e:
                errors.append(f"{side}: {e}")
                print(f"(latency) {side}: FAILED: {e}", file=sys.stderr)
                continue
        shown = ", ".join(f"{label} {results[side][key]:.0f} ms" for key, label, _ in METRICS)
        print(f"(latency) {side}: {shown}", file=sys.stderr, flush=True)
    found = {}
    if len(results) == len(SIDES):
        for key, _label, _bound in METRICS:
            found[key] = results["txsmtpclient"][key] / results["postfix"][key]
    targets = []
    if not smoke and found:
        for key, label, bound in METRICS:
            targets.append(
                {
                    "target": f"{label} at most {bound:g}x Postfix's",
                    "measured": found[key],
                    "met": found[key] <= bound,
                }
            )
    return {
        "sizes": sizes,
        "results": results,
        "ratios": found,
        "targets": targets,
        "skipped": skipped,
        "errors": errors,
    }


def render(result: dict[str, Any], table: Any, number: Any) -> str:
    """
    :param table: ``run.table``; :param number: ``run.number`` (shared formatting).
    :returns: the scenario's reStructuredText report.
    """
    sizes = result["sizes"]
    title = (
        f"Latency: {sizes['submissions']} sequential submissions, "
        f"{sizes['singles']} single messages"
    )
    out = [title, "~" * len(title), ""]
    rows = []
    for key, label, _bound in METRICS:
        ours = result["results"].get("txsmtpclient", {}).get(key)
        theirs = result["results"].get("postfix", {}).get(key)
        ratio = result["ratios"].get(key)
        rows.append(
            [
                f"{label} (ms)",
                number(ours, 1),
                number(theirs, 1),
                f"{ratio:.2f}" if ratio else "n/a",
            ]
        )
    out += [table(["", "txsmtpclient", "Postfix", "txsmtpclient / Postfix"], rows), ""]
    if result["skipped"]:
        out += [f"Postfix skipped: {result['skipped']}.", ""]
    out += [f"- {error}" for error in result["errors"]]
    if result["targets"]:
        rows = [
            [t["target"], f"{t['measured']:.2f}x", "yes" if t["met"] else "NO"]
            for t in result["targets"]
        ]
        out += ["", table(["target (issue 14)", "measured", "met"], rows), ""]
    return "\n".join(out)
