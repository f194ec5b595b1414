"""
The sans-IO modules must not import Twisted: checked in a fresh interpreter,
where nothing else has imported it first.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Always present.
CORE = [
    "txsmtpclient.errors",
    "txsmtpclient.reply",
    "txsmtpclient.commands",
    "txsmtpclient.extensions",
    "txsmtpclient.transaction",
    "txsmtpclient._sendargs",
    "txsmtpclient.mailparams",
    "txsmtpclient.session",
    "txsmtpclient.states",
]
#: Checked when they exist (later issues add them).
LATER = [
    "txsmtpclient.auth",
    "txsmtpclient._sasl",
    "txsmtpclient.message",
    "txsmtpclient.spool.envelope",
    "txsmtpclient.spool.schedule",
    "txsmtpclient.spool.codec",
    "txsmtpclient.spool.queue",
    "txsmtpclient.spool.notice",
    "txsmtpclient.dkim",
    "txsmtpclient.spool._tracing",
]

# The package imports its public names lazily (PEP 562), so a plain import
# of a sans-IO module runs the real package __init__ and must stay clear of
# Twisted too.
_PROBE = """
import importlib, importlib.util, json, sys

core, later = json.loads(sys.argv[1])
imported = []
for name in core + later:
    if name in later and importlib.util.find_spec(name) is None:
        continue
    importlib.import_module(name)
    imported.append(name)
print(json.dumps({
    "imported": imported,
    "twisted": sorted(m for m in sys.modules if m == "twisted" or m.startswith("twisted.")),
}))
"""


def _probe(modules: list[str], later: list[str]) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps([modules, later])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    probe: dict[str, list[str]] = json.loads(result.stdout)
    return probe


def test_sans_io_modules_do_not_import_twisted() -> None:
    """Importing every sans-IO module together leaves Twisted unimported."""
    probe = _probe(CORE, LATER)
    assert set(CORE) <= set(probe["imported"])
    assert probe["twisted"] == []


@pytest.mark.parametrize("module", CORE + LATER)
def test_each_module_alone(module: str) -> None:
    """Each sans-IO module, imported on its own, leaves Twisted unimported."""
    probe = _probe([], [module])
    if module not in probe["imported"]:
        pytest.skip(f"{module} does not exist yet")
    assert probe["twisted"] == []


def test_probe_can_fail() -> None:
    """The probe does notice Twisted: importing the protocol module drags it in."""
    probe = _probe(["txsmtpclient.protocol"], [])
    assert "twisted" in probe["twisted"]
