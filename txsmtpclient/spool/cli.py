"""
The command line: ``python -m txsmtpclient enqueue | list | show | cancel |
retry | hold | release | counts | sendmail | demo``.  The ``sendmail`` command and the
``txsmtp-sendmail`` console script are :mod:`.sendmail`'s, re-exported here;
``demo`` is :mod:`txsmtpclient.demo`'s (run by :mod:`txsmtpclient.__main__`).

The spool folder is ``--spool DIR``, else the ``TXSMTP_SPOOL`` environment
variable, else ``$XDG_DATA_HOME/txsmtp/spool`` (``~/.local/share/txsmtp/spool``
when ``XDG_DATA_HOME`` is unset).

Exit codes follow sysexits(3) where sendmail users expect them: 0 success,
1 no such entry or wrong state, 64 usage, 65 bad message or envelope, 66 no
spool at the path (or no such message file), 70 unreadable entry, 73 the
spool cannot be created there, 75 temporary failure (disk full).  Every
error is one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, BinaryIO, TextIO, cast

import txsmtpclient
from txsmtpclient.spool.codec import entry_json
from txsmtpclient.spool.envelope import Dsn, Entry, EnvelopeError, State
from txsmtpclient.spool.postgres_schema import QueueDatabaseError, QueueUnavailable
from txsmtpclient.spool.queue import (
    EntryBusy,
    EntryNotFound,
    EntryStateError,
    IQueue,
    SpoolError,
    SpoolFull,
)
from txsmtpclient.spool.schedule import (
    ScheduleError,
    parse_duration,
    parse_recurrence,
    parse_time,
)
from txsmtpclient.spool.sendmail import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_NOPERM,
    EX_NOTFOUND,
    EX_OK,
    EX_SOFTWARE,
    EX_TEMPFAIL,
    EX_USAGE,
    SendmailOptions,
    UsageError,
    default_spool,
    parse_sendmail_args,
    prepare_sendmail_message,
    read_sendmail_input,
    reader_gone,
    sendmail_main,
)
from txsmtpclient.spool.store import Spool

__all__ = [
    "EX_DATAERR",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "CommandParser",
    "SendmailOptions",
    "UsageError",
    "build_parser",
    "default_spool",
    "main",
    "parse_sendmail_args",
    "prepare_sendmail_message",
    "read_sendmail_input",
    "sendmail_main",
]


#: sysexits(3): the configuration (here the queue database) is wrong.
EX_CONFIG = 78


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


class CommandError(Exception):
    """
    A command that cannot be done, with the sysexits(3) code to exit with.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class CommandParser(argparse.ArgumentParser):
    """
    argparse with one-line errors and the sysexits usage code (64), for
    every ``python -m txsmtpclient`` command (``demo`` too).
    """

    def error(self, message: str) -> Any:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EX_USAGE)


# --- python -m txsmtpclient ------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """
    The argparse parser for ``python -m txsmtpclient``.
    """
    common = CommandParser(add_help=False)
    common.add_argument(
        "--spool",
        metavar="DIR",
        help="spool folder (default: $TXSMTP_SPOOL, else ~/.local/share/txsmtp/spool)",
    )
    common.add_argument(
        "--queue",
        metavar="URL",
        help="a PostgreSQL queue (postgresql://user@host/db) instead of the spool folder; "
        "the password belongs in ~/.pgpass or $PGPASSWORD (default: $TXSMTP_QUEUE)",
    )
    parser = CommandParser(
        prog="python -m txsmtpclient",
        description="Queue mail in a txsmtp spool and inspect the queue; "
        "the `twist txsmtp` daemon sends it.",
    )
    parser.add_argument(
        "--version", action="version", version=f"txsmtpclient {txsmtpclient.__version__}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enqueue = commands.add_parser(
        "enqueue",
        parents=[common],
        help="queue the message on stdin; prints its id and due time",
        description="Queue the message read from stdin (or --message FILE); prints its id "
        "and when it is due.",
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

    listing = commands.add_parser(
        "list",
        parents=[common],
        help="list entries",
        description="List entries, one a line under a header: id, state, when due (queued "
        "or held) or finished, sender, recipients sent/failed/pending, attempts so far, "
        "and the last attempt's reply ('-': none yet; 'no reply': the connection "
        "failed; 'ambiguous': sent, but no reply to the end of the message came). "
        "--state corrupt lists the files set aside, with the reason.",
    )
    listing.add_argument("--state", choices=[s.value for s in State])
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    show = commands.add_parser(
        "show", parents=[common], help="an entry's envelope, attempts and outcome"
    )
    show.add_argument("id")
    show.add_argument("--json", action="store_true")

    cancel = commands.add_parser("cancel", parents=[common], help="cancel a queued entry")
    cancel.add_argument("id")
    retry = commands.add_parser(
        "retry", parents=[common], help="make a queued, held, failed or cancelled entry due now"
    )
    retry.add_argument("id")
    hold = commands.add_parser(
        "hold", parents=[common], help="hold a queued entry: never sent until released"
    )
    hold.add_argument("id")
    release = commands.add_parser(
        "release", parents=[common], help="return a held entry to the queue"
    )
    release.add_argument("id")
    counts = commands.add_parser("counts", parents=[common], help="entries per state")
    counts.add_argument("--json", action="store_true")
    commands.add_parser(
        "migrate",
        parents=[common],
        help="create or update the --queue database's schema",
        description="Apply the schema migrations the --queue database lacks.",
    )
    commands.add_parser(
        "sendmail",
        help="sendmail(1)-compatible: [-t] [-i] [-f ADDR] [-F NAME] [recipients...] < message",
        add_help=False,
    )
    # Run by txsmtpclient.__main__ before this parser; listed for --help.
    commands.add_parser(
        "demo",
        help="watch the daemon deliver a scheduled message to a local sink "
        "(python -m txsmtpclient demo --help)",
        add_help=False,
    )
    return parser


def _entry_json(entry: Entry) -> dict[str, Any]:
    return entry_json(entry)


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
        code = a.code if a.code is not None else "no reply"
        qid = _queue_id_note(a.queue_id, a.text)
        print(f"  {_when(a.at)} {a.duration:.2f}s {a.relay} {code} {a.text}{qid}", file=out)
        if a.ambiguous:
            print(
                "    AMBIGUOUS: the message was sent but no reply to its end came; "
                "the relay may have taken it, so a later attempt may deliver it twice",
                file=out,
            )
        for address, refusal in a.refused.items():
            print(f"    refused <{address}>: {refusal}", file=out)
    if entry.state is State.HELD:
        print(
            "held:         kept back, never sent from here; 'retry ID' queues it again, "
            "'cancel' is not possible until then",
            file=out,
        )
    if entry.outcome is not None:
        o = entry.outcome
        qid = _queue_id_note(o.queue_id, o.text)
        code = f"{o.code} " if o.code is not None else ""
        print(f"outcome:      {o.kind.value} {_when(o.at)} {code}{o.text}{qid}", file=out)


def _queue_id_note(queue_id: str | None, text: str) -> str:
    # The relay's reply usually names its queue id already ("queued as X").
    return f" (queued as {queue_id})" if queue_id and queue_id not in text else ""


_LIST_HEADER = (
    f"{'ID':28}  {'STATE':9}  {'DUE/FINISHED':25}  {'SENDER':24}  "
    f"{'RCPT S/F/P':10}  {'TRIES':5}  LAST REPLY"
)
_LIST_LEGEND = (
    "RCPT S/F/P: recipients sent / failed / pending; TRIES: delivery attempts; "
    "LAST REPLY: the last attempt's reply ('no reply': the connection failed; "
    "'ambiguous': sent, but no reply to the end came); '-': none"
)


def _list_line(entry: Entry) -> str:
    last = entry.attempts[-1] if entry.attempts else None
    if last is None:
        last_text = "-"
    elif last.ambiguous:
        last_text = f"ambiguous: {last.text}"
    else:
        last_text = f"{last.code if last.code is not None else 'no reply'} {last.text}"
    finished = entry.state in (State.DONE, State.FAILED, State.CANCELLED)
    when = entry.outcome.at if finished and entry.outcome is not None else entry.due
    rcpt = f"{len(entry.delivered)}/{len(entry.failed)}/{len(entry.pending)}"
    return (
        f"{entry.id:28}  {entry.state.value:9}  {_when(when):25}  {'<' + entry.sender + '>':24}  "
        f"{rcpt:10}  {len(entry.attempts):<5}  {last_text}"
    )


def _enqueue(args: argparse.Namespace, spool: IQueue, stdin: BinaryIO, now: float) -> str:
    if args.message:
        try:
            with open(args.message, "rb") as f:
                message = f.read()
        except OSError as e:
            raise CommandError(
                f"--message: cannot read {args.message}: {e.strerror or e}", EX_NOINPUT
            ) from None
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
    if recurrence is not None:
        try:
            recurrence.next_after(now)
        except ScheduleError as e:
            raise CommandError(f"--cron: {e}", EX_USAGE) from None
    mail_options = list(args.mail_option)
    if not message.isascii() and not any(o.upper().startswith("BODY=") for o in mail_options):
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


#: What each error exits with, the first match winning (SpoolFull is both a
#: SpoolError and an OSError).
_EXIT_CODES: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int], ...] = (
    ((EntryNotFound, EntryBusy, EntryStateError), EX_NOTFOUND),
    ((EnvelopeError, ScheduleError), EX_DATAERR),
    (SpoolFull, EX_TEMPFAIL),
    (QueueUnavailable, EX_TEMPFAIL),
    (QueueDatabaseError, EX_CONFIG),
    (SpoolError, EX_SOFTWARE),
    (PermissionError, EX_NOPERM),
    (OSError, EX_TEMPFAIL),
)

#: Commands on existing entries: they never create a spool where there is none.
_NEEDS_SPOOL = frozenset({"list", "show", "counts", "cancel", "retry", "hold", "release"})


def _open_spool(path: str, *, create: bool, clock: Callable[[], float]) -> Spool:
    """
    The spool at ``path``; created only if ``create``.

    :raises CommandError: no spool there (66), or it cannot be made (73).
    """
    if not create and not os.path.isdir(os.path.join(path, State.QUEUED.value)):
        raise CommandError(
            f"no spool at {path} (give --spool DIR or set TXSMTP_SPOOL)", EX_NOINPUT
        )
    try:
        return Spool(path, clock=clock)
    except OSError as e:
        raise CommandError(
            f"cannot open a spool at {path}: {e.strerror or e}", EX_CANTCREAT
        ) from None


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
        return sendmail_main(
            argv[1:], stdin=stdin, stdout=stdout, stderr=stderr, environ=environ, clock=clock
        )
    parser = build_parser()
    try:
        # argparse prints usage and --help to sys.stderr / sys.stdout.
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
            args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EX_USAGE
    spool: IQueue | None = None
    try:
        spool = _open_queue(args, environ, clock, stdout)
        if spool is None:
            return EX_OK
        return _dispatch(args, spool, stdin, stdout, clock)
    except CommandError as e:
        print(f"error: {e}", file=stderr)
        return e.exit_code
    except BrokenPipeError:
        # The reader went away ("list | head").
        reader_gone(stdout)
        return EX_OK
    except (SpoolError, EnvelopeError, ScheduleError, OSError) as e:
        print(f"error: {_error_line(e, spool)}", file=stderr)
        return next(code for kinds, code in _EXIT_CODES if isinstance(e, kinds))
    finally:
        # A database queue holds connections; the spool folder has nothing to close.
        close = getattr(spool, "close", None)
        if close is not None:
            close()


def _error_line(error: Exception, spool: IQueue | None) -> str:
    """A system error names the spool and the reason, not ``[Errno 13] ...: 'a' -> 'b'``."""
    path = getattr(spool, "path", None)
    if not isinstance(error, OSError) or isinstance(error, SpoolError) or path is None:
        return str(error)
    if isinstance(error, PermissionError):
        return f"cannot write to the spool at {path}: {error.strerror} (run as its owner)"
    return f"cannot use the spool at {path}: {error.strerror or error}"


def _open_queue(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    clock: Callable[[], float],
    stdout: TextIO,
) -> IQueue | None:
    """
    The spool folder, or the ``--queue`` database (checked first, so a wrong
    URL, password or schema is one line); ``None`` once ``migrate`` is done.

    :raises QueueDatabaseError: if the database cannot be used.
    """
    url = args.queue or environ.get("TXSMTP_QUEUE")
    if args.command == "migrate" and not url:
        raise CommandError("migrate needs --queue URL (or $TXSMTP_QUEUE)", EX_USAGE)
    if not url:
        path = args.spool or default_spool(environ)
        return _open_spool(path, create=args.command not in _NEEDS_SPOOL, clock=clock)
    from txsmtpclient.spool.postgres_schema import is_queue_url, open_checked

    if not is_queue_url(url):
        raise QueueDatabaseError("--queue: expected a URL such as postgresql://user@host/db")
    applied = open_checked(url, apply_migrations=args.command == "migrate")
    if args.command == "migrate":
        done = ", ".join(map(str, applied)) if applied else "none needed"
        print(f"migrations applied: {done}", file=stdout)
        return None
    from txsmtpclient.spool.postgres import PostgresQueue

    queue = PostgresQueue(url, clock=clock, reconnect_for=10.0, max_connections=2)
    # PostgresQueue.due already returns ids, as IQueue.due will (spoolperf).
    return cast(IQueue, queue)


def _dispatch(
    args: argparse.Namespace,
    spool: IQueue,
    stdin: BinaryIO,
    stdout: TextIO,
    clock: Callable[[], float],
) -> int:
    command: str = args.command
    if command == "enqueue":
        entry_id = _enqueue(args, spool, stdin, clock())
        print(f"{entry_id} due {_when(spool.get(entry_id).due)}", file=stdout)
    elif command == "list" and args.state == State.CORRUPT.value:
        if not isinstance(spool, Spool):
            # A database queue keeps unreadable entries out of its rows.
            raise CommandError("--state corrupt lists the spool folder's corrupt/ files", EX_USAGE)
        corrupt = spool.corrupt()
        if not args.json:
            print("FILE SET ASIDE: REASON", file=stdout)
        for path, reason in corrupt:
            if args.json:
                print(json.dumps({"path": path, "reason": reason}), file=stdout)
            else:
                print(f"{path}: {reason}", file=stdout)
    elif command == "list":
        entries: Iterable[Entry] = spool.list(State(args.state) if args.state else None)
        if not args.json:
            print(_LIST_HEADER, file=stdout)
        for entry in entries:
            if args.json:
                print(json.dumps(_entry_json(entry), ensure_ascii=False), file=stdout)
            else:
                print(_list_line(entry), file=stdout)
        if not args.json:
            print(_LIST_LEGEND, file=stdout)
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
    elif command == "hold":
        entry = spool.hold(args.id)
        print(f"held {entry.id}", file=stdout)
    elif command == "release":
        entry = spool.unhold(args.id)
        print(f"queued {entry.id}, due {_when(entry.due)}", file=stdout)
    elif command == "counts":
        counts = spool.counts()
        if args.json:
            print(json.dumps(counts), file=stdout)
        else:
            for state, count in counts.items():
                print(f"{state:10}{count}", file=stdout)
    return EX_OK
