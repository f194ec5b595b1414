"""
The command line: ``python -m txsmtpclient enqueue | list | show | cancel |
retry | counts | sendmail``, and the ``txsmtp-sendmail`` console script.

The spool folder is ``--spool DIR``, else the ``TXSMTP_SPOOL`` environment
variable, else ``$XDG_DATA_HOME/txsmtp/spool`` (``~/.local/share/txsmtp/spool``
when ``XDG_DATA_HOME`` is unset).

Exit codes follow sysexits(3) where sendmail users expect them: 0 success,
1 no such entry or wrong state, 64 usage (2 for argparse's own errors),
65 bad message or envelope, 75 temporary failure (disk full).
"""

from __future__ import annotations

import argparse
import contextlib
import email.utils
import getpass
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, BinaryIO, TextIO

from txsmtpclient.spool.envelope import Dsn, Entry, EnvelopeError, State, encode_entry
from txsmtpclient.spool.schedule import (
    ScheduleError,
    parse_duration,
    parse_recurrence,
    parse_time,
)
from txsmtpclient.spool.store import (
    EntryBusy,
    EntryNotFound,
    EntryStateError,
    Spool,
    SpoolError,
    SpoolFull,
)

__all__ = [
    "EX_DATAERR",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "SendmailOptions",
    "default_spool",
    "main",
    "parse_sendmail_args",
    "prepare_sendmail_message",
    "read_sendmail_input",
    "sendmail_main",
]

EX_OK = 0
EX_NOTFOUND = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_SOFTWARE = 70
EX_TEMPFAIL = 75


class UsageError(Exception):
    """
    A command line the sendmail entry point cannot follow.
    """


def default_spool(environ: Mapping[str, str]) -> str:
    """
    The spool folder when ``--spool`` is not given: ``TXSMTP_SPOOL``, else
    ``$XDG_DATA_HOME/txsmtp/spool``, else ``~/.local/share/txsmtp/spool``.
    """
    if environ.get("TXSMTP_SPOOL"):
        return environ["TXSMTP_SPOOL"]
    data_home = environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(data_home, "txsmtp", "spool")


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _has_8bit(data: bytes) -> bool:
    return not data.isascii()


# --- sendmail(1) ------------------------------------------------------------


@dataclass
class SendmailOptions:
    """
    What a sendmail(1) command line asked for.

    :ivar extract: ``-t``: take recipients from the To, Cc and Bcc headers.
    :ivar ignore_dots: ``-i`` / ``-oi``: a line with a single dot does not
        end the input.
    :ivar sender: ``-f`` / ``-r``: the envelope sender.
    :ivar full_name: ``-F``: the sender's full name for a From header added
        when the message has none.
    :ivar recipients: the command-line recipients.
    :ivar body: ``-B``: ``"8BITMIME"`` or ``"7BIT"``.
    :ivar notify: ``-N``: DSN NOTIFY words.
    :ivar ret: ``-R``: DSN RET (``FULL`` or ``HDRS``).
    :ivar envid: ``-V``: DSN ENVID.
    :ivar spool: ``--spool``.
    :ivar verbose: ``-v``: print the queued id on stderr.
    """

    extract: bool = False
    ignore_dots: bool = False
    sender: str | None = None
    full_name: str | None = None
    recipients: list[str] = field(default_factory=list)
    body: str | None = None
    notify: tuple[str, ...] = ()
    ret: str | None = None
    envid: str | None = None
    spool: str | None = None
    verbose: bool = False


# Flags that take a value, attached ("-fme@x") or as the next argument.
_VALUE_FLAGS = frozenset("fFrBNRVOXhLCp")
# Flags sendmail implementations accept that do not change what we do.
_IGNORED_FLAGS = frozenset("mnvUGde")


def parse_sendmail_args(argv: Sequence[str]) -> SendmailOptions:
    """
    Read a sendmail(1) command line the way Postfix's and Sendmail's do:
    single-letter flags that may be combined (``-ti``), values attached or
    separate (``-fme@x`` or ``-f me@x``), ``-o`` options taking the rest of
    the argument (``-oi``, ``-oem``), then recipients.

    :raises UsageError: for a mode other than ``-bm`` (queue listing,
        daemon, SMTP on stdin) or an unknown flag.
    """
    options = SendmailOptions()
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            options.recipients.extend(args[i:])
            break
        if arg == "--spool" or arg.startswith("--spool="):
            if "=" in arg:
                options.spool = arg.split("=", 1)[1]
            elif i < len(args):
                options.spool = args[i]
                i += 1
            else:
                raise UsageError("--spool needs a folder")
            continue
        if not arg.startswith("-") or arg == "-":
            options.recipients.append(arg)
            continue
        letters = arg[1:]
        j = 0
        while j < len(letters):
            flag = letters[j]
            j += 1
            if flag == "t":
                options.extract = True
            elif flag == "i":
                options.ignore_dots = True
            elif flag == "v":
                options.verbose = True
            elif flag in _IGNORED_FLAGS:
                pass
            elif flag == "o":
                rest = letters[j:]
                if not rest:
                    if i >= len(args):
                        raise UsageError("-o needs an option letter")
                    rest = args[i]
                    i += 1
                # -oi is the old spelling of -i; every other -o option (-oem,
                # -odb, -oQ...) tunes the local MTA and does not apply here.
                if rest == "i":
                    options.ignore_dots = True
                break
            elif flag == "b":
                mode = letters[j:] or (args[i] if i < len(args) else "")
                if mode != "m":
                    raise UsageError(
                        f"-b{mode}: only -bm (deliver mail read from stdin) is supported"
                    )
                if not letters[j:]:
                    i += 1
                break
            elif flag in _VALUE_FLAGS:
                value = letters[j:]
                if not value:
                    if i >= len(args):
                        raise UsageError(f"-{flag} needs a value")
                    value = args[i]
                    i += 1
                _sendmail_value(options, flag, value)
                break
            else:
                raise UsageError(f"-{flag}: unknown option")
    return options


def _sendmail_value(options: SendmailOptions, flag: str, value: str) -> None:
    if flag in "fr":
        # "-f <>" and "-f ''" both mean the null sender (RFC 5321 section 4.5.5).
        options.sender = "" if value in ("<>", "") else value.strip("<>")
    elif flag == "F":
        options.full_name = value
    elif flag == "B":
        options.body = value.upper()
    elif flag == "N":
        options.notify = tuple(w.strip().upper() for w in value.split(",") if w.strip())
    elif flag == "R":
        options.ret = value.upper()
    elif flag == "V":
        options.envid = value
    # O, X, h, L, C, p: MTA tuning, logging, hop counts; nothing to do.


def read_sendmail_input(stdin: BinaryIO, *, ignore_dots: bool) -> bytes:
    """
    Read the message from stdin.  Without ``-i``, a line holding a single
    ``.`` ends the input, as in sendmail(1).
    """
    if ignore_dots:
        return stdin.read()
    lines = []
    for line in iter(stdin.readline, b""):
        if line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)


_HEADER_END = re.compile(rb"\r?\n\r?\n")
# RFC 5322 section 2.2: a field name is printable ASCII but the colon.
_FIELD_START = re.compile(rb"[!-9;-~]+[ \t]*:")
_BCC = re.compile(rb"(?i)(resent-)?bcc[ \t]*:")


def _header_fields(message: bytes) -> tuple[list[bytes], bytes]:
    """
    Split a message into its header fields (each with its folded
    continuation lines and line end, RFC 5322 section 2.2.3) and the rest,
    which starts with the blank line before the body.  A message that does
    not start with a header field has no header fields.
    """
    if not _FIELD_START.match(message):
        return [], message
    match = _HEADER_END.search(message)
    if match is None:
        head, rest = message, b""
    else:
        # Keep the last field's line end with the fields.
        cut = match.start() + (2 if message[match.start() : match.start() + 2] == b"\r\n" else 1)
        head, rest = message[:cut], message[cut:]
    fields: list[bytes] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
    return fields, rest


def _parse_fields(fields: list[bytes]) -> list[tuple[str, str]]:
    """
    ``(lowercased name, unfolded value)`` of each header field; values are
    read as UTF-8 (RFC 6532), invalid bytes replaced.
    """
    parsed = []
    for raw in fields:
        name, _, value = raw.partition(b":")
        unfolded = re.sub(rb"\r?\n", b"", value).strip()
        parsed.append(
            (name.strip().decode("ascii", "replace").lower(), unfolded.decode("utf-8", "replace"))
        )
    return parsed


def prepare_sendmail_message(
    message: bytes,
    options: SendmailOptions,
    *,
    default_sender: str,
    hostname: str,
    now: float,
) -> tuple[bytes, str, list[str]]:
    """
    Turn what a program piped to sendmail into what to queue: the envelope
    recipients (the arguments, plus with ``-t`` the To, Cc and Bcc headers,
    or the Resent-* ones where present, RFC 5322 section 3.6.6), Bcc headers
    stripped, and From, Date and Message-ID added if the message lacks them
    (RFC 5322 section 3.6 requires From and Date).  The rest of the message
    is kept byte for byte.

    :returns: ``(message, sender, recipients)``.
    :raises UsageError: if there is no recipient.
    """
    sender = options.sender if options.sender is not None else default_sender
    fields, rest = _header_fields(message)
    headers = _parse_fields(fields)

    def get_all(name: str) -> list[str]:
        return [value for field_name, value in headers if field_name == name.lower()]

    recipients: list[str] = []
    for arg in options.recipients:
        recipients.extend(a for _, a in email.utils.getaddresses([arg]) if a)
    if options.extract:
        resent = any(get_all(h) for h in ("Resent-To", "Resent-Cc", "Resent-Bcc"))
        names = ("Resent-To", "Resent-Cc", "Resent-Bcc") if resent else ("To", "Cc", "Bcc")
        values = [value for name in names for value in get_all(name)]
        recipients.extend(a for _, a in email.utils.getaddresses(values) if a)
    if not recipients:
        raise UsageError("no recipients: give addresses as arguments, or -t with To/Cc/Bcc")
    # Bcc recipients must not be shown to the others (RFC 5322 section
    # 3.6.3); strip the field whether or not -t was given, as Postfix does.
    kept = [f for f in fields if not _BCC.match(f)]
    newline = b"\r\n" if (fields[0] if fields else message).find(b"\r\n") >= 0 else b"\n"
    added: list[bytes] = []
    if not get_all("From"):
        from_value = email.utils.formataddr((options.full_name or "", sender or "MAILER-DAEMON"))
        added.append(b"From: " + from_value.encode("utf-8") + newline)
    if not get_all("Date"):
        added.append(b"Date: " + email.utils.formatdate(now, localtime=True).encode() + newline)
    if not get_all("Message-ID"):
        msgid = email.utils.make_msgid(domain=hostname)
        added.append(b"Message-ID: " + msgid.encode("ascii", "replace") + newline)
    if kept and not kept[-1].endswith(b"\n"):
        kept[-1] += newline
    if not fields:
        # No header block: the whole input is the body.
        rest = newline + rest
    result = b"".join(added) + b"".join(kept) + rest
    return result, sender, list(dict.fromkeys(recipients))


def sendmail_main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """
    The sendmail(1)-compatible entry point (``txsmtp-sendmail``, or
    ``python -m txsmtpclient sendmail``): queue the message on stdin in the
    spool for the daemon to send.

    :returns: 0, 64 for a bad command line or no recipients, 65 for a bad
        address, 75 if the spool's disk is full.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    stdin = sys.stdin.buffer if stdin is None else stdin
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    try:
        options = parse_sendmail_args(argv)
    except UsageError as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_USAGE
    message = read_sendmail_input(stdin, ignore_dots=options.ignore_dots)
    hostname = socket.gethostname()
    try:
        default_sender = f"{getpass.getuser()}@{hostname}"
    except (KeyError, OSError):
        default_sender = f"nobody@{hostname}"
    try:
        message, sender, recipients = prepare_sendmail_message(
            message, options, default_sender=default_sender, hostname=hostname, now=clock()
        )
    except UsageError as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_USAGE
    mail_options: list[str] = []
    if options.body == "8BITMIME" or (options.body is None and _has_8bit(message)):
        mail_options.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (sender, *recipients)):
        mail_options.append("SMTPUTF8")
    dsn = None
    try:
        if options.notify or options.ret or options.envid:
            dsn = Dsn(options.ret, options.envid, options.notify)
        spool = Spool(options.spool or default_spool(environ), clock=clock)
        entry_id = spool.enqueue(message, sender, recipients, mail_options=mail_options, dsn=dsn)
    except EnvelopeError as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_DATAERR
    except SpoolFull as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_TEMPFAIL
    except OSError as e:
        print(f"sendmail: cannot write to the spool: {e}", file=stderr)
        return EX_TEMPFAIL
    if options.verbose:
        print(f"sendmail: queued as {entry_id}", file=stderr)
    return EX_OK


# --- python -m txsmtpclient ------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """
    The argparse parser for ``python -m txsmtpclient``.
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--spool",
        metavar="DIR",
        help="spool folder (default: $TXSMTP_SPOOL, else ~/.local/share/txsmtp/spool)",
    )
    parser = argparse.ArgumentParser(
        prog="python -m txsmtpclient",
        description="Queue mail in a txsmtp spool and inspect the queue; "
        "the `twist txsmtp` daemon sends it.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enqueue = commands.add_parser(
        "enqueue",
        parents=[common],
        help="queue the message on stdin; prints its id",
        description="Queue the message read from stdin (or --message FILE); prints its id.",
    )
    enqueue.add_argument(
        "--from",
        dest="sender",
        required=True,
        metavar="ADDR",
        help="envelope sender ('' for the null sender)",
    )
    enqueue.add_argument(
        "--to",
        dest="recipients",
        action="append",
        required=True,
        metavar="ADDR",
        help="envelope recipient (repeat for more)",
    )
    when = enqueue.add_mutually_exclusive_group()
    when.add_argument(
        "--at", metavar="TIME", help="send at an ISO 8601 time (2030-01-02T09:30+01:00) or HH:MM"
    )
    when.add_argument(
        "--in",
        dest="delay",
        metavar="DURATION",
        help="send after a delay: 90s, 10m, 2h, 1d, PT10M",
    )
    when.add_argument(
        "--cron", metavar="EXPR", help="send on a cron schedule ('0 9 * * mon-fri', '@daily')"
    )
    when.add_argument("--every", metavar="DURATION", help="send now and then every DURATION")
    enqueue.add_argument(
        "--tz",
        metavar="ZONE",
        help="IANA time zone for --at without offset and --cron (default: local time)",
    )
    enqueue.add_argument(
        "--mail-option",
        action="append",
        default=[],
        metavar="PARAM",
        help="ESMTP MAIL FROM parameter, e.g. SMTPUTF8 (repeatable)",
    )
    enqueue.add_argument(
        "--rcpt-option",
        action="append",
        default=[],
        metavar="PARAM",
        help="ESMTP RCPT TO parameter for every recipient (repeatable)",
    )
    enqueue.add_argument(
        "--dsn-notify", metavar="WHEN", help="DSN NOTIFY: NEVER or SUCCESS,FAILURE,DELAY"
    )
    enqueue.add_argument("--dsn-ret", choices=("FULL", "HDRS"), help="DSN RET")
    enqueue.add_argument("--envid", help="DSN ENVID")
    enqueue.add_argument("--message", metavar="FILE", help="read the message from FILE")

    listing = commands.add_parser("list", parents=[common], help="list entries")
    listing.add_argument("--state", choices=[s.value for s in State if s is not State.CORRUPT])
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    show = commands.add_parser(
        "show", parents=[common], help="an entry's envelope, attempts and outcome"
    )
    show.add_argument("id")
    show.add_argument("--json", action="store_true")

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued entry")
    cancel.add_argument("id")
    retry = commands.add_parser(
        "retry", parents=[common], help="make a queued, failed or cancelled entry due now"
    )
    retry.add_argument("id")
    counts = commands.add_parser("counts", parents=[common], help="entries per state")
    counts.add_argument("--json", action="store_true")
    commands.add_parser(
        "sendmail",
        help="sendmail(1)-compatible: [-t] [-i] [-f ADDR] [-F NAME] [recipients...] < message",
        add_help=False,
    )
    return parser


def _entry_json(entry: Entry) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(encode_entry(entry))
    data["state"] = entry.state.value
    return data


def _show(entry: Entry, out: TextIO) -> None:
    rows = [
        ("id", entry.id),
        ("state", entry.state.value),
        ("from", f"<{entry.sender}>"),
        ("created", _when(entry.created)),
        ("due", _when(entry.due)),
        ("size", f"{entry.size} bytes"),
    ]
    if entry.recurrence is not None:
        rows.append(("recurs", f"{entry.recurrence} ({entry.occurrences} sent)"))
    if entry.mail_options:
        rows.append(("mail options", " ".join(entry.mail_options)))
    if entry.rcpt_options:
        rows.append(("rcpt options", " ".join(entry.rcpt_options)))
    if entry.dsn is not None:
        rows.append(
            (
                "dsn",
                f"ret={entry.dsn.ret} envid={entry.dsn.envid} "
                f"notify={','.join(entry.dsn.notify) or '-'}",
            )
        )
    for label, value in rows:
        print(f"{label + ':':14}{value}", file=out)
    print("recipients:", file=out)
    for r in entry.recipients:
        note = f"  {r.reply}" if r.reply else ""
        print(f"  {r.state.value:10}<{r.address}>{note}", file=out)
    print(f"attempts:     {len(entry.attempts)}", file=out)
    for a in entry.attempts:
        code = a.code if a.code is not None else "---"
        qid = f" (queued as {a.queue_id})" if a.queue_id else ""
        print(f"  {_when(a.at)} {a.duration:.2f}s {a.relay} {code} {a.text}{qid}", file=out)
        for address, refusal in a.refused.items():
            print(f"    refused <{address}>: {refusal}", file=out)
    if entry.outcome is not None:
        o = entry.outcome
        qid = f" (queued as {o.queue_id})" if o.queue_id else ""
        code = f"{o.code} " if o.code is not None else ""
        print(f"outcome:      {o.kind.value} {_when(o.at)} {code}{o.text}{qid}", file=out)


def _list_line(entry: Entry) -> str:
    last = entry.attempts[-1] if entry.attempts else None
    last_text = f"{last.code or '---'} {last.text}" if last else "-"
    done = len(entry.recipients) - len(entry.pending)
    return (
        f"{entry.id}  {entry.state.value:9}  {_when(entry.due)}  <{entry.sender}>  "
        f"{done}/{len(entry.recipients)} rcpt  {len(entry.attempts)} att  {last_text}"
    )


def _enqueue(args: argparse.Namespace, spool: Spool, stdin: BinaryIO, now: float) -> str:
    if args.message:
        with open(args.message, "rb") as f:
            message = f.read()
    else:
        message = stdin.read()
    at: float | None = None
    recurrence = None
    if args.at:
        at = parse_time(args.at, now=now, timezone=args.tz).timestamp()
    elif args.delay:
        at = now + parse_duration(args.delay)
    elif args.cron:
        recurrence = parse_recurrence(args.cron, args.tz)
    elif args.every:
        recurrence = parse_recurrence(f"every {args.every}", args.tz)
    mail_options = list(args.mail_option)
    if _has_8bit(message) and not any(o.upper().startswith("BODY=") for o in mail_options):
        mail_options.append("BODY=8BITMIME")
    dsn = None
    if args.dsn_notify or args.dsn_ret or args.envid:
        notify = tuple(w.strip() for w in (args.dsn_notify or "").split(",") if w.strip())
        dsn = Dsn(args.dsn_ret, args.envid, notify)
    return spool.enqueue(
        message,
        args.sender,
        args.recipients,
        mail_options=mail_options,
        rcpt_options=args.rcpt_option,
        dsn=dsn,
        at=at,
        recurrence=recurrence,
    )


def main(
    argv: Sequence[str] | None = None,
    *,
    stdin: BinaryIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """
    Run ``python -m txsmtpclient`` with these arguments.

    :param argv: the arguments after the program name (default
        ``sys.argv[1:]``).
    :param stdin: where messages are read (binary; default stdin).
    :param stdout: where results are printed.
    :param stderr: where errors are printed.
    :param environ: the environment (``TXSMTP_SPOOL``).
    :param clock: the current time in epoch seconds.
    :returns: the exit status: 0, 1 (no such entry or wrong state), 2
        (argparse usage), 64/65/75 as sendmail(1).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    if argv[:1] == ["sendmail"]:
        return sendmail_main(argv[1:], stdin=stdin, stderr=stderr, environ=environ, clock=clock)
    parser = build_parser()
    try:
        # argparse prints usage and --help to sys.stderr / sys.stdout.
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EX_USAGE
    spool = Spool(args.spool or default_spool(environ), clock=clock)
    try:
        return _dispatch(args, spool, stdin, stdout, clock)
    except EntryNotFound as e:
        print(f"error: {e}", file=stderr)
        return EX_NOTFOUND
    except (EntryBusy, EntryStateError) as e:
        print(f"error: {e}", file=stderr)
        return EX_NOTFOUND
    except (EnvelopeError, ScheduleError) as e:
        print(f"error: {e}", file=stderr)
        return EX_DATAERR
    except SpoolFull as e:
        print(f"error: {e}", file=stderr)
        return EX_TEMPFAIL
    except SpoolError as e:
        print(f"error: {e}", file=stderr)
        return EX_SOFTWARE
    except OSError as e:
        print(f"error: {e}", file=stderr)
        return EX_TEMPFAIL


def _dispatch(
    args: argparse.Namespace,
    spool: Spool,
    stdin: BinaryIO,
    stdout: TextIO,
    clock: Callable[[], float],
) -> int:
    command: str = args.command
    if command == "enqueue":
        print(_enqueue(args, spool, stdin, clock()), file=stdout)
    elif command == "list":
        entries: Iterable[Entry] = spool.list(State(args.state) if args.state else None)
        for entry in entries:
            if args.json:
                print(json.dumps(_entry_json(entry), ensure_ascii=False), file=stdout)
            else:
                print(_list_line(entry), file=stdout)
    elif command == "show":
        entry = spool.get(args.id)
        if args.json:
            print(json.dumps(_entry_json(entry), ensure_ascii=False, indent=2), file=stdout)
        else:
            _show(entry, stdout)
    elif command == "cancel":
        entry = spool.cancel(args.id)
        print(f"cancelled {entry.id}", file=stdout)
    elif command == "retry":
        entry = spool.retry(args.id)
        print(f"queued {entry.id}, due {_when(entry.due)}", file=stdout)
    elif command == "counts":
        counts = spool.counts()
        if args.json:
            print(json.dumps(counts), file=stdout)
        else:
            for state, count in counts.items():
                print(f"{state:10}{count}", file=stdout)
    return EX_OK
