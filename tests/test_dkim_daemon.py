"""
DKIM in the daemon: ``--dkim-*`` options and ``--dkim-keys``, keys checked at
start-up (one-line usage errors, never a traceback), signing by From domain
at delivery time (so queued mail picks up a rotated key), and no key in any
log.  Messages are delivered by the real service to aiosmtpd and verified
with dkimpy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from dkimtools import ed25519_pem, rsa_pem, verify_all
from servers import AiosmtpdServer
from twisted.internet.task import deferLater
from twisted.logger import capturedLogs
from twisted.python import usage

from txsmtpclient import tap
from txsmtpclient._dkimtap import from_domains
from txsmtpclient.dkim import DKIMSigner
from txsmtpclient.spool.envelope import State
from txsmtpclient.spool.store import Spool

REPO = Path(__file__).resolve().parent.parent


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _keys(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "rsa": tmp_path / "rsa.pem",
        "ed": tmp_path / "ed.pem",
        "ed2": tmp_path / "ed2.pem",
        "small": tmp_path / "small.pem",
    }
    paths["rsa"].write_bytes(rsa_pem())
    paths["ed"].write_bytes(ed25519_pem(0))
    paths["ed2"].write_bytes(ed25519_pem(1))
    paths["small"].write_bytes(rsa_pem(1024))
    for path in paths.values():
        path.chmod(0o600)
    return paths


def _parse(tmp_path: Path, *argv: str) -> tap.Options:
    # The options open the spool at start-up checks: a private one, never a
    # shared path.
    options = tap.Options()
    spool = str(tmp_path / "spool")
    options.parseOptions(["--spool", spool, *argv])  # type: ignore[no-untyped-call]
    return options


def _message(sender: str, n: int) -> bytes:
    return (
        f"From: Sender <{sender}>\r\nTo: rcpt@example.org\r\nSubject: daemon {n}\r\n"
        f"Message-ID: <d{n}@example.test>\r\n\r\n.dot line {n}\r\nGrüße\r\n"
    ).encode()


def test_options_pair_and_load_keys(tmp_path: Path) -> None:
    """Repeated --dkim-domain/--dkim-selector/--dkim-key-file give each domain its signers."""
    keys = _keys(tmp_path)
    options = _parse(
        tmp_path,
        *(
            "--dkim-domain",
            "example.com",
            "--dkim-selector",
            "rsa",
            "--dkim-key-file",
            str(keys["rsa"]),
        ),
        *(
            "--dkim-domain",
            "Example.COM",
            "--dkim-selector",
            "ed",
            "--dkim-key-file",
            str(keys["ed"]),
        ),
        *(
            "--dkim-domain",
            "other.org",
            "--dkim-selector",
            "ed",
            "--dkim-key-file",
            str(keys["ed2"]),
        ),
    )
    signers = options.settings["dkim"]
    assert sorted(signers) == ["example.com", "other.org"]
    assert [s.algorithm for s in signers["example.com"]] == ["rsa-sha256", "ed25519-sha256"]
    assert _parse(tmp_path).settings["dkim"] == {}


def test_keys_file(tmp_path: Path) -> None:
    """--dkim-keys reads [[key]] tables, also through --config."""
    keys = _keys(tmp_path)
    listing = tmp_path / "dkim.toml"
    listing.write_text(
        f'[[key]]\ndomain = "example.com"\nselector = "rsa"\nkey-file = "{keys["rsa"]}"\n'
        f'[[key]]\ndomain = "example.com"\nselector = "ed"\nkey-file = "{keys["ed"]}"\n'
        'canonicalization = "simple/simple"\n'
    )
    signers = _parse(tmp_path, "--dkim-keys", str(listing)).settings["dkim"]["example.com"]
    assert [(s.selector, s.canonicalization) for s in signers] == [
        ("rsa", "relaxed/relaxed"),
        ("ed", "simple/simple"),
    ]
    config = tmp_path / "txsmtp.toml"
    config.write_text(f'dkim-keys = "{listing}"\n')
    assert len(_parse(tmp_path, "--config", str(config)).settings["dkim"]["example.com"]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dkim-domain", "example.com", "--dkim-selector", "s"], "go together"),
        (
            [
                "--dkim-domain",
                "example.com",
                "--dkim-selector",
                "s",
                "--dkim-key-file",
                "missing.pem",
            ],
            "cannot read the DKIM key missing.pem",
        ),
        (
            ["--dkim-domain", "example.com", "--dkim-selector", "s", "--dkim-key-file", "SMALL"],
            "2048",
        ),
        (
            ["--dkim-domain", "example.com", "--dkim-selector", "s", "--dkim-key-file", "LISTING"],
            "neither",
        ),
        (["--dkim-keys", "LISTING"], "cannot parse"),
        (["--dkim-keys", "missing.toml"], "cannot read missing.toml"),
    ],
)
def test_bad_keys_are_usage_errors(tmp_path: Path, argv: list[str], message: str) -> None:
    """Unreadable, unusable or unpaired keys stop the start: a usage error naming the problem."""
    keys = _keys(tmp_path)
    listing = tmp_path / "broken.toml"
    listing.write_text("[[key]\n")
    argv = [{"SMALL": str(keys["small"]), "LISTING": str(listing)}.get(a, a) for a in argv]
    with pytest.raises(usage.UsageError, match=message) as caught:
        _parse(tmp_path, *argv)
    assert "\n" not in str(caught.value)
    assert "PRIVATE" not in str(caught.value)


def test_twist_reports_a_bad_key_in_one_line(tmp_path: Path) -> None:
    """``twist txsmtp`` with an unusable key exits 64 (EX_USAGE): an error line, no traceback."""
    keys = _keys(tmp_path)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twisted",
            "txsmtp",
            "--spool",
            str(tmp_path / "spool"),
            "--dkim-domain",
            "example.com",
            "--dkim-selector",
            "s",
            "--dkim-key-file",
            str(keys["small"]),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 64
    [line] = result.stderr.splitlines()
    assert line.startswith("twist txsmtp: error: --dkim-key-file:") and "1024 bits" in line
    assert "Traceback" not in result.stderr + result.stdout


def test_from_domains() -> None:
    """Every From address's domain, lower case and as an A-label, once each."""
    message = (
        "From: A <a@Example.COM>, b@bücher.example, c@example.com\r\nTo: x@y.z\r\n"
        "\r\nFrom: no@body.org\r\n"
    ).encode()
    assert from_domains(message) == ["example.com", "xn--bcher-kva.example"]
    assert from_domains(b"To: x@y.z\n\nbody\n") == []


# -- the running daemon -------------------------------------------------------------


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s")
        await deferLater(_reactor(), 0.05, lambda: None)


@pytest_twisted.async_yield_fixture()  # type: ignore[untyped-decorator]
async def run_daemon(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    running: list[Any] = []

    async def run(relay: str, *extra: str) -> Any:
        options = tap.Options()
        options.parseOptions(  # type: ignore[no-untyped-call]
            [
                *("--relay", relay, "--spool", str(tmp_path / "spool"), "--tls", "never"),
                *("--poll-interval", "0.1", "--grace", "5", *extra),
            ]
        )
        service = tap.makeService(options)
        service.startService()
        running.append(service)
        await service.getServiceNamed("spool").when_ready()
        return service

    yield run
    for service in running:
        await service.stopService()


def _signing(keys: dict[str, Path], selector: str, key: str) -> list[str]:
    return [
        "--dkim-domain",
        "example.com",
        "--dkim-selector",
        selector,
        "--dkim-key-file",
        str(keys[key]),
    ]


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_daemon_signs_by_from_domain_and_logs_no_key(
    smtp_server: AiosmtpdServer, run_daemon: Callable[..., Any], tmp_path: Path
) -> None:
    """Mail From a domain with keys arrives signed by each and verifies; other mail is unsigned."""
    keys = _keys(tmp_path)
    with capturedLogs() as events:
        await run_daemon(
            smtp_server.address, *_signing(keys, "rsa", "rsa"), *_signing(keys, "ed", "ed")
        )
        spool = Spool(str(tmp_path / "spool"))
        signed_id = spool.enqueue(
            _message("alice@example.com", 1), "alice@example.com", ["rcpt@example.org"]
        )
        spool.enqueue(_message("carol@other.org", 2), "carol@other.org", ["rcpt@example.org"])
        messages = await smtp_server.when_messages(2, timeout=10, reactor=_reactor())
        await _until(lambda: spool.get(signed_id).state is State.DONE)
    by_sender = {m.mail_from: m.content for m in messages}
    signers = [
        DKIMSigner("example.com", "rsa", keys["rsa"].read_bytes()),
        DKIMSigner("example.com", "ed", keys["ed"].read_bytes()),
    ]
    assert verify_all(by_sender["alice@example.com"], signers) == [True, True]
    assert by_sender["carol@other.org"] == _message("carol@other.org", 2)
    # The spool holds the message as submitted: signing is at delivery.
    assert spool.read_message(signed_id) == _message("alice@example.com", 1)
    logged = repr([dict(e) for e in events])
    for path in (keys["rsa"], keys["ed"]):
        for line in path.read_text().splitlines()[1:-1]:
            assert line not in logged


@pytest_twisted.ensureDeferred  # type: ignore[untyped-decorator]
async def test_rotated_key_applies_to_queued_mail(
    smtp_server: AiosmtpdServer, run_daemon: Callable[..., Any], tmp_path: Path
) -> None:
    """Mail queued before a restart with a new selector and key goes out with the new key."""
    keys = _keys(tmp_path)
    old = DKIMSigner("example.com", "old", keys["ed"].read_bytes())
    new = DKIMSigner("example.com", "new", keys["ed2"].read_bytes())
    first = await run_daemon(smtp_server.address, *_signing(keys, "old", "ed"))
    spool = Spool(str(tmp_path / "spool"))
    spool.enqueue(_message("alice@example.com", 1), "alice@example.com", ["rcpt@example.org"])
    await smtp_server.when_messages(1, timeout=10, reactor=_reactor())
    await first.stopService()
    # Queued while no daemon runs; then the key is rotated.
    spool.enqueue(_message("alice@example.com", 2), "alice@example.com", ["rcpt@example.org"])
    await run_daemon(smtp_server.address, *_signing(keys, "new", "ed2"))
    one, two = await smtp_server.when_messages(2, timeout=10, reactor=_reactor())
    assert verify_all(one.content, [old]) == [True]
    assert b"s=new;" in two.content
    assert verify_all(two.content, [new]) == [True]


def test_a_streamed_message_is_signed_by_its_from_domain() -> None:
    """A message the queue streams in chunks (PostgreSQL) is signed like a whole one."""
    from dkimtools import DOMAIN, ed25519_signer
    from helpers import success_result_of
    from twisted.internet.defer import succeed

    from txsmtpclient._dkimtap import SigningSender
    from txsmtpclient.transaction import Envelope

    signer = ed25519_signer()
    sent: list[tuple[Any, Envelope]] = []

    class Recording:
        def sendmail(self, *, msg: Any, envelope: Envelope) -> Any:
            sent.append((msg, envelope))
            return succeed({})

    async def chunks() -> AsyncIterator[bytes]:
        yield f"From: <a@{DOMAIN}>\r\nSubject: big\r\n\r\n".encode()
        yield b"body\r\n"

    sender = SigningSender(Recording(), {DOMAIN: (signer,)})
    success_result_of(sender.sendmail(msg=chunks(), envelope=Envelope(f"a@{DOMAIN}", ("b@x",))))
    [(msg, envelope)] = sent
    assert envelope.dkim == (signer,)

    async def collect() -> bytes:
        return b"".join([c async for c in msg])

    from twisted.internet.defer import Deferred

    body = success_result_of(Deferred.fromCoroutine(collect()))
    assert body == f"From: <a@{DOMAIN}>\r\nSubject: big\r\n\r\nbody\r\n".encode()
