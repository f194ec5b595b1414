"""
The crash test: ``twist txsmtp`` as a subprocess sending a few hundred queued
messages to an aiosmtpd server in this process, SIGKILLed at random moments
(seeded) and restarted, must deliver every message at least once and leave no
active (queued or in-flight) entry behind.

No sleeps: each kill waits (with a bound) for the server to have received a
random number of further messages, and the end waits (with a bound) for every
Message-ID and for the spool to drain.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import wait_for as _wait_for
from servers import AiosmtpdServer

from txsmtpclient.spool.store import Spool
from txsmtpclient.tap import IN_FLIGHT_PER_CONNECTION

REPO = Path(__file__).resolve().parent.parent
MESSAGES = 300
KILLS = 4
SEED = 20240607
SENDER = "crash@example.test"
_MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def _received_ids(server: AiosmtpdServer) -> Counter[str]:
    ids: Counter[str] = Counter()
    for message in server.messages:
        match = _MESSAGE_ID.search(message.content)
        if match:
            ids[match.group(1).decode()] += 1
    return ids


def _start_daemon(server: AiosmtpdServer, spool: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    with open(log, "ab") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "twisted",
                "txsmtp",
                "--relay",
                server.address,
                "--spool",
                str(spool),
                "--tls",
                "never",
                "--concurrency",
                "8",
                "--poll-interval",
                "0.1",
                "--retry-schedule",
                "0.2s,1s",
                "--grace",
                "10",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_loses_nothing(smtp_server: AiosmtpdServer, tmp_path: Path) -> None:
    """Every message arrives at least once across SIGKILLs; nothing stays active."""
    rng = random.Random(SEED)
    folder = tmp_path / "spool"
    log = tmp_path / "daemon.log"
    spool = Spool(folder)
    expected = set()
    for n in range(MESSAGES):
        message_id = f"crash-{n}-{rng.getrandbits(32):08x}@example.test"
        expected.add(message_id)
        spool.enqueue(
            (
                f"From: {SENDER}\r\nTo: r{n}@example.test\r\nSubject: crash {n}\r\n"
                f"Message-ID: <{message_id}>\r\n\r\nMessage {n}\r\n"
            ).encode(),
            SENDER,
            [f"r{n}@example.test"],
        )
    kills = 0
    for _ in range(KILLS):
        daemon = _start_daemon(smtp_server, folder, log)
        try:
            target = len(smtp_server.messages) + rng.randint(10, 50)
            if target >= MESSAGES:
                break
            _wait_for(
                lambda target=target: len(smtp_server.messages) >= target,  # type: ignore[misc]
                30,
                f"{target} messages before a kill",
            )
        finally:
            daemon.send_signal(signal.SIGKILL)
            daemon.wait(10)
        kills += 1
    assert kills >= 2, "the daemon must have been killed mid-run"

    daemon = _start_daemon(smtp_server, folder, log)
    try:
        _wait_for(lambda: set(_received_ids(smtp_server)) >= expected, 45, "every message")
        _wait_for(
            lambda: spool.counts()["queue"] == 0 and spool.counts()["sending"] == 0,
            15,
            "the spool to drain",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        exit_code = daemon.wait(20)
    received = _received_ids(smtp_server)
    missing = expected - set(received)
    assert not missing, f"{len(missing)} messages never arrived; log: {log.read_text()[-2000:]}"
    counts = spool.counts()
    assert counts["queue"] == 0 and counts["sending"] == 0
    assert counts["done"] == MESSAGES
    assert counts["failed"] == 0 and counts["corrupt"] == 0
    # Duplicates are possible only for sends cut off between the final dot
    # and the durable record of its reply: at most the messages in flight
    # per kill (8 connections, each carrying messages pipelined).
    duplicates = sum(c - 1 for c in received.values())
    assert duplicates <= kills * 8 * IN_FLIGHT_PER_CONNECTION
    # twist re-raises SIGTERM on itself after a clean shutdown.
    assert exit_code in (0, -signal.SIGTERM), log.read_text()[-2000:]
    assert "Spool service stopped" in log.read_text()
