"""
The rest of smtplib's API (issue 13): ``async with``, ``auth()`` with
smtplib's authobjects, ``putcmd``/``send``/``getreply``, ``source_address``,
the ``debuglevel`` attribute, and a transcript on stderr when no log observer
runs, checked by running the README's seed example against the testing kit.
"""

from __future__ import annotations

import hmac
import re
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from helpers import failure_result_of, success_result_of

from txsmtpclient import SMTP, Reply
from txsmtpclient.errors import SMTPArgumentError, SMTPException
from txsmtpclient.testing import LoopbackServer, MemoryServer, Script

REPO = Path(__file__).resolve().parent.parent
MSG = b"Subject: parity\r\n\r\nbody\r\n"


def _client(server: MemoryServer, **kwargs: object) -> SMTP:
    return SMTP(
        server.endpoint(),
        local_hostname="client.example",
        reactor=server.clock,
        allow_plaintext_auth=True,
        **kwargs,  # type: ignore[arg-type]
    )


def test_async_with_quits_on_a_normal_exit() -> None:
    """Leaving ``async with`` normally sends QUIT, as smtplib's ``with``."""
    server = MemoryServer()
    smtp = _client(server)

    async def use() -> None:
        async with smtp as s:
            assert s is smtp
            await s.noop()

    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(use())
    server.flush()
    success_result_of(d)
    assert server.sessions[0].commands[-1] == b"QUIT" and server.sessions[0].closed


def test_async_with_closes_after_an_error() -> None:
    """An error inside ``async with`` closes the connection without QUIT and propagates."""
    server = MemoryServer()
    smtp = _client(server)

    async def use() -> None:
        async with smtp:
            await smtp.noop()
            raise ValueError("application error")

    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(use())
    server.flush()
    failure_result_of(d, ValueError)
    assert b"QUIT" not in server.sessions[0].commands and server.sessions[0].closed


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_auth_with_smtplibs_authobjects(mechanism: str) -> None:
    """``auth(name, smtp.auth_plain/auth_login)`` logs in as smtplib's does."""
    server = MemoryServer(Script(credentials={"user": "s3cret"}))
    smtp = _client(server)
    smtp.user, smtp.password = "user", "s3cret"
    authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
    d = smtp.auth(mechanism, authobject, initial_response_ok=mechanism == "PLAIN")
    server.flush()
    assert success_result_of(d).code == 235
    assert server.sessions[0].auth_user == "user"


def test_auth_cram_md5_answers_the_challenge() -> None:
    """auth_cram_md5 gives no initial response, then the user and the keyed MD5."""
    smtp = SMTP(local_hostname="x")
    smtp.user, smtp.password = "tim", "tanstaaftanstaaf"
    challenge = b"<1896.697170952@postoffice.reston.mci.net>"
    assert smtp.auth_cram_md5() is None
    expected = hmac.new(b"tanstaaftanstaaf", challenge, "md5").hexdigest()
    # RFC 2195 section 2's own example.
    assert smtp.auth_cram_md5(challenge) == f"tim {expected}"
    assert expected == "b913a602c7eda7a495b4e6e7334d3890"


def test_putcmd_send_and_getreply() -> None:
    """putcmd and send write now; getreply reads their replies in order."""
    server = MemoryServer()
    smtp = _client(server)
    smtp.putcmd("NOOP")
    smtp.send("VRFY postmaster\r\n")
    first, second = smtp.getreply(), smtp.getreply()
    server.flush()
    assert success_result_of(first) == Reply(250, b"2.0.0 ok")
    assert success_result_of(second).code == 252
    assert server.sessions[0].commands == [b"NOOP", b"VRFY postmaster"]
    failure_result_of(smtp.getreply(), SMTPException)


def test_send_refuses_more_than_one_line() -> None:
    """A CR, LF or NUL inside send()'s line is refused before anything is written."""
    smtp = SMTP(local_hostname="x")
    for bad in ("NOOP\r\nRSET\r\n", "NO\0OP", b"NOOP\nRSET"):
        with pytest.raises(SMTPArgumentError):
            smtp.send(bad)


def test_debuglevel_attribute() -> None:
    """smtplib's ``debuglevel`` attribute reads and sets the level."""
    smtp = SMTP(local_hostname="x")
    assert smtp.debuglevel == 0
    smtp.debuglevel = 2
    assert smtp.debuglevel == 2


@pytest_twisted.ensureDeferred
async def test_source_address_binds_the_local_end() -> None:
    """source_address=(host, 0) makes the connection come from that address."""
    from twisted.internet import reactor

    server = LoopbackServer().start()
    try:
        smtp = SMTP(
            server.address,
            local_hostname="client.example",
            reactor=reactor,
            source_address=("127.0.0.7", 0),
        )
        await smtp.noop()
        await smtp.quit()
    finally:
        await server.stop()
    assert server.sessions[0].peer == "127.0.0.7"


def test_source_address_refused_with_an_endpoint() -> None:
    """An endpoint binds its own address: source_address with one is an argument error."""
    server = MemoryServer()
    with pytest.raises(SMTPArgumentError, match="source_address"):
        SMTP(local_hostname="x", source_address=("127.0.0.1", 0)).connect(server.endpoint())
    assert server.sessions == []


def _seed_example() -> str:
    text = (REPO / "README.rst").read_text()
    block = text.split("The original ``smtplib`` example, for Twisted::", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


@pytest_twisted.ensureDeferred
async def test_readme_seed_example_prints_the_transcript_on_stderr() -> None:
    """The README's seed example, run as written against the kit, prints smtplib's transcript."""
    from twisted.internet.threads import deferToThread

    server = LoopbackServer().start()
    try:
        code = _seed_example()
        assert 'txsmtpclient.SMTP("localhost", reactor=reactor)' in code
        code = code.replace('"localhost"', repr(server.address))
        result = await deferToThread(
            subprocess.run,
            [sys.executable, "-c", code],
            input="me@example.test\nyou@example.test\nSubject: hi\n\nHello\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        await server.stop()
    assert result.returncode == 0, result.stderr
    assert "Message length is 19" in result.stdout
    assert re.search(r"send: b'EHLO [^']+\\r\\n'", result.stderr), result.stderr
    assert "send: b'MAIL FROM:<me@example.test> SIZE=" in result.stderr
    assert "reply: 250 b'2.0.0 OK queued as" in result.stderr
    assert "send: b'QUIT\\r\\n'" in result.stderr
    assert server.messages[0].content == b"Subject: hi\r\n\r\nHello\r\n"


def test_quiet_once_logging_has_begun() -> None:
    """With a log observer running (twist, twistd), the transcript goes to it only."""
    code = (
        "import sys\n"
        "from twisted.logger import globalLogBeginner, textFileLogObserver\n"
        "globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])\n"
        "import txsmtpclient\n"
        "s = txsmtpclient.SMTP(local_hostname='x')\n"
        "s.set_debuglevel(1)\n"
        "s._transcript.note('hello from the transcript')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "hello from the transcript" in result.stdout
    assert "hello from the transcript" not in result.stderr


def test_version_from_the_command_line() -> None:
    """``python -m txsmtpclient --version`` prints the one version there is."""
    import txsmtpclient

    result = subprocess.run(
        [sys.executable, "-m", "txsmtpclient", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert (result.returncode, result.stdout) == (0, f"txsmtpclient {txsmtpclient.__version__}\n")


def test_login_tries_starttls_once_when_it_is_refused() -> None:
    """With STARTTLS advertised but refused (454), login says STARTTLS once, then AUTH."""
    script = Script(credentials={"user": "s3cret"}, auth_without_tls=True)
    script.advertise("STARTTLS")
    script.on("STARTTLS", "454 4.7.0 TLS not available")
    server = MemoryServer(script)
    smtp = _client(server, server_hostname="mx.txsmtp.test")
    d = smtp.login("user", "s3cret")
    server.flush()
    assert success_result_of(d).code == 235
    verbs = [c.split()[0] for c in server.sessions[0].commands]
    assert verbs == [b"EHLO", b"STARTTLS", b"AUTH"]
