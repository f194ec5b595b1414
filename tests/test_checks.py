"""
The checks the client and the spool share (issue 8, item 4): one check each
for control characters, ESMTP parameters and DSN requests, importable
without Twisted or smtplib, and the spool refusing exactly what the client
refuses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from txsmtpclient import _checks
from txsmtpclient.errors import SMTPArgumentError
from txsmtpclient.spool.envelope import Dsn, EnvelopeError, check_address, check_options
from txsmtpclient.transaction import DSN, Envelope

# The package's __init__ loads the errors (and smtplib with them); the probe
# loads the checks module under an empty package, to see what it needs itself.
_PROBE = """
import importlib, json, sys, types
package = types.ModuleType("txsmtpclient")
package.__path__ = [sys.argv[1]]
sys.modules["txsmtpclient"] = package
importlib.import_module("txsmtpclient._checks")
print(json.dumps(sorted(
    m for m in sys.modules
    if m in ("smtplib", "ssl", "twisted") or m.startswith("twisted.")
)))
"""


def test_checks_import_neither_twisted_nor_smtplib() -> None:
    """The shared checks load without Twisted, smtplib or ssl."""
    package = Path(_checks.__file__).parent
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(package)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_client_error_is_the_shared_error() -> None:
    """SMTPArgumentError is the shared ArgumentError, and still a ValueError."""
    assert issubclass(SMTPArgumentError, _checks.ArgumentError)
    assert issubclass(SMTPArgumentError, ValueError)


#: DSN requests the client refuses: (ret, envid, notify).
BAD_DSN: list[tuple[Any, Any, Any]] = [
    ("ALL", None, ()),
    ("FULL\r\nRSET", None, ()),
    (None, "x" * 101, ()),
    (None, "caf\u00e9", ()),
    (None, "a\r\nb", ()),
    (None, None, ("NEVER", "SUCCESS")),
    (None, None, ("SOMETIMES",)),
    (None, None, ("SUCCESS\n",)),
]


@pytest.mark.parametrize(("ret", "envid", "notify"), BAD_DSN)
def test_spool_refuses_the_dsn_the_client_refuses(ret: Any, envid: Any, notify: Any) -> None:
    """
    Each DSN request the client refuses, the spool refuses too (before, an
    ENVID of 101 or non-ASCII characters was queued, then set aside at
    delivery).
    """
    with pytest.raises(SMTPArgumentError):
        DSN(ret, envid, notify)
    with pytest.raises(EnvelopeError):
        Dsn(ret, envid, notify)


def test_spool_and_client_normalise_dsn_alike() -> None:
    """Both forms upper-case RET and NOTIFY, the same way."""
    client = DSN("hdrs", "id", ("success", " failure"))
    spool = Dsn("hdrs", "id", ("success", " failure"))
    assert (client.ret, client.envid, client.notify) == ("HDRS", "id", ("SUCCESS", "FAILURE"))
    assert (spool.ret, spool.envid, spool.notify) == (client.ret, client.envid, client.notify)


@pytest.mark.parametrize(
    "options",
    [("BODY=8BIT MIME",), ("",), ("X\r\nRSET",), ("X\x00",), ("X\x7f",), "SMTPUTF8", (1,)],
)
def test_spool_refuses_the_options_the_client_refuses(options: Any) -> None:
    """ESMTP parameters are checked by the one check in both places."""
    with pytest.raises((SMTPArgumentError, TypeError)):
        Envelope.check("a@x", ["b@y"], options)
    with pytest.raises(EnvelopeError):
        check_options(options)


@pytest.mark.parametrize("address", ["a@b\r\nRSET", "a\x00@b", "a\x7f@b", 5])
def test_spool_refuses_the_addresses_the_client_refuses(address: Any) -> None:
    """Control characters (and non-strings) in an address: refused in both."""
    with pytest.raises((SMTPArgumentError, TypeError)):
        Envelope.check("a@x", [address])
    with pytest.raises(EnvelopeError):
        check_address(address)


def test_good_values_pass_both() -> None:
    """What the client takes, the spool takes unchanged."""
    assert check_options(("SMTPUTF8", "BODY=8BITMIME")) == ("SMTPUTF8", "BODY=8BITMIME")
    assert check_address("a@example.com") == "a@example.com"
    assert Envelope.check("a@x", "b@y", ["SMTPUTF8"]).mail_options == ("SMTPUTF8",)
