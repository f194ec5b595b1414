"""
Tests for the command line (txsmtpclient.__main__, txsmtpclient.spool.cli):
through main([...]) with a temporary spool, and once each through a real
``python -m txsmtpclient`` subprocess.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from txsmtpclient.__main__ import main as module_main
from txsmtpclient.spool.cli import (
    EX_DATAERR,
    EX_USAGE,
    SendmailOptions,
    UsageError,
    default_spool,
    main,
    parse_sendmail_args,
    prepare_sendmail_message,
    read_sendmail_input,
    sendmail_main,
)
from txsmtpclient.spool.envelope import Attempt, RecipientState, ReplyRecord, State
from txsmtpclient.spool.schedule import RecurrenceKind
from txsmtpclient.spool.store import Spool

REPO = Path(__file__).resolve().parent.parent
T0 = 1_900_000_000.0
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"


def clock() -> float:
    return T0


def run(
    argv: list[str], stdin: bytes = b"", environ: dict[str, str] | None = None
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(
        argv,
        stdin=io.BytesIO(stdin),
        stdout=out,
        stderr=err,
        environ=environ or {},
        clock=clock,
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def spool_dir(tmp_path: Path) -> str:
    return str(tmp_path / "spool")


def test_enqueue_prints_id(spool_dir: str) -> None:
    """
    enqueue reads the message from stdin, queues it with the given envelope
    and prints the id.
    """
    code, out, err = run(
        [
            "enqueue",
            "--spool",
            spool_dir,
            "--from",
            "a@x",
            "--to",
            "b@x",
            "--to",
            "c@x",
            "--mail-option",
            "SMTPUTF8",
            "--rcpt-option",
            "X=1",
            "--dsn-notify",
            "FAILURE",
        ],
        MESSAGE,
    )
    assert (code, err) == (0, "")
    entry_id, due_word, due = out.split()
    assert (due_word, datetime.fromisoformat(due).timestamp()) == ("due", T0)
    spool = Spool(spool_dir)
    entry = spool.get(entry_id)
    assert (entry.sender, entry.pending, entry.due) == ("a@x", ("b@x", "c@x"), T0)
    assert entry.mail_options == ("SMTPUTF8",)
    assert entry.rcpt_options == ("X=1",)
    assert entry.dsn is not None and entry.dsn.notify == ("FAILURE",)
    assert spool.read_message(entry_id) == MESSAGE


def test_enqueue_8bit_adds_body_option(spool_dir: str) -> None:
    """
    An 8-bit message gets BODY=8BITMIME (RFC 6152) unless a BODY is given.
    """
    _, out, _ = run(
        ["enqueue", "--spool", spool_dir, "--from", "a@x", "--to", "b@x"],
        "Subject: é\n\nx\n".encode(),
    )
    assert Spool(spool_dir).get(out.split()[0]).mail_options == ("BODY=8BITMIME",)


@pytest.mark.parametrize(
    ("when", "due"),
    [
        (["--in", "10m"], T0 + 600),
        (["--in", "PT1H"], T0 + 3600),
        (
            ["--at", "2031-01-01T10:00:00+02:00"],
            datetime.fromisoformat("2031-01-01T08:00:00+00:00").timestamp(),
        ),
        (
            ["--at", "2031-07-01T10:00", "--tz", "Europe/Paris"],
            datetime.fromisoformat("2031-07-01T08:00:00+00:00").timestamp(),
        ),
    ],
)
def test_enqueue_when(spool_dir: str, when: list[str], due: float) -> None:
    """
    --in and --at (time zones honoured) set the due time.
    """
    code, out, err = run(
        ["enqueue", "--spool", spool_dir, "--from", "a@x", "--to", "b@x", *when], MESSAGE
    )
    assert code == 0, err
    assert Spool(spool_dir).get(out.split()[0]).due == due


def test_enqueue_recurring(spool_dir: str) -> None:
    """
    --cron and --every store a recurrence; a cron entry is first due at its
    next time, an interval entry now.
    """
    _, out, _ = run(
        [
            "enqueue",
            "--spool",
            spool_dir,
            "--from",
            "a@x",
            "--to",
            "b@x",
            "--cron",
            "0 9 * * *",
            "--tz",
            "UTC",
        ],
        MESSAGE,
    )
    cron = Spool(spool_dir).get(out.split()[0])
    assert cron.recurrence is not None and cron.recurrence.kind is RecurrenceKind.CRON
    assert cron.recurrence.timezone == "UTC"
    assert cron.due > T0 and datetime.fromtimestamp(cron.due).astimezone().minute == 0
    _, out, _ = run(
        ["enqueue", "--spool", spool_dir, "--from", "a@x", "--to", "b@x", "--every", "2h"], MESSAGE
    )
    every = Spool(spool_dir).get(out.split()[0])
    assert every.recurrence is not None and every.recurrence.interval == 7200
    assert every.due == T0


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--in", "10m", "--at", "now"], EX_USAGE),
        (["--in", "soon"], EX_DATAERR),
        (["--cron", "not cron"], EX_DATAERR),
        (["--to", "bad address"], EX_DATAERR),
        (["--at", "2031-01-01T10:00", "--tz", "Atlantis/City"], EX_DATAERR),
    ],
)
def test_enqueue_errors(spool_dir: str, extra: list[str], expected: int) -> None:
    """
    Conflicting or unreadable options fail with a status and a message, and
    nothing is queued.
    """
    code, out, err = run(
        ["enqueue", "--spool", spool_dir, "--from", "a@x", "--to", "b@x", *extra], MESSAGE
    )
    assert (code, out) == (expected, "")
    assert err
    assert (
        not os.path.exists(os.path.join(spool_dir, "queue"))
        or os.listdir(os.path.join(spool_dir, "queue")) == []
    )


def test_list_show_cancel_retry(spool_dir: str) -> None:
    """
    list, show, cancel and retry work on ids printed by enqueue.
    """
    _, out, _ = run(
        ["enqueue", "--spool", spool_dir, "--from", "a@x", "--to", "b@x", "--in", "1h"], MESSAGE
    )
    entry_id = out.split()[0]
    spool = Spool(spool_dir, clock=clock)
    spool.retry(entry_id)
    spool.claim(entry_id)
    spool.reschedule(
        entry_id,
        T0 + 60,
        Attempt(
            T0,
            1.5,
            "tcp:127.0.0.1:2525",
            451,
            "4.3.0 try later",
            temporary=True,
            refused={"b@x": ReplyRecord(451, "4.3.0 try later")},
        ),
    )

    code, out, _ = run(["list", "--spool", spool_dir])
    assert code == 0
    header, line, legend = out.splitlines()
    assert header.split()[:3] == ["ID", "STATE", "DUE/FINISHED"]
    assert line.startswith(entry_id) and "451 4.3.0 try later" in line
    assert "0/0/1" in line and "RCPT S/F/P: recipients sent / failed / pending" in legend
    code, out, _ = run(["list", "--spool", spool_dir, "--state", "done"])
    assert code == 0 and len(out.splitlines()) == 2
    _, out, _ = run(["list", "--spool", spool_dir, "--json"])
    assert json.loads(out)["id"] == entry_id

    code, out, _ = run(["show", "--spool", spool_dir, entry_id])
    assert code == 0
    assert f"id:           {entry_id}" in out
    assert "pending   <b@x>  451 4.3.0 try later" in out
    assert "tcp:127.0.0.1:2525 451 4.3.0 try later" in out
    _, out, _ = run(["show", "--spool", spool_dir, "--json", entry_id])
    shown = json.loads(out)
    assert (shown["state"], shown["attempts"][0]["code"]) == ("queue", 451)

    code, out, _ = run(["cancel", "--spool", spool_dir, entry_id])
    assert (code, out) == (0, f"cancelled {entry_id}\n")
    code, _, err = run(["cancel", "--spool", spool_dir, entry_id])
    assert code == 1 and "cancelled, not queued" in err
    code, out, _ = run(["retry", "--spool", spool_dir, entry_id])
    assert code == 0 and out.startswith(f"queued {entry_id}")
    assert Spool(spool_dir).get(entry_id).state is State.QUEUED

    code, out, _ = run(["counts", "--spool", spool_dir, "--json"])
    assert json.loads(out)["queue"] == 1


def test_unknown_id(spool_dir: str) -> None:
    """
    Unknown or malformed ids exit 1 with a message.
    """
    Spool(spool_dir)
    for command in ("show", "cancel", "retry"):
        code, out, err = run([command, "--spool", spool_dir, "6615ae2d8caa3-7967-af987231"])
        assert (code, out) == (1, "")
        assert "no entry" in err
    code, _, err = run(["show", "--spool", spool_dir, "../x"])
    assert code == 1 and "not a spool id" in err


def test_spool_from_environment(tmp_path: Path) -> None:
    """
    Without --spool, TXSMTP_SPOOL names the spool; the default follows XDG.
    """
    target = str(tmp_path / "env-spool")
    code, out, _ = run(
        ["enqueue", "--from", "a@x", "--to", "b@x"], MESSAGE, environ={"TXSMTP_SPOOL": target}
    )
    assert code == 0
    assert Spool(target).get(out.split()[0]).sender == "a@x"
    assert default_spool({"XDG_DATA_HOME": "/d"}) == "/d/txsmtp/spool"
    assert default_spool({}).endswith(os.path.join(".local", "share", "txsmtp", "spool"))


def test_module_main_runs_cli(spool_dir: str, capsys: pytest.CaptureFixture[str]) -> None:
    """
    txsmtpclient.__main__.main parses and dispatches.
    """
    Spool(spool_dir)
    assert module_main(["counts", "--spool", spool_dir]) == 0
    assert "queue     0" in capsys.readouterr().out
    assert module_main(["frobnicate"]) == EX_USAGE


# --- sendmail ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-t", "-i"], SendmailOptions(extract=True, ignore_dots=True)),
        (["-ti"], SendmailOptions(extract=True, ignore_dots=True)),
        (["-oi", "b@x"], SendmailOptions(ignore_dots=True, recipients=["b@x"])),
        (["-fme@x", "b@x"], SendmailOptions(sender="me@x", recipients=["b@x"])),
        (
            ["-f", "me@x", "-F", "Me Too", "b@x"],
            SendmailOptions(sender="me@x", full_name="Me Too", recipients=["b@x"]),
        ),
        (["-f", "<>", "b@x"], SendmailOptions(sender="", recipients=["b@x"])),
        (["-r", "me@x", "b@x"], SendmailOptions(sender="me@x", recipients=["b@x"])),
        # What cron runs.
        (
            ["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"],
            SendmailOptions(
                full_name="CronDaemon", ignore_dots=True, body="8BITMIME", recipients=["root"]
            ),
        ),
        (["-oem", "-odi", "-bm", "-v", "b@x"], SendmailOptions(verbose=True, recipients=["b@x"])),
        (
            ["-N", "success,failure", "-RHDRS", "-V", "env1", "b@x"],
            SendmailOptions(
                notify=("SUCCESS", "FAILURE"), ret="HDRS", envid="env1", recipients=["b@x"]
            ),
        ),
        (["--spool", "/s", "--", "-odd@x"], SendmailOptions(spool="/s", recipients=["-odd@x"])),
    ],
)
def test_parse_sendmail_args(argv: list[str], expected: SendmailOptions) -> None:
    """
    sendmail(1) flags parse as Postfix's and Sendmail's do.
    """
    assert parse_sendmail_args(argv) == expected


@pytest.mark.parametrize("argv", [["-bs"], ["-bp"], ["-q"], ["-f"], ["-Z"]])
def test_parse_sendmail_args_rejects(argv: list[str]) -> None:
    """
    Other modes, unknown flags and missing values are usage errors.
    """
    with pytest.raises(UsageError):
        parse_sendmail_args(argv)


def test_single_dot_ends_input_without_i() -> None:
    """
    Without -i a line with a single dot ends the message; with -i it is
    kept, and ".." lines are never terminators.
    """
    data = b"a\r\n..\r\n.\r\nafter\n"
    assert read_sendmail_input(io.BytesIO(data), ignore_dots=False) == b"a\r\n..\r\n"
    assert read_sendmail_input(io.BytesIO(b"a\n.\n"), ignore_dots=False) == b"a\n"
    assert read_sendmail_input(io.BytesIO(data), ignore_dots=True) == data


def test_prepare_extracts_recipients_and_strips_bcc() -> None:
    """
    -t takes To, Cc and Bcc (folded lines too), strips Bcc, adds the missing
    From, Date and Message-ID, and keeps the rest byte for byte.
    """
    message = (
        b"To: Bob <b@x>, c@x\r\nCc: d@x\r\nBcc: e@x,\r\n f@x\r\nSubject: s\r\n"
        b"\r\nBody\r\nBcc: not a header\r\n"
    )
    result, sender, recipients = prepare_sendmail_message(
        message,
        SendmailOptions(extract=True, sender="me@x", full_name="Mé", recipients=["g@x"]),
        default_sender="u@h",
        hostname="host.example",
        now=T0,
    )
    assert sender == "me@x"
    assert recipients == ["g@x", "b@x", "c@x", "d@x", "e@x", "f@x"]
    head, body = result.split(b"\r\n\r\n", 1)
    assert body == b"Body\r\nBcc: not a header\r\n"
    lines = head.split(b"\r\n")
    assert lines[0] == b"From: =?utf-8?b?TcOp?= <me@x>"
    assert lines[1].startswith(b"Date: ")
    assert lines[2].startswith(b"Message-ID: <") and lines[2].endswith(b"@host.example>")
    assert lines[3:] == [b"To: Bob <b@x>, c@x", b"Cc: d@x", b"Subject: s"]


def test_prepare_prefers_resent_headers_and_keeps_existing() -> None:
    """
    Resent-* recipients win over To/Cc (RFC 5322 section 3.6.6); existing
    From, Date and Message-ID are left alone.
    """
    message = (
        b"From: a@x\nDate: Mon, 1 Jan 2030 00:00:00 +0000\nMessage-ID: <m@x>\n"
        b"To: old@x\nResent-To: new@x\nResent-Bcc: hidden@x\n\nbody\n"
    )
    result, _, recipients = prepare_sendmail_message(
        message, SendmailOptions(extract=True), default_sender="u@h", hostname="h", now=T0
    )
    assert recipients == ["new@x", "hidden@x"]
    assert result == message.replace(b"Resent-Bcc: hidden@x\n", b"")


def test_prepare_without_recipients_or_headers() -> None:
    """
    No recipient is a usage error; input without headers becomes the body.
    """
    with pytest.raises(UsageError, match="no recipients"):
        prepare_sendmail_message(
            b"Subject: x\n\n",
            SendmailOptions(extract=True),
            default_sender="u@h",
            hostname="h",
            now=T0,
        )
    result, sender, _ = prepare_sendmail_message(
        b"just text\n",
        SendmailOptions(recipients=["b@x"]),
        default_sender="u@h",
        hostname="h",
        now=T0,
    )
    assert sender == "u@h"
    assert result.endswith(b"\n\njust text\n")
    assert result.startswith(b"From: u@h\n")


def test_sendmail_queues(spool_dir: str) -> None:
    """
    sendmail -t queues with the header recipients, stops at a lone dot,
    and marks 8-bit bodies and UTF-8 addresses.
    """
    err = io.StringIO()
    code = sendmail_main(
        ["--spool", spool_dir, "-t", "-f", "me@x", "-v"],
        stdin=io.BytesIO("To: b@x, jörg@x\nSubject: s\n\nbödy\n.\nignored\n".encode()),
        stderr=err,
        environ={},
        clock=clock,
    )
    assert code == 0
    entry_id = err.getvalue().split()[-1]
    spool = Spool(spool_dir)
    entry = spool.get(entry_id)
    assert entry.pending == ("b@x", "jörg@x")
    assert entry.mail_options == ("BODY=8BITMIME", "SMTPUTF8")
    assert spool.read_message(entry_id).endswith("\n\nbödy\n".encode())
    assert [r.state for r in entry.recipients] == [RecipientState.PENDING] * 2


def test_sendmail_errors(spool_dir: str) -> None:
    """
    No recipients exits 64 (EX_USAGE), a bad address 65 (EX_DATAERR).
    """

    def go(argv: list[str]) -> int:
        return sendmail_main(
            ["--spool", spool_dir, *argv],
            stdin=io.BytesIO(b"Subject: x\n\n"),
            stderr=io.StringIO(),
            environ={},
            clock=clock,
        )

    assert go(["-t"]) == EX_USAGE
    assert go(["-bs"]) == EX_USAGE
    assert go(["a\x7fb@x"]) == EX_DATAERR
    code, _, _ = run(["sendmail", "--spool", spool_dir, "-i"], b"x")
    assert code == EX_USAGE


def subprocess_env(spool_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["TXSMTP_SPOOL"] = spool_dir
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_real_subprocess_enqueue_and_list(spool_dir: str) -> None:
    """
    ``python -m txsmtpclient enqueue`` in a real process prints an id that
    ``list`` then shows.
    """
    env = subprocess_env(spool_dir)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "txsmtpclient",
            "enqueue",
            "--from",
            "a@x",
            "--to",
            "b@x",
            "--in",
            "5m",
        ],
        input=MESSAGE,
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=True,
    )
    entry_id = result.stdout.decode().split()[0]
    listed = subprocess.run(
        [sys.executable, "-m", "txsmtpclient", "list"],
        capture_output=True,
        env=env,
        cwd=REPO,
        timeout=60,
        text=True,
        check=True,
    )
    assert listed.stdout.splitlines()[1].startswith(entry_id)
    assert Spool(spool_dir).read_message(entry_id) == MESSAGE


def test_real_subprocess_sendmail(spool_dir: str) -> None:
    """
    ``python -m txsmtpclient sendmail -t`` in a real process queues the
    message silently, Bcc stripped.
    """
    result = subprocess.run(
        [sys.executable, "-m", "txsmtpclient", "sendmail", "-t", "-oi"],
        input=b"To: b@x\nBcc: c@x\nSubject: s\n\n.\nbody\n",
        capture_output=True,
        env=subprocess_env(spool_dir),
        cwd=REPO,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    (entry,) = Spool(spool_dir).list()
    assert entry.pending == ("b@x", "c@x")
    message = Spool(spool_dir).read_message(entry.id)
    assert b"Bcc" not in message and message.endswith(b"\n\n.\nbody\n")
