"""
Tests for :mod:`txsmtpclient.demo`: the README's main job, run as a user would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_demo_delivers_the_scheduled_message() -> None:
    """``python -m txsmtpclient.demo`` exits 0 after printing the arrived message."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "txsmtpclient.demo", "--in", "1s", "--timeout", "20"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Enqueued " in out and "due at" in out
    assert "sink: message arrived from <demo@localhost> to <you@localhost>" in out
    assert "Subject: Hello from the txsmtp spool" in out
    assert "-> delivered" in out
    assert "relay queue id SINK1" in out
    # The message arrives after it fell due, not before.
    assert out.index("Daemon started") < out.index("sink: message arrived")


def test_demo_rejects_a_bad_delay() -> None:
    """A malformed --in is one line naming it and the usage code (64), as the other commands."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "txsmtpclient.demo", "--in", "soon"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 64
    assert result.stderr.splitlines() == [
        "python -m txsmtpclient demo: error: --in: expected a duration such as "
        "'90s', '10m', '2h', '1d' or 'PT10M', got 'soon' (see --help)"
    ]
