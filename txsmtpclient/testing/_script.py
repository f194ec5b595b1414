"""
How a scripted test server behaves: its extensions, credentials and, per
command, the reply to give, the delay before it, and the fault to inject.

Sans-IO: plain values; :mod:`._server` plays them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["CONNECT", "DATA_END", "DEFAULT_EXTENSIONS", "Rule", "Script"]

#: The pseudo-command of the greeting, sent when a client connects.
CONNECT = "CONNECT"
#: The pseudo-command of the end of a message: the final dot after DATA, or
#: ``BDAT ... LAST``.
DATA_END = "DATA_END"

#: What the server advertises unless told otherwise (STARTTLS and AUTH are
#: added when a certificate or credentials are given).
DEFAULT_EXTENSIONS: tuple[str, ...] = (
    "PIPELINING",
    "SIZE 10485760",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "CHUNKING",
    "DSN",
)


@dataclass(slots=True)
class Rule:
    """
    What to do, once or every time, when a command arrives.

    :ivar command: the verb (``"MAIL"``, ``"RCPT"``, ``"DATA"``, ``"BDAT"``,
        ``"EHLO"`` ...), :data:`CONNECT` for the greeting or :data:`DATA_END`
        for the reply to the end of a message.
    :ivar reply: the reply to give instead of the server's own, as the lines
        go on the wire without their CRLF: ``"550 5.1.1 no such user"``, or
        several lines separated by ``"\\n"`` (``"250-first\\n250 last"``).
        ``None`` keeps the server's own reply.
    :ivar match: apply only when the command's argument contains this text
        (case-insensitive), such as an address.
    :ivar delay: seconds to wait (on the server's clock) before replying.
    :ivar disconnect: close the connection: after the reply if there is one,
        else instead of replying (with :data:`DATA_END`: drop the connection
        after the final dot, before any reply).
    :ivar before: raw bytes to send before the reply (unsolicited or
        premature replies: with :data:`CONNECT`, bytes that follow the
        greeting before any command was written).
    :ivar after: raw bytes to send after the reply.
    :ivar times: how many times the rule applies; ``None`` for always.
    """

    command: str
    reply: str | None = None
    match: str | None = None
    delay: float = 0.0
    disconnect: bool = False
    before: bytes = b""
    after: bytes = b""
    times: int | None = None
    #: How many times the rule has applied so far.
    used: int = 0

    def __post_init__(self) -> None:
        self.command = self.command.upper()
        if self.reply is not None:
            for line in self.reply.split("\n"):
                if len(line) < 3 or not line[:3].isdigit() or any(c in line for c in "\r\0"):
                    raise ValueError(f"reply line {line!r} must start with a 3-digit code")
        if self.delay < 0:
            raise ValueError(f"delay must not be negative, not {self.delay!r}")

    def applies(self, command: str, argument: str) -> bool:
        """
        Whether the rule applies to this command now.
        """
        if command != self.command or (self.times is not None and self.used >= self.times):
            return False
        return self.match is None or self.match.lower() in argument.lower()


@dataclass(slots=True)
class Script:
    """
    A scripted server's behaviour; change it any time, it is read as each
    command arrives.

    :ivar hostname: the name in the greeting and the EHLO reply.
    :ivar extensions: the EHLO keywords advertised, in order.
    :ivar rules: the rules, first match wins (see :meth:`on`).
    :ivar credentials: user name -> password accepted by ``AUTH PLAIN`` and
        ``AUTH LOGIN``; ``None`` advertises no AUTH.
    :ivar auth_without_tls: offer AUTH before STARTTLS (off by default, as
        real submission servers do; a server with no certificate always
        offers it when credentials are given).
    :ivar lmtp: speak LMTP (RFC 2033): LHLO, and one reply per accepted
        recipient after the message.
    """

    hostname: str = "mx.txsmtp.test"
    extensions: list[str] = field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    rules: list[Rule] = field(default_factory=list)
    credentials: dict[str, str] | None = None
    auth_without_tls: bool = False
    lmtp: bool = False

    def on(
        self,
        command: str,
        reply: str | None = None,
        *,
        match: str | None = None,
        delay: float = 0.0,
        disconnect: bool = False,
        before: bytes = b"",
        after: bytes = b"",
        times: int | None = None,
    ) -> Rule:
        """
        Add a rule for ``command`` (see :class:`Rule` for each argument) and
        return it.  Rules added first are tried first.

        :raises ValueError: for a reply line without a 3-digit code, a CR or
            NUL in a reply, or a negative delay.
        """
        rule = Rule(command, reply, match, delay, disconnect, before, after, times)
        self.rules.append(rule)
        return rule

    def advertise(self, *keywords: str) -> None:
        """
        Add EHLO keywords (``"DSN"``, ``"SIZE 1000"``), replacing one of the
        same name.
        """
        self.withhold(*(k.split()[0] for k in keywords))
        self.extensions.extend(keywords)

    def withhold(self, *names: str) -> None:
        """
        Stop advertising the named extensions (``"PIPELINING"``).
        """
        drop = {n.upper() for n in names}
        self.extensions = [e for e in self.extensions if e.split()[0].upper() not in drop]

    def advertises(self, name: str) -> bool:
        """
        Whether an extension is advertised.
        """
        return any(e.split()[0].upper() == name.upper() for e in self.extensions)

    def rule_for(self, command: str, argument: str) -> Rule | None:
        """
        The first rule that applies (and count it as used), or ``None``.
        """
        for rule in self.rules:
            if rule.applies(command, argument):
                rule.used += 1
                return rule
        return None

    @staticmethod
    def lines(reply: str | Sequence[str]) -> bytes:
        """
        A reply's wire form: each line with CRLF.
        """
        parts = reply.split("\n") if isinstance(reply, str) else list(reply)
        return "".join(p + "\r\n" for p in parts).encode("utf-8")
