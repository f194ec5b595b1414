"""
The submission path stays light (issue 14): ``txsmtp-sendmail`` and ``python -m
txsmtpclient enqueue`` queue a message without importing Twisted, smtplib (through
the errors), croniter or anything else heavy that a submission does not use.

Each entry point runs in a fresh interpreter under ``-X importtime`` and really
queues a message; the test reads which modules were imported from that report.  It
checks module names, never timings.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

#: Modules a due-now submission must never load, and why they are heavy.
HEAVY = {
    "twisted": "the reactor and the client stack",
    "zope.interface": "Twisted's interfaces",
    "smtplib": "txsmtpclient.errors' base classes (and ssl, email.message)",
    "ssl": "OpenSSL bindings",
    "email.message": "smtplib's message model",
    "txsmtpclient.errors": "smtplib",
    "txsmtpclient.client": "Twisted",
    "txsmtpclient.protocol": "Twisted",
    "croniter": "only a cron schedule needs it",
    "dateutil": "croniter's dependency",
    "asyncio": "nothing in a submission is asynchronous",
    "importlib.metadata": "nothing reads package metadata",
    "subprocess": "nothing starts a process",
}

MESSAGE = b"Subject: light\r\n\r\nQueued without the heavy imports.\r\n"


def imported(stderr: str) -> set[str]:
    """
    :returns: every module name a ``-X importtime`` report lists.
    """
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and line.count("|") == 2:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":
                names.add(name)
    return names


def heavy_in(names: set[str]) -> list[str]:
    """
    :returns: the heavy modules (or their submodules) among ``names``.
    """
    return sorted(
        heavy for heavy in HEAVY if any(n == heavy or n.startswith(heavy + ".") for n in names)
    )


def run(args: Sequence[str], spool: Path) -> set[str]:
    """
    Run ``python -X importtime ARGS`` with the message on stdin, check it queued the
    message (exit 0, one file in the spool's ``queue/``), and return what it imported.
    """
    env = dict(os.environ, TXSMTP_SPOOL=str(spool))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        input=MESSAGE,
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, stderr[-2000:]
    assert len(list((spool / "queue").iterdir())) == 1
    names = imported(stderr)
    # The report is real: the spool's own modules are in it.
    assert "txsmtpclient.spool.store" in names
    return names


def sendmail_entry_point() -> str:
    """
    :returns: ``module:function`` of the installed ``txsmtp-sendmail`` console script.
    """
    (script,) = importlib.metadata.entry_points(group="console_scripts", name="txsmtp-sendmail")
    value: str = script.value
    return value


def test_sendmail_console_script_imports_nothing_heavy(tmp_path: Path) -> None:
    """
    ``txsmtp-sendmail`` (what its console script runs) queues a message without
    importing Twisted, smtplib, croniter or argparse.
    """
    module, function = sendmail_entry_point().split(":")
    script = f"import sys\nfrom {module} import {function}\nsys.exit({function}())\n"
    names = run(["-c", script, "-i", "rcpt@example.com"], tmp_path / "spool")
    assert heavy_in(names) == []
    # sendmail(1) has its own parser: the enqueue command's argparse is not needed.
    assert "argparse" not in names


def test_enqueue_command_imports_nothing_heavy(tmp_path: Path) -> None:
    """
    ``python -m txsmtpclient enqueue`` of a message due now imports nothing heavy.
    """
    names = run(
        ["-m", "txsmtpclient", "enqueue", "--from", "me@example.com", "--to", "you@example.com"],
        tmp_path / "spool",
    )
    assert heavy_in(names) == []


@pytest.mark.parametrize(
    ("schedule", "loaded"),
    [(["--cron", "*/5 * * * *"], True), (["--every", "10m"], False)],
)
def test_enqueue_imports_croniter_only_for_a_cron_schedule(
    tmp_path: Path, schedule: list[str], loaded: bool
) -> None:
    """
    croniter is imported, lazily, only when a cron schedule is given; an interval
    schedule does without it.
    """
    names = run(
        [
            "-m",
            "txsmtpclient",
            "enqueue",
            "--from",
            "me@example.com",
            "--to",
            "you@example.com",
            *schedule,
        ],
        tmp_path / "spool",
    )
    assert ("croniter" in names) is loaded
    # croniter brings dateutil (and subprocess); nothing else heavy comes either way.
    assert set(heavy_in(names)) - {"croniter", "dateutil", "subprocess"} == set()
