"""
The scripted SMTP/LMTP server protocol behind :class:`~.MemoryServer` and
:class:`~.LoopbackServer`: a small, strict RFC 5321 server that records every
byte and follows a :class:`~._script.Script`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from txsmtpclient.testing._record import ReceivedMessage, ServerSession
from txsmtpclient.testing._script import CONNECT, DATA_END, Rule, Script

__all__ = ["ScriptedServerFactory", "ScriptedServerProtocol"]

#: Longest command line the server takes (RFC 5321 section 4.5.3.1.4 is 512;
#: ESMTP parameters allow more, RFC 1869 section 4.1.2).
_MAX_LINE = 4096
_queue_ids = itertools.count(1)


def _path(argument: str, prefix: str) -> str | None:
    """The address in ``FROM:<a@b> ...`` / ``TO:<a@b> ...``, or ``None``."""
    if argument[: len(prefix)].upper() != prefix:
        return None
    rest = argument[len(prefix) :].lstrip()
    if not rest.startswith("<"):
        return None
    end = rest.find(">")
    return None if end < 0 else rest[1:end]


class ScriptedServerProtocol(Protocol):
    """
    One server connection.  Commands are read line by line; message content
    after DATA up to the final dot, and BDAT chunks by their byte count.
    Replies go out as the script says, after its delay on ``clock``.
    """

    log = Logger()

    def __init__(
        self,
        script: Script,
        session: ServerSession,
        clock: IReactorTime,
        tls_options: Any = None,
        on_message: Callable[[ReceivedMessage], None] | None = None,
    ) -> None:
        self.script = script
        self.session = session
        self.clock = clock
        self.tls_options = tls_options
        self.on_message = on_message
        self._buffer = b""
        self._data: list[bytes] | None = None
        self._bdat_left = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_chunks: list[bytes] = []
        self._auth: str | None = None
        self._auth_user: str | None = None
        self._reset()
        # Replies wait for one another: a delayed reply holds back the next.
        self._busy_until = 0.0

    def _reset(self) -> None:
        self._mail_from: str | None = None
        self._mail_args = ""
        self._rcpts: list[tuple[str, str]] = []
        self._bdat_chunks = []

    # -- output -------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """
        Write raw bytes to the client now (an unsolicited reply, say).
        """
        if self.transport is not None and not self.session.closed:
            self.session.sent += data
            self.transport.write(data)

    def _respond(
        self,
        command: str,
        argument: str,
        default: str,
        after_sent: Callable[[int], None] | None = None,
    ) -> None:
        """
        Answer ``command`` with the script's rule or ``default``, then call
        ``after_sent`` with the code given.
        """
        rule: Rule | None = self.script.rule_for(command, argument)
        reply = default if rule is None or rule.reply is None else rule.reply
        disconnect = rule is not None and rule.disconnect
        silent = disconnect and (rule is None or rule.reply is None)
        code = int(reply[:3])

        def go() -> None:
            if self.session.closed:
                return
            if rule is not None and rule.before:
                self.send(rule.before)
            if not silent:
                self.send(Script.lines(reply))
            if rule is not None and rule.after:
                self.send(rule.after)
            if silent or disconnect or code == 421:
                # RFC 5321 section 3.8: a 421 means the server is closing.
                self._close()
                return
            if after_sent is not None:
                after_sent(code)

        delay = 0.0 if rule is None else rule.delay
        now = self.clock.seconds()
        start = max(now + delay, self._busy_until)
        if start <= now:
            go()
        else:
            self._busy_until = start
            self.clock.callLater(start - now, go)

    def _close(self) -> None:
        if self.transport is not None and not self.session.closed:
            self.transport.loseConnection()

    # -- connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        kind = "LMTP" if self.script.lmtp else "ESMTP"
        self._respond(CONNECT, "", f"220 {self.script.hostname} {kind} txsmtpclient.testing")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.session.closed = True

    def dataReceived(self, data: bytes) -> None:
        if self.session.closed:
            return
        self.session.received += data
        self._buffer += data
        while self._buffer and not self.session.closed:
            if self._bdat_left:
                chunk = self._buffer[: self._bdat_left]
                self._buffer = self._buffer[len(chunk) :]
                self._bdat_chunks.append(chunk)
                self._bdat_left -= len(chunk)
                if not self._bdat_left:
                    self._bdat_done()
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > _MAX_LINE and self._data is None:
                    self._respond("LINE", "", "500 5.5.2 line too long", None)
                    self._buffer = b""
                return
            line, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            if self._data is not None:
                self._data_line(line)
            else:
                self._command(line)

    # -- commands -----------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        self.session.commands.append(line)
        if self._auth is not None:
            self._auth_step(line)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._respond("LINE", "", "500 5.5.2 not UTF-8")
            return
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        handler = getattr(self, f"_do_{verb.lower()}", None)
        if handler is None:
            self._respond(verb, argument, "500 5.5.1 command not recognized")
            return
        handler(verb, argument)

    def _hello(self, verb: str, argument: str) -> None:
        if not argument:
            self._respond(verb, argument, "501 5.5.4 a name is required")
            return
        self.session.helo = argument
        self._reset()
        if verb == "HELO":
            self._respond(verb, argument, f"250 {self.script.hostname}")
            return
        keywords = list(self.script.extensions)
        if self.tls_options is not None and not self.session.tls:
            keywords.append("STARTTLS")
        if self.script.credentials is not None and (
            self.session.tls or self.tls_options is None or self.script.auth_without_tls
        ):
            keywords.append("AUTH PLAIN LOGIN")
        lines = [f"{self.script.hostname} greets {argument}", *keywords]
        text = "\n".join(
            f"250{'-' if i < len(lines) - 1 else ' '}{line}" for i, line in enumerate(lines)
        )
        self._respond(verb, argument, text)

    def _do_ehlo(self, verb: str, argument: str) -> None:
        if self.script.lmtp:
            self._respond(verb, argument, "500 5.5.1 LMTP: say LHLO")
        else:
            self._hello(verb, argument)

    def _do_helo(self, verb: str, argument: str) -> None:
        self._do_ehlo(verb, argument)

    def _do_lhlo(self, verb: str, argument: str) -> None:
        if self.script.lmtp:
            self._hello("EHLO", argument)
        else:
            self._respond(verb, argument, "500 5.5.1 command not recognized")

    def _do_mail(self, verb: str, argument: str) -> None:
        address = _path(argument, "FROM:")
        if self.session.helo is None:
            default = "503 5.5.1 say EHLO first"
        elif self._mail_from is not None:
            default = "503 5.5.1 nested MAIL"
        elif address is None:
            default = "501 5.5.4 syntax: MAIL FROM:<address>"
        else:
            default = "250 2.1.0 sender ok"

        def accepted(code: int) -> None:
            if 200 <= code < 300 and address is not None:
                self._mail_from, self._mail_args = address, argument

        self._respond(verb, argument, default, accepted)

    def _do_rcpt(self, verb: str, argument: str) -> None:
        address = _path(argument, "TO:")
        if self._mail_from is None:
            default = "503 5.5.1 need MAIL first"
        elif address is None:
            default = "501 5.5.4 syntax: RCPT TO:<address>"
        else:
            default = "250 2.1.5 recipient ok"

        def accepted(code: int) -> None:
            if 200 <= code < 300 and address is not None and self._mail_from is not None:
                self._rcpts.append((address, argument))

        self._respond(verb, argument, default, accepted)

    def _do_data(self, verb: str, argument: str) -> None:
        if self._mail_from is None:
            default = "503 5.5.1 need MAIL first"
        elif not self._rcpts:
            default = "554 5.5.1 no valid recipients"
        else:
            default = "354 end data with <CR><LF>.<CR><LF>"

        def started(code: int) -> None:
            if code == 354:
                self._data = []

        self._respond(verb, argument, default, started)

    def _data_line(self, line: bytes) -> None:
        assert self._data is not None
        if line == b".":
            content = b"".join(part + b"\r\n" for part in self._data)
            self._data = None
            self._end_message(content, "DATA")
            return
        # RFC 5321 section 4.5.2: remove one leading dot.
        self._data.append(line[1:] if line.startswith(b".") else line)

    def _do_bdat(self, verb: str, argument: str) -> None:
        parts = argument.split()
        size = parts[0] if parts else ""
        last = len(parts) == 2 and parts[1].upper() == "LAST"
        if not size.isdigit() or len(parts) > 2 or (len(parts) == 2 and not last):
            self._respond(verb, argument, "501 5.5.4 syntax: BDAT size [LAST]")
            return
        self._bdat_left = int(size)
        self._bdat_last = last
        self._bdat_verb_argument = argument
        self._bdat_size = self._bdat_left
        if not self._bdat_left:
            self._bdat_done()

    def _bdat_done(self) -> None:
        argument = self._bdat_verb_argument
        if not self.script.advertises("CHUNKING"):
            self._respond("BDAT", argument, "502 5.5.1 CHUNKING not offered")
        elif self._mail_from is None or not self._rcpts:
            self._bdat_chunks = []
            self._respond("BDAT", argument, "503 5.5.1 need MAIL and RCPT first")
        elif self._bdat_last:
            content = b"".join(self._bdat_chunks)
            self._bdat_chunks = []
            self._end_message(content, "BDAT")
        else:
            self._respond("BDAT", argument, f"250 2.0.0 {self._bdat_size} octets")

    def _end_message(self, content: bytes, via: str) -> None:
        message = ReceivedMessage(
            mail_from=self._mail_from or "",
            mail_args=self._mail_args,
            rcpt_tos=tuple(a for a, _ in self._rcpts),
            rcpt_args=tuple(arg for _, arg in self._rcpts),
            content=content,
            via=via,
            helo=self.session.helo,
            tls=self.session.tls,
            auth_user=self.session.auth_user,
        )
        self._reset()
        queue_id = f"T{next(_queue_ids):06d}"
        replies = len(message.rcpt_tos) if self.script.lmtp else 1

        def ended(code: int) -> None:
            if 200 <= code < 300:
                self.session.messages.append(message)
                if self.on_message is not None:
                    self.on_message(message)

        for _ in range(replies - 1):
            self._respond(DATA_END, "", f"250 2.0.0 OK queued as {queue_id}")
        self._respond(DATA_END, "", f"250 2.0.0 OK queued as {queue_id}", ended)

    def _do_rset(self, verb: str, argument: str) -> None:
        self._reset()
        self._respond(verb, argument, "250 2.0.0 reset")

    def _do_noop(self, verb: str, argument: str) -> None:
        self._respond(verb, argument, "250 2.0.0 ok")

    def _do_vrfy(self, verb: str, argument: str) -> None:
        self._respond(verb, argument, "252 2.5.2 cannot verify, will attempt delivery")

    def _do_expn(self, verb: str, argument: str) -> None:
        self._respond(verb, argument, "502 5.5.1 EXPN not offered")

    def _do_help(self, verb: str, argument: str) -> None:
        self._respond(verb, argument, "214 2.0.0 txsmtpclient.testing: see RFC 5321")

    def _do_quit(self, verb: str, argument: str) -> None:
        self._respond(verb, argument, "221 2.0.0 bye", lambda code: self._close())

    def _do_starttls(self, verb: str, argument: str) -> None:
        if self.tls_options is None or self.session.tls:
            self._respond(verb, argument, "502 5.5.1 STARTTLS not offered")
            return

        def start(code: int) -> None:
            if code == 220 and self.transport is not None:
                # RFC 3207 section 4.2: forget everything from before TLS.
                self._buffer = b""
                self.session.helo = None
                self._reset()
                self.transport.startTLS(self.tls_options)  # type: ignore[attr-defined]
                self.session.tls = True

        self._respond(verb, argument, "220 2.0.0 ready to start TLS", start)

    # -- AUTH (RFC 4954): PLAIN and LOGIN --------------------------------------------

    def _do_auth(self, verb: str, argument: str) -> None:
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if self.script.credentials is None or mechanism not in ("PLAIN", "LOGIN"):
            self._respond(verb, argument, "504 5.5.4 mechanism not offered")
        elif self.session.auth_user is not None:
            self._respond(verb, argument, "503 5.5.1 already authenticated")
        elif mechanism == "PLAIN" and initial:
            self._auth_plain(initial)
        elif mechanism == "PLAIN":
            self._auth = "PLAIN"
            self._respond(verb, argument, "334 ")
        elif initial:
            self._auth = "LOGIN-PASSWORD"
            self._auth_user = self._b64(initial)
            self._respond(verb, argument, "334 UGFzc3dvcmQ6")
        else:
            self._auth = "LOGIN-USER"
            self._respond(verb, argument, "334 VXNlcm5hbWU6")

    @staticmethod
    def _b64(text: str | bytes) -> str | None:
        try:
            return base64.b64decode(text, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None

    def _auth_step(self, line: bytes) -> None:
        state, self._auth = self._auth, None
        if line == b"*":
            self._respond("AUTH", "", "501 5.7.0 authentication cancelled")
        elif state == "PLAIN":
            self._auth_plain(line.decode("ascii", "replace"))
        elif state == "LOGIN-USER":
            self._auth_user = self._b64(line)
            self._auth = "LOGIN-PASSWORD"
            self._respond("AUTH", "", "334 UGFzc3dvcmQ6")
        else:
            self._check(self._auth_user, self._b64(line))

    def _auth_plain(self, text: str) -> None:
        decoded = self._b64(text)
        parts = decoded.split("\0") if decoded is not None else []
        if len(parts) != 3:
            self._respond("AUTH", "", "501 5.5.2 malformed PLAIN response")
            return
        self._check(parts[1], parts[2])

    def _check(self, user: str | None, password: str | None) -> None:
        credentials = self.script.credentials or {}
        if user is not None and password is not None and credentials.get(user) == password:
            self.session.auth_user = user
            self._respond("AUTH", user, "235 2.7.0 authentication succeeded")
        else:
            self._respond("AUTH", user or "", "535 5.7.8 authentication credentials invalid")


class ScriptedServerFactory(Factory):
    """
    Builds one :class:`ScriptedServerProtocol` per connection, each with a new
    :class:`ServerSession` appended to ``sessions``.
    """

    noisy = False

    def __init__(
        self,
        script: Script,
        clock: IReactorTime,
        tls_options: Any = None,
        on_message: Callable[[ReceivedMessage], None] | None = None,
        implicit_tls: bool = False,
    ) -> None:
        self.script = script
        self.clock = clock
        self.tls_options = tls_options
        self.on_message = on_message
        self.implicit_tls = implicit_tls
        self.sessions: list[ServerSession] = []
        self.protocols: list[ScriptedServerProtocol] = []

    def buildProtocol(self, addr: Any) -> ScriptedServerProtocol:
        session = ServerSession(tls=self.implicit_tls, peer=getattr(addr, "host", None))
        self.sessions.append(session)
        protocol = ScriptedServerProtocol(
            self.script, session, self.clock, self.tls_options, self.on_message
        )
        protocol.factory = self
        self.protocols.append(protocol)
        return protocol
