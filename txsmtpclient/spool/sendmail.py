"""
The sendmail(1)-compatible entry point: ``txsmtp-sendmail`` (or ``python -m
txsmtpclient sendmail``) reads a message on stdin the way Postfix's and
Sendmail's ``sendmail`` do and queues it in the spool for the daemon.

The spool folder is ``--spool DIR``, else the ``TXSMTP_SPOOL`` environment
variable, else ``$XDG_DATA_HOME/txsmtp/spool`` (``~/.local/share/txsmtp/spool``
when ``XDG_DATA_HOME`` is unset).  Exit codes follow sysexits(3), as sendmail
users expect: 0 success, 64 usage, 65 bad message or envelope, 75 temporary
failure (disk full).  The exit codes and :func:`default_spool` serve
:mod:`.cli` too.
"""

from __future__ import annotations

import email.utils
import getpass
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

from txsmtpclient.spool.envelope import Dsn, EnvelopeError
from txsmtpclient.spool.queue import SpoolFull
from txsmtpclient.spool.store import Spool

__all__ = [
    "EX_DATAERR",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "SENDMAIL_USAGE",
    "SendmailOptions",
    "UsageError",
    "default_spool",
    "parse_sendmail_args",
    "prepare_sendmail_message",
    "read_sendmail_input",
    "reader_gone",
    "sendmail_main",
]

EX_OK = 0
EX_NOTFOUND = 1
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


def reader_gone(stream: TextIO) -> None:
    """
    After a ``BrokenPipeError`` writing to ``stream`` (``... | head``): when
    it is the process's stdout, point that at /dev/null so Python's own
    flush at exit does not fail again.  Callers then stop quietly, as cat
    does.
    """
    if stream is sys.stdout:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


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
    :ivar help: ``--help``, or ``-h`` without a hop count: print the usage.
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
    help: bool = False


#: What ``txsmtp-sendmail --help`` prints.
SENDMAIL_USAGE = """\
usage: txsmtp-sendmail [-t] [-i] [-f ADDR] [-F NAME] [-N NOTIFY] [-R RET] [-V ENVID]
                       [-B 8BITMIME|7BIT] [-v] [--spool DIR] [recipient ...] < message

Queue the message on stdin in the txsmtp spool for the `twist txsmtp` daemon,
as sendmail(1) does.

  -t            also send to the To, Cc and Bcc recipients (Bcc is removed)
  -i, -oi       a line with a single dot does not end the message
  -f ADDR       envelope sender ('<>' for the null sender); -r is the same
  -F NAME       full name for the From header added when the message has none
  -N NOTIFY     DSN NOTIFY: NEVER, or SUCCESS,FAILURE,DELAY
  -R RET        DSN RET: FULL or HDRS
  -V ENVID      DSN ENVID
  -B TYPE       body type: 8BITMIME or 7BIT
  -v            print the queued id on stderr
  --spool DIR   the spool (default: $TXSMTP_SPOOL, else ~/.local/share/txsmtp/spool)
  -h, --help    show this help

Other sendmail flags (-oX, -m, -n, -U, -G, -d, -e, -O, -X, -L, -C, -p, -h N)
are accepted and ignored; -bm is the only mode.  Exit codes follow sysexits(3):
0 queued, 64 usage, 65 bad address or message, 73 spool cannot be created,
75 try again later (disk full), 77 no permission.
"""


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
        # "-h N" is sendmail's hop count; "-h" alone asks for help.
        if arg == "--help" or (arg == "-h" and not (i < len(args) and args[i].isdigit())):
            options.help = True
            continue
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
        if arg.startswith("--"):
            raise UsageError(f"{arg}: unknown option")
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
        if options.body not in ("8BITMIME", "7BIT"):
            # Postfix refuses it too ("-B option needs 8BITMIME or 7BIT").
            raise UsageError(f"-B {value}: expected 8BITMIME or 7BIT")
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
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """
    The sendmail(1)-compatible entry point (``txsmtp-sendmail``, or
    ``python -m txsmtpclient sendmail``): queue the message on stdin in the
    spool for the daemon to send.

    :returns: 0, 64 for a bad command line or no recipients, 65 for a bad
        address, 73 if the spool cannot be created, 75 if the spool's disk
        is full, 77 without permission to write to it.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    environ = os.environ if environ is None else environ
    try:
        options = parse_sendmail_args(argv)
    except UsageError as e:
        print(f"sendmail: {e} (see --help)", file=stderr)
        return EX_USAGE
    if options.help:
        try:
            print(SENDMAIL_USAGE, end="", file=stdout, flush=True)
        except BrokenPipeError:
            reader_gone(stdout)
        return EX_OK
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
    if options.body == "8BITMIME" or (options.body is None and not message.isascii()):
        mail_options.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (sender, *recipients)):
        mail_options.append("SMTPUTF8")
    dsn = None
    try:
        if options.notify or options.ret or options.envid:
            dsn = Dsn(options.ret, options.envid, options.notify)
    except EnvelopeError as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_DATAERR
    path = options.spool or default_spool(environ)
    try:
        spool = Spool(path, clock=clock)
    except OSError as e:
        print(f"sendmail: cannot open a spool at {path}: {e.strerror or e}", file=stderr)
        return EX_NOPERM if isinstance(e, PermissionError) else EX_CANTCREAT
    try:
        entry_id = spool.enqueue(message, sender, recipients, mail_options=mail_options, dsn=dsn)
    except EnvelopeError as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_DATAERR
    except SpoolFull as e:
        print(f"sendmail: {e}", file=stderr)
        return EX_TEMPFAIL
    except PermissionError as e:
        print(f"sendmail: cannot write to the spool at {path}: {e.strerror}", file=stderr)
        return EX_NOPERM
    except OSError as e:
        print(f"sendmail: cannot write to the spool at {path}: {e.strerror or e}", file=stderr)
        return EX_TEMPFAIL
    if options.verbose:
        print(f"sendmail: queued as {entry_id}", file=stderr)
    return EX_OK
