"""
Benchmark txsmtpclient against smtplib, aiosmtplib, twisted.mail.smtp and a raw-socket
pipelining reference, all sending to Postfix's ``smtp-sink`` on loopback.

Each repetition of each scenario for each client runs in a fresh process
(``bench/clients.py``); repetitions are interleaved so that a noisy moment on a shared
machine hurts every client alike.  The medians, client CPU per message, peak RSS and
the ratio of txsmtpclient to each peer are printed as reStructuredText tables and
written to ``bench/results/latest.json`` and ``bench/results/latest.rst``.

The daemon and latency scenarios (``bench/daemon.py``, ``bench/latency.py``) compare
the ``twist txsmtp`` daemon with a private Postfix relaying to the same sink; their
reports go to ``daemon.*`` and ``latency.*`` in the same folder.

Usage::

    .venv/bin/python bench/run.py                      # everything, ~10 minutes on 2 cores
    .venv/bin/python bench/run.py --smoke              # every scenario tiny, once (CI)
    .venv/bin/python bench/run.py --scenarios a,d --clients txsmtpclient,smtplib --repeat 5
    .venv/bin/python bench/run.py --scenario daemon    # or latency
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sink import Sink, SinkError, ensure_smtp_sink, postfix_version
from workload import (
    CLIENT_SCENARIOS,
    CLIENTS,
    SCENARIOS,
    SUBJECT,
    Workload,
    workload_for,
)

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: The scenarios that compare the sending daemon with Postfix rather than clients.
DAEMON_SCENARIOS = ("daemon", "latency")
ALL_SCENARIOS = (*SCENARIOS, *DAEMON_SCENARIOS)

#: The JSON field that holds each metric's headline number.
METRIC_FIELD = {"msgs/s": "msgs_per_s", "MB/s": "mb_per_s", "s": "seconds"}
#: The last line of a traceback: ``package.module.SomeError: message``.
EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Refused|Failure)\b[^(]*(:|$)")
#: The per-run numbers whose medians are reported.
MEDIAN_FIELDS = (
    "msgs_per_s",
    "mb_per_s",
    "seconds",
    "cpu_s",
    "cpu_ms_per_msg",
    "rss_before_mib",
    "peak_rss_mib",
    "rss_growth_mib",
)


@dataclass(frozen=True, slots=True)
class Target:
    """
    One of issues 5's and 9's targets, judged on the medians of one run.

    :ivar kind: ``ratio``: the subject's ratio to ``peer`` is at least ``bound``
        (throughput divided, or time inverted); ``cpu``: the subject's CPU time is at
        most ``bound`` times ``peer``'s; ``rss``: its RSS growth is at most ``bound`` MiB.
    :ivar subject: the txsmtpclient variant judged (``txsmtpclient-queued``: sends
        queued without awaiting, pipelined across transactions).
    :ivar issue: the issue that set it.
    """

    scenario: str
    kind: str
    peer: str
    bound: float
    subject: str = SUBJECT
    issue: int = 5

    def describe(self) -> str:
        """
        :returns: the target in words.
        """
        who = "" if self.subject == SUBJECT else f"{self.subject}: "
        if self.kind == "ratio":
            return f"#{self.issue} ({self.scenario}) {who}at least {self.bound:g}x {self.peer}"
        if self.kind == "cpu":
            return f"#{self.issue} ({self.scenario}) {who}client CPU at most {self.peer}'s"
        return (
            f"#{self.issue} ({self.scenario}) {who}peak RSS at most {self.bound:g} MiB "
            "above before sending"
        )


TARGETS = (
    Target("a", "ratio", "smtplib", 1.5),
    Target("a", "ratio", "aiosmtplib", 3.0),
    Target("b", "ratio", "smtplib", 1.0),
    Target("c", "ratio", "twisted.mail", 1.5),
    Target("c", "ratio", "aiosmtplib", 2.0),
    Target("d", "ratio", "raw", 0.9),
    Target("d", "cpu", "twisted.mail", 1.0),
    Target("d", "rss", "", 20.0),
    Target("e", "ratio", "smtplib", 10.0),
    # Issue 9 (its (a) awaited, (d) and the RSS bound repeat issue 5's).
    Target("a", "ratio", "raw", 0.8, subject="txsmtpclient-queued", issue=9),
    Target("b", "cpu", "smtplib", 1.0, issue=9),
    Target("c", "ratio", "smtplib", 1.5, issue=9),
    Target("e", "ratio", "raw", 1 / 1.5, issue=9),
)


def run_client(
    python: str, client: str, scenario: str, sink: Sink, *, smoke: bool, timeout: float
) -> dict[str, Any]:
    """
    Run one client process and check, from the sink's own counter, that every message
    it claims to have sent arrived.

    :returns: ``{"ok": True, "result": {...}}`` or ``{"ok": False, "error": "..."}``.
    """
    workload = workload_for(scenario, client, smoke=smoke)
    command = [python, str(BENCH / "clients.py"), client, scenario, "--port", str(sink.port)]
    if smoke:
        command.append("--smoke")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    before = sink.messages()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no result within {timeout:g} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"ok": False, "error": failure(done.stderr, done.returncode)}
    result: dict[str, Any] = json.loads(lines[-1])
    arrived = sink.wait_for_messages(before + workload.messages) - before
    if arrived != workload.messages:
        return {
            "ok": False,
            "error": f"the sink counted {arrived} messages, not {workload.messages}",
            "result": result,
        }
    return {"ok": True, "result": result}


def failure(stderr: str, status: int) -> str:
    """
    :returns: the line of a failed client's stderr that names its exception (the last
        line of the last traceback), or its last line, or its exit status.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if EXCEPTION_LINE.match(line):
            return line
    return lines[-1] if lines else f"exit status {status}"


def headline(result: dict[str, Any], workload: Workload) -> float:
    """
    :returns: the number a scenario is judged by, in the workload's metric.
    """
    value: float = result[METRIC_FIELD[workload.metric]]
    return value


def summarise(
    runs: list[dict[str, Any]], scenarios: Sequence[str], clients: Sequence[str], smoke: bool
) -> dict[str, Any]:
    """
    :returns: per scenario, each client's medians and spread, and txsmtpclient's ratio
        to each peer (above 1 means txsmtpclient did better, whatever the metric).
    """
    summary: dict[str, Any] = {}
    for scenario in scenarios:
        workload = workload_for(scenario, SUBJECT, smoke=smoke)
        rows: dict[str, Any] = {}
        for client in clients:
            if scenario not in CLIENT_SCENARIOS[client]:
                continue
            mine = [r for r in runs if r["client"] == client and r["scenario"] == scenario]
            good = [r["result"] for r in mine if r["ok"]]
            row: dict[str, Any] = {
                "runs": len(mine),
                "ok": len(good),
                "errors": [r["error"] for r in mine if not r["ok"]],
                "messages": workload_for(scenario, client, smoke=smoke).messages,
            }
            if good:
                values = [headline(g, workload) for g in good]
                row["median"] = statistics.median(values)
                row["min"], row["max"] = min(values), max(values)
                for field in MEDIAN_FIELDS:
                    row[field] = statistics.median(g[field] for g in good)
            rows[client] = row
        ratios: dict[str, float] = {}
        subject = rows.get(SUBJECT, {}).get("median")
        for client, row in rows.items():
            measured = ratio(subject, row.get("median"), workload.metric)
            if client != SUBJECT and measured is not None:
                ratios[client] = measured
        summary[scenario] = {
            "title": workload.title,
            "metric": workload.metric,
            "clients": rows,
            "ratios": ratios,
        }
    return summary


def ratio(subject: float | None, peer: float | None, metric: str) -> float | None:
    """
    :returns: how many times better ``subject`` did than ``peer`` (throughput divided,
        or, for a time in seconds, inverted); ``None`` without both.
    """
    if not subject or not peer:
        return None
    return peer / subject if metric == "s" else subject / peer


def judge(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """
    :returns: each of issues 5's and 9's targets whose scenario ran, with the measured value and
        whether it was met (``None`` when a client it needs has no result).
    """
    judged = []
    for target in TARGETS:
        if target.scenario not in summary:
            continue
        scenario = summary[target.scenario]
        subject = scenario["clients"].get(target.subject, {})
        peer = scenario["clients"].get(target.peer, {})
        measured: float | None = None
        if target.kind == "ratio":
            measured = ratio(subject.get("median"), peer.get("median"), scenario["metric"])
            met = None if measured is None else measured >= target.bound
        elif target.kind == "cpu":
            if subject.get("cpu_s") is not None and peer.get("cpu_s"):
                measured = subject["cpu_s"] / peer["cpu_s"]
            met = None if measured is None else measured <= target.bound
        else:
            measured = subject.get("rss_growth_mib")
            met = None if measured is None else measured <= target.bound
        judged.append(
            {
                "target": target.describe(),
                "scenario": target.scenario,
                "kind": target.kind,
                "peer": target.peer,
                "bound": target.bound,
                "measured": measured,
                "met": met,
            }
        )
    return judged


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """
    :returns: a reStructuredText simple table; the first column left-aligned text.
    """
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    rule = "  ".join("=" * width for width in widths)

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
        ).rstrip()

    return "\n".join([rule, line(header), rule, *(line(row) for row in rows), rule])


def number(value: float | None, digits: int = 0) -> str:
    """
    :returns: ``value`` with thousands separators, or ``n/a``.
    """
    if value is None:
        return "n/a"
    if digits == 0 and abs(value) < 10:
        digits = 2 if abs(value) < 1 else 1
    return f"{value:,.{digits}f}"


def render(meta: dict[str, Any], summary: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    """
    :returns: the whole report as reStructuredText.
    """
    out = [
        f"Run of {meta['date']}: {meta['cpus']} CPUs, load {meta['load_before']}, "
        f"Python {meta['python']}, Twisted {meta['versions'].get('twisted')}, "
        f"aiosmtplib {meta['versions'].get('aiosmtplib')}, postfix {meta['postfix']}; "
        f"median of {meta['repeat']} fresh processes{' (smoke run)' if meta['smoke'] else ''}.",
        "",
        "The ratio column is how many times better txsmtpclient did than that client "
        "(throughput divided, or time inverted): above 1 txsmtpclient is ahead.",
        "",
    ]
    for scenario, data in summary.items():
        out += [f"({scenario}) {data['title']}", "~" * (len(data["title"]) + 4), ""]
        metric = data["metric"]
        header = [
            "client",
            metric,
            "min-max",
            "CPU ms/msg",
            "peak RSS MiB",
            "RSS growth MiB",
            "txsmtpclient ratio",
        ]
        rows = []
        notes = []
        digits = 3 if metric == "s" else 0
        for client, row in data["clients"].items():
            if "median" not in row:
                rows.append([client, "error", "", "", "", "", ""])
                notes.append(f"{client}: {row['errors'][0] if row['errors'] else 'no runs'}")
                continue
            ratio = data["ratios"].get(client)
            label = client
            if row["messages"] != workload_for(scenario, SUBJECT, smoke=meta["smoke"]).messages:
                label = f"{client} ({row['messages']:,} msgs)"
            rows.append(
                [
                    label,
                    number(row["median"], digits),
                    f"{number(row['min'], digits)}-{number(row['max'], digits)}",
                    number(row["cpu_ms_per_msg"], 3 if row["cpu_ms_per_msg"] < 1 else 0),
                    number(row["peak_rss_mib"]),
                    number(row["rss_growth_mib"]),
                    "1" if client == SUBJECT else (f"{ratio:.2f}" if ratio else "n/a"),
                ]
            )
            if row["errors"]:
                notes.append(f"{client}: {len(row['errors'])} failed run(s): {row['errors'][0]}")
        out += [table(header, rows), ""]
        out += [f"- {note}" for note in notes]
        if notes:
            out.append("")
    if targets:
        out += ["Targets (issues 5 and 9)", "~~~~~~~~~~~~~~~~~~~~~~~~", ""]
        rows = []
        for t in targets:
            measured = t["measured"]
            if measured is None:
                shown = "n/a"
            elif t["kind"] == "rss":
                shown = f"{measured:.1f} MiB"
            else:
                shown = f"{measured:.2f}x"
            met = {True: "yes", False: "NO", None: "n/a"}[t["met"]]
            rows.append([t["target"], shown, met])
        out += [table(["target", "measured", "met"], rows), ""]
    return "\n".join(out)


def versions() -> dict[str, str]:
    """
    :returns: the installed versions of the libraries compared.
    """
    found = {}
    for name in ("twisted", "aiosmtplib", "txsmtpclient"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def git_commit() -> str:
    """
    :returns: the checkout's commit, or ``"none"``.
    """
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "none"


def git_branch() -> str:
    """
    :returns: the checkout's branch, or ``"none"``.
    """
    done = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--abbrev-ref", "HEAD"],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() if done.returncode == 0 else "none"


def choices(text: str, allowed: Sequence[str], what: str) -> list[str]:
    """
    :returns: the comma-separated names in ``text``, in ``allowed``'s order.
    :raises argparse.ArgumentTypeError: naming any unknown one.
    """
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(allowed))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown)}; choose from {','.join(allowed)}"
        )
    return [name for name in allowed if name in wanted]


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """
    :returns: the parsed command line.
    :raises SystemExit: on a bad one.
    """
    parser = argparse.ArgumentParser(
        description="Benchmark txsmtpclient against its peers on Postfix's smtp-sink.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--scenarios",
        "--scenario",
        type=lambda text: choices(text, ALL_SCENARIOS, "scenario"),
        default=list(ALL_SCENARIOS),
        help="comma-separated scenarios to run: " + ",".join(ALL_SCENARIOS),
    )
    parser.add_argument(
        "--clients",
        type=lambda text: choices(text, CLIENTS, "client"),
        default=list(CLIENTS),
        help="comma-separated clients to run: " + ",".join(CLIENTS),
    )
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per median")
    parser.add_argument(
        "--messages",
        type=int,
        default=None,
        help="messages queued in the daemon scenario (default 10,000; smoke 50)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="every scenario tiny and once, to check the benchmark works (CI); no timing",
    )
    parser.add_argument(
        "--output-dir", type=Path, default=BENCH / "results", help="where latest.* go"
    )
    parser.add_argument(
        "--timeout", type=float, default=600, help="seconds one client process may take"
    )
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter that runs the clients"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.smoke:
        args.repeat = 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmark.

    :returns: the exit status: 0 when every run succeeded, 1 otherwise, 2 when the
        sink could not be had.
    """
    args = parse(argv)
    try:
        sink_path = ensure_smtp_sink()
    except SinkError as e:
        print(e, file=sys.stderr)
        return 2
    scenarios: list[str] = args.scenarios
    clients: list[str] = args.clients
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "load_before": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
        "postfix": postfix_version(),
        "commit": git_commit(),
        "branch": git_branch(),
        "repeat": args.repeat,
        "smoke": args.smoke,
        "scenarios": scenarios,
        "clients": clients,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    ok = True
    if any(scenario in SCENARIOS for scenario in scenarios):
        ok = run_clients(args, sink_path, dict(meta)) and ok
    for scenario in DAEMON_SCENARIOS:
        if scenario in scenarios:
            ok = run_daemon_scenario(scenario, args, sink_path, dict(meta)) and ok
    return 0 if ok else 1


def run_clients(args: argparse.Namespace, sink_path: str, meta: dict[str, Any]) -> bool:
    """
    Run the client scenarios (a to e) and write ``latest.*`` (or ``smoke.*``).

    :returns: whether every run succeeded.
    """
    scenarios = [scenario for scenario in args.scenarios if scenario in SCENARIOS]
    clients: list[str] = args.clients
    meta["scenarios"] = scenarios
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    with Sink(sink_path) as sink:
        meta["sink_command"] = " ".join(sink.command(sink.port))
        for repetition in range(1, args.repeat + 1):
            for scenario in scenarios:
                for client in clients:
                    if scenario not in CLIENT_SCENARIOS[client]:
                        continue
                    outcome = run_client(
                        args.python,
                        client,
                        scenario,
                        sink,
                        smoke=args.smoke,
                        timeout=args.timeout,
                    )
                    outcome.update(client=client, scenario=scenario, repetition=repetition)
                    runs.append(outcome)
                    workload = workload_for(scenario, client, smoke=args.smoke)
                    shown = (
                        f"{number(headline(outcome['result'], workload), 3)} {workload.metric}"
                        if outcome["ok"]
                        else f"FAILED: {outcome['error']}"
                    )
                    print(
                        f"[{repetition}/{args.repeat}] ({scenario}) {client}: {shown}",
                        file=sys.stderr,
                        flush=True,
                    )
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["load_after"] = " ".join(f"{load:.2f}" for load in os.getloadavg())
    summary = summarise(runs, scenarios, clients, args.smoke)
    # A smoke run's numbers mean nothing, so it judges no targets.
    targets = [] if args.smoke else judge(summary)
    report = render(meta, summary, targets)
    print(report)
    stem = "smoke" if args.smoke else "latest"
    (args.output_dir / f"{stem}.rst").write_text(report + "\n")
    document = {"meta": meta, "summary": summary, "targets": targets, "runs": runs}
    (args.output_dir / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output_dir / stem}.json and .rst", file=sys.stderr)
    return all(run["ok"] for run in runs)


def run_daemon_scenario(
    scenario: str, args: argparse.Namespace, sink_path: str, meta: dict[str, Any]
) -> bool:
    """
    Run the daemon or latency scenario against a fresh sink and write
    ``daemon.*``/``latency.*`` (``smoke-daemon.*``/``smoke-latency.*`` for a smoke run).

    :returns: whether both sides ran without error (a side skipped because Postfix
        cannot run here is not an error).
    """
    import daemon
    import latency

    meta["scenarios"] = [scenario]
    started = time.monotonic()
    everywhere = os.sched_getaffinity(0)
    with Sink(sink_path) as sink:
        meta["sink_command"] = " ".join(sink.command(sink.port))
        cpus = sorted(everywhere)
        if len(cpus) >= 2:
            # The sink on one CPU, everything measured (this driver's children: the
            # daemons, Postfix's master and so all its processes, the submitters) on
            # another, so neither side's sink competes with it for a core.
            os.sched_setaffinity(sink.pid, {cpus[0]})
            os.sched_setaffinity(0, {cpus[1]})
            meta["pinned"] = f"sink on CPU {cpus[0]}, daemons and submitters on CPU {cpus[1]}"
        try:
            if scenario == "daemon":
                result = daemon.run(
                    args.python, sink, smoke=args.smoke, repeat=args.repeat, messages=args.messages
                )
                body = daemon.render(result, table, number)
                repeat = f"median of {args.repeat} runs"
            else:
                stem = "smoke-latency" if args.smoke else "latency"
                log = args.output_dir / f"{stem}-txsmtp.log"
                result = latency.run(args.python, sink, smoke=args.smoke, keep_log=log)
                body = latency.render(result, table, number)
                repeat = "one run"
        finally:
            os.sched_setaffinity(0, everywhere)
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["load_after"] = " ".join(f"{load:.2f}" for load in os.getloadavg())
    smoke = " (smoke run: the numbers mean nothing)" if args.smoke else ""
    report = "\n".join(
        [
            f"Measured on {meta['date']}, branch {meta['branch']} ({meta['commit'][:10]}): "
            f"{meta['cpus']} CPUs, load {meta['load_before']} before and "
            f"{meta['load_after']} after, Python {meta['python']}, "
            f"Twisted {meta['versions'].get('twisted')}, postfix {meta['postfix']}; "
            f"{meta.get('pinned', 'not pinned')}; {repeat}{smoke}.",
            "",
            body,
        ]
    )
    print(report)
    stem = f"smoke-{scenario}" if args.smoke else scenario
    (args.output_dir / f"{stem}.rst").write_text(report + "\n")
    document = {"meta": meta, "result": result}
    (args.output_dir / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.output_dir / stem}.json and .rst", file=sys.stderr)
    return not result["errors"]


if __name__ == "__main__":
    sys.exit(main())
