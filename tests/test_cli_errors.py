"""
The command line's error paths and what it prints for operators: each
error runs the real command (``python -m txsmtpclient``, ``txsmtp-sendmail``)
in a subprocess and checks the exit code (sysexits(3)) and the one line on
stderr; the listing and ``show`` are checked through ``main``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import without_reader

from txsmtpclient.spool.cli import main
from txsmtpclient.spool.envelope import Attempt, Outcome, OutcomeKind, ReplyRecord, State
from txsmtpclient.spool.store import Spool

REPO = Path(__file__).resolve().parent.parent
MESSAGE = b"Subject: hi\r\n\r\nHello.\r\n"
ID = "6615ae2d8caa3-7967-af987231"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TXSMTP_SPOOL", None)
    env.pop("TXSMTP_QUEUE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _sendmail_command() -> list[str]:
    """The installed console script, else the same entry point through -m."""
    script = Path(sys.executable).parent / "txsmtp-sendmail"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "txsmtpclient", "sendmail"]


def _run(command: list[str], stdin: bytes = MESSAGE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        input=stdin.decode(),
        capture_output=True,
        text=True,
        env=_env(),
        cwd=REPO,
        timeout=60,
    )


def _cli(*args: str, stdin: bytes = MESSAGE) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "txsmtpclient", *args], stdin)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


#: (arguments, exit code, the start of the one line); {dir} is an empty
#: folder, {file} a plain file, {none} a path that does not exist.
CLI_FAULTS = [
    (["list", "--spool", "{none}"], 66, "error: no spool at {none}"),
    (["counts", "--spool", "{none}"], 66, "error: no spool at {none}"),
    (["show", "--spool", "{none}", ID], 66, "error: no spool at {none}"),
    (["cancel", "--spool", "{dir}", ID], 66, "error: no spool at {dir}"),
    (["list", "--spool", "{file}"], 66, "error: no spool at {file}"),
    (
        ["enqueue", "--spool", "{file}", "--from", "a@x", "--to", "b@x"],
        73,
        "error: cannot open a spool at {file}: Not a directory",
    ),
    (
        ["enqueue", "--spool", "{spool}", "--from", "a@x", "--to", "b@x", "--cron", "0 0 31 2 *"],
        64,
        "error: --cron: cron expression '0 0 31 2 *' matches no date",
    ),
    (
        ["enqueue", "--spool", "{spool}", "--from", "a@x", "--to", "b@x", "--message", "{none}"],
        66,
        "error: --message: cannot read {none}: No such file or directory",
    ),
    (
        ["enqueue", "--spool", "{spool}", "--to", "b@x"],
        64,
        "python -m txsmtpclient enqueue: error: the following arguments are required: --from",
    ),
    (
        ["enqueue", "--spool", "{spool}", "--from", "a@x", "--to", "b@x", "--in", "soon"],
        65,
        "error: ",
    ),
    (
        ["enqueue", "--spool", "{spool}", "--from", "a@x", "--to", "bad address"],
        65,
        "error: ",
    ),
    (["show", "--spool", "{spool}", ID], 1, f"error: no entry '{ID}'"),
    (["retry", "--spool", "{spool}", "../x"], 1, "error: not a spool id"),
    (["frobnicate"], 64, "python -m txsmtpclient: error: argument COMMAND: invalid choice"),
    (["migrate"], 64, "error: migrate needs --queue URL (or $TXSMTP_QUEUE)"),
    (["demo", "--bogus"], 64, "python -m txsmtpclient demo: error: unrecognized arguments"),
]


@pytest.mark.parametrize(
    ("argv", "code", "line"), CLI_FAULTS, ids=[" ".join(a[:2]) + f"-{c}" for a, c, _ in CLI_FAULTS]
)
def test_cli_error_is_one_line_with_sysexits_code(
    tmp_path: Path, argv: list[str], code: int, line: str
) -> None:
    """
    Each error exits with its sysexits code and one line on stderr, no
    traceback; a read-only command on a path without a spool creates nothing.
    """
    paths = {
        "{none}": str(tmp_path / "no-such-spool"),
        "{dir}": str(tmp_path / "empty"),
        "{file}": str(tmp_path / "a-file"),
        "{spool}": str(tmp_path / "spool"),
    }
    os.mkdir(paths["{dir}"])
    Path(paths["{file}"]).write_text("not a spool")
    Spool(paths["{spool}"])

    def fill(text: str) -> str:
        for key, value in paths.items():
            text = text.replace(key, value)
        return text

    result = _cli(*(fill(a) for a in argv))
    assert result.returncode == code, result.stderr
    assert _one_line(result).startswith(fill(line))
    assert not os.path.exists(paths["{none}"])
    assert os.listdir(paths["{dir}"]) == []
    assert os.listdir(os.path.join(paths["{spool}"], "queue")) == []


def test_cli_help_lists_every_command() -> None:
    """``--help`` names each command, demo included."""
    result = _cli("--help")
    assert result.returncode == 0, result.stderr
    for command in ("enqueue", "list", "show", "cancel", "retry", "counts", "sendmail", "demo"):
        assert f"    {command} " in result.stdout, command


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_sendmail_help(flag: str) -> None:
    """``txsmtp-sendmail --help`` and ``-h`` print the usage and exit 0."""
    result = _run([*_sendmail_command(), flag], b"")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("usage: txsmtp-sendmail")
    assert "-t " in result.stdout and "--spool DIR" in result.stdout


#: sendmail faults: arguments, exit code, the start of the one line.
SENDMAIL_FAULTS = [
    (["--bogus", "b@x"], 64, "sendmail: --bogus: unknown option"),
    (["-bp"], 64, "sendmail: -bp: only -bm"),
    (["--spool", "{spool}"], 64, "sendmail: no recipients"),
    (["--spool", "{file}", "b@x"], 73, "sendmail: cannot open a spool at {file}: Not a directory"),
    (["--spool", "{spool}", "bad\x7faddress@x"], 65, "sendmail: "),
    (["-B", "binary", "b@x"], 64, "sendmail: -B binary: expected 8BITMIME or 7BIT"),
]


@pytest.mark.parametrize(
    ("argv", "code", "line"), SENDMAIL_FAULTS, ids=[f"{a[0]}-{c}" for a, c, _ in SENDMAIL_FAULTS]
)
def test_sendmail_error_is_one_line_with_sysexits_code(
    tmp_path: Path, argv: list[str], code: int, line: str
) -> None:
    """Each sendmail error exits with its sysexits code and one line on stderr."""
    paths = {"{file}": str(tmp_path / "a-file"), "{spool}": str(tmp_path / "spool")}
    Path(paths["{file}"]).write_text("not a spool")

    def fill(text: str) -> str:
        for key, value in paths.items():
            text = text.replace(key, value)
        return text

    result = _run([*_sendmail_command(), *(fill(a) for a in argv)])
    assert result.returncode == code, result.stderr
    assert _one_line(result).startswith(fill(line))


# --- what list and show print (through main) ----------------------------------


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.BytesIO(MESSAGE), stdout=out, stderr=err, environ={})
    return code, out.getvalue(), err.getvalue()


def _attempt(
    code: int | None,
    text: str,
    *,
    queue_id: str | None = None,
    temporary: bool = False,
    delivered: tuple[str, ...] = (),
    refused: dict[str, ReplyRecord] | None = None,
    ambiguous: bool = False,
) -> Attempt:
    return Attempt(
        1_900_000_000.0,
        0.5,
        "tcp:127.0.0.1:2525",
        code,
        text,
        queue_id=queue_id,
        temporary=temporary,
        delivered=delivered,
        refused=refused or {},
        ambiguous=ambiguous,
    )


def test_list_tells_failed_from_delivered(tmp_path: Path) -> None:
    """
    A failed entry shows its recipient failed (0/1/0) and the refusal; a
    delivered one 1/0/0; neither reads like the other.
    """
    spool = Spool(tmp_path / "s")
    delivered = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(delivered)
    spool.record_attempt(delivered, _attempt(250, "2.0.0 Ok", delivered=("b@x",)))
    spool.complete(delivered)
    failed = spool.enqueue(MESSAGE, "a@x", ["c@x"])
    spool.claim(failed)
    refusal = ReplyRecord(550, "5.1.1 no such user")
    attempt = _attempt(550, refusal.text, refused={"c@x": refusal})
    spool.record_attempt(failed, attempt)
    spool.fail(failed, Outcome.from_attempt(attempt, OutcomeKind.FAILED))
    code, out, _ = _main("list", "--spool", str(tmp_path / "s"))
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert lines[delivered].split()[1] == "done" and " 1/0/0 " in lines[delivered]
    assert lines[failed].split()[1] == "failed" and " 0/1/0 " in lines[failed]
    assert "550 5.1.1 no such user" in lines[failed]


def test_list_state_corrupt_lists_files_set_aside(tmp_path: Path) -> None:
    """``list --state corrupt`` shows each file set aside with its reason."""
    spool = Spool(tmp_path / "s")
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.set_aside(entry_id, "unreadable for the test")
    code, out, err = _main("list", "--spool", str(tmp_path / "s"), "--state", "corrupt")
    assert (code, err) == (0, "")
    header, line = out.splitlines()
    assert header == "FILE SET ASIDE: REASON"
    assert entry_id in line and line.endswith(": unreadable for the test")
    code, out, _ = _main("list", "--spool", str(tmp_path / "s"), "--state", "corrupt", "--json")
    assert code == 0 and '"reason": "unreadable for the test"' in out


def test_show_says_ambiguous_and_held_plainly(tmp_path: Path) -> None:
    """
    ``show`` marks an ambiguous attempt in words, names the held state and
    how to release it, and says "no reply" rather than a code.
    """
    spool = Spool(tmp_path / "s")
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    spool.reschedule(
        entry_id,
        0.0,
        _attempt(None, "SMTPAmbiguousDelivery: lost", temporary=True, ambiguous=True),
    )
    spool.hold(entry_id)
    code, out, _ = _main("show", "--spool", str(tmp_path / "s"), entry_id)
    assert code == 0
    assert "state:        held" in out
    assert "tcp:127.0.0.1:2525 no reply SMTPAmbiguousDelivery: lost" in out
    assert "AMBIGUOUS: the message was sent but no reply to its end came" in out
    assert "'retry ID' queues it again" in out
    code, out, _ = _main("list", "--spool", str(tmp_path / "s"), "--state", State.HELD.value)
    assert "ambiguous: SMTPAmbiguousDelivery: lost" in out.splitlines()[1]


def test_show_names_the_queue_id_once(tmp_path: Path) -> None:
    """A reply that names its queue id is not followed by "(queued as X)" again."""
    spool = Spool(tmp_path / "s")
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    spool.claim(entry_id)
    spool.record_attempt(
        entry_id, _attempt(250, "2.0.0 Ok: queued as 4F2A", queue_id="4F2A", delivered=("b@x",))
    )
    spool.complete(entry_id)
    code, out, _ = _main("show", "--spool", str(tmp_path / "s"), entry_id)
    assert code == 0
    named = [line for line in out.splitlines() if "queued as 4F2A" in line]
    assert len(named) == 3  # the recipient, the attempt and the outcome
    assert all(line.count("4F2A") == 1 for line in named), named


def test_list_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """``list | head -1``: the reader leaves early; no error, no traceback."""
    spool = Spool(tmp_path / "s", fsync=False)
    for _ in range(800):  # ~120 kB of listing: more than a pipe holds
        spool.enqueue(MESSAGE, "a@x", ["b@x"])
    process = subprocess.Popen(
        [sys.executable, "-m", "txsmtpclient", "list", "--spool", str(tmp_path / "s")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=REPO,
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().startswith(b"ID ")
    process.stdout.close()
    assert process.wait(60) == 0
    assert process.stderr.read() == b""


def test_a_system_error_in_the_spool_names_the_spool(tmp_path: Path) -> None:
    """
    A system error while using the spool (here the entry's file is a folder)
    names the spool and the reason, not Python's ``[Errno 21] ...: 'path'``.
    """
    spool = Spool(tmp_path / "s", fsync=False)
    entry_id = spool.enqueue(MESSAGE, "a@x", ["b@x"])
    (entry_file,) = (tmp_path / "s" / "queue").iterdir()
    entry_file.unlink()
    entry_file.mkdir()
    code, _, err = _main("show", "--spool", str(tmp_path / "s"), entry_id)
    assert err.splitlines() == [f"error: cannot use the spool at {tmp_path / 's'}: Is a directory"]
    assert code == 75


def test_sendmail_help_into_a_closed_pipe_stops_quietly() -> None:
    """``txsmtp-sendmail --help | head -1``: the reader is gone; no traceback, exit 0."""
    assert without_reader([*_sendmail_command(), "--help"], _env(), REPO) == (0, b"")
