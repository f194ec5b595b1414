"""
The session's states and its one transition table, in one readable place:
what a command is (:class:`Kind`), where the dialogue is (:class:`State`),
which commands each state allows and where they lead
(:data:`SEND_TRANSITIONS`), where replies lead (:data:`REPLY_TRANSITIONS`),
and which reply codes can answer each kind of command (:data:`ANSWERS`).
:mod:`txsmtpclient.session` applies them.

Sans-IO: nothing here imports Twisted.
"""

from __future__ import annotations

import enum

__all__ = [
    "ANSWERS",
    "ANSWERS_DEFAULT",
    "FAST",
    "REPLY_TRANSITIONS",
    "SEND_TRANSITIONS",
    "Kind",
    "State",
]


class Kind(str, enum.Enum):
    """
    What a command is, as far as the session cares: its place in the
    dialogue, the replies that can answer it and its timeout.
    """

    GREETING = "greeting"  # not sent: the reply awaited on connecting
    EHLO = "ehlo"  # EHLO or LHLO
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    AUTH_RESPONSE = "auth_response"  # a line answering a 334 challenge
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data_init"
    MESSAGE_END = "data_end"  # the last of the message data and its final dot
    BDAT = "data_block"  # BDAT with its chunk, not the last
    BDAT_LAST = "bdat_last"
    RSET = "rset"
    QUIT = "quit"
    COMMAND = "command"  # NOOP, VRFY, EXPN, HELP, docmd(): any reply goes

    @property
    def stage(self) -> str:
        """
        The stage named in :class:`~txsmtpclient.errors.SMTPTimeoutError`
        and looked up in :class:`Timeouts` (``"command"`` for EHLO).
        """
        return _STAGE.get(self, self.value)


_STAGE = {
    Kind.EHLO: "command",
    Kind.HELO: "command",
    Kind.AUTH: "command",
    Kind.AUTH_RESPONSE: "command",
    Kind.RSET: "command",
    Kind.BDAT_LAST: "data_end",
}


class State(str, enum.Enum):
    """
    Where the dialogue is, as seen from the commands written so far and the
    replies read.
    """

    GREETING = "greeting"  # connected; the greeting not yet read
    READY = "ready"  # greeted: any command
    HELLO = "hello"  # TLS just came up: EHLO (or HELO) again before the rest
    MAIL = "mail"  # MAIL written: a transaction is open
    DATA = "data"  # DATA got its 354: message data, then its end
    AUTH = "auth"  # a 334 challenge awaits its response
    TLS = "tls"  # STARTTLS got its 220: nothing until the handshake is done
    CLOSING = "closing"  # QUIT written: nothing more
    CLOSED = "closed"  # failed or closed: nothing more, in or out


S, K = State, Kind

#: The one transition table for commands: ``(state, kind) -> state``.  A
#: command missing here is refused with
#: :class:`~txsmtpclient.errors.SMTPLocalProtocolError`, before anything is
#: written.  Out-of-order commands the server itself refuses with 503 (RCPT or
#: DATA without MAIL) are let through: smtplib's API lets a caller see that
#: reply.
SEND_TRANSITIONS: dict[tuple[State, Kind], State] = {
    # Greeted: the session's ordinary commands.
    (S.READY, K.EHLO): S.READY,
    (S.READY, K.HELO): S.READY,
    (S.READY, K.STARTTLS): S.READY,  # its 220 moves on to TLS
    (S.READY, K.AUTH): S.READY,  # a 334 moves on to AUTH
    (S.READY, K.MAIL): S.MAIL,
    (S.READY, K.RCPT): S.READY,  # the server says 503
    (S.READY, K.DATA): S.READY,  # the server says 503
    (S.READY, K.RSET): S.READY,
    (S.READY, K.COMMAND): S.READY,
    (S.READY, K.QUIT): S.CLOSING,
    # After TLS (RFC 3207 section 4.2): EHLO again before anything that
    # depends on the extensions.
    (S.HELLO, K.EHLO): S.READY,
    (S.HELLO, K.HELO): S.READY,
    (S.HELLO, K.RSET): S.HELLO,
    (S.HELLO, K.COMMAND): S.HELLO,
    (S.HELLO, K.QUIT): S.CLOSING,
    # A transaction (RFC 5321 section 3.3; pipelined per RFC 2920, so
    # these are written before MAIL's reply is read).
    (S.MAIL, K.RCPT): S.MAIL,
    (S.MAIL, K.DATA): S.MAIL,  # its 354 moves on to DATA
    (S.MAIL, K.BDAT): S.MAIL,
    (S.MAIL, K.BDAT_LAST): S.MAIL,  # its reply ends the transaction
    (S.MAIL, K.RSET): S.READY,
    (S.MAIL, K.MAIL): S.MAIL,  # the server says 503
    (S.MAIL, K.EHLO): S.READY,  # EHLO ends a transaction (RFC 5321 4.1.4)
    (S.MAIL, K.HELO): S.READY,
    (S.MAIL, K.COMMAND): S.MAIL,
    (S.MAIL, K.QUIT): S.CLOSING,
    # Message data (sent with send_data) and its end: nothing else, or it
    # would be taken as part of the message.  Once the final dot is written
    # the transaction is over whatever its reply says (RFC 5321 section
    # 4.1.1.4), so the next transaction's commands may follow it before that
    # reply (RFC 2920 section 3.1).
    (S.DATA, K.MESSAGE_END): S.READY,
    # SASL (RFC 4954 section 4): a response to each challenge, or "*".
    (S.AUTH, K.AUTH_RESPONSE): S.AUTH,
}

#: The one transition table for replies: ``(kind, code) -> state`` or, when
#: the exact code is not listed, ``(kind, code // 100) -> state``.  Replies
#: not listed leave the state as it is.  A 421 (other than to QUIT) always
#: closes the session, whatever it answers.
REPLY_TRANSITIONS: dict[tuple[Kind, int], State] = {
    (K.GREETING, 2): S.READY,
    # A 554 greeting: the client may only QUIT (RFC 5321 section 3.1).
    (K.GREETING, 5): S.READY,
    (K.GREETING, 4): S.READY,
    (K.STARTTLS, 220): S.TLS,
    (K.AUTH, 334): S.AUTH,
    (K.AUTH, 2): S.READY,
    (K.AUTH, 4): S.READY,
    (K.AUTH, 5): S.READY,
    (K.AUTH_RESPONSE, 334): S.AUTH,
    (K.AUTH_RESPONSE, 2): S.READY,
    (K.AUTH_RESPONSE, 4): S.READY,
    (K.AUTH_RESPONSE, 5): S.READY,
    (K.MAIL, 4): S.READY,
    (K.MAIL, 5): S.READY,
    (K.DATA, 354): S.DATA,
    (K.BDAT_LAST, 2): S.READY,
    (K.BDAT_LAST, 4): S.READY,
    (K.BDAT_LAST, 5): S.READY,
}

del S, K

#: The replies that can answer each kind of command: exact codes, then
#: whole classes (RFC 5321 section 4.3.2, RFC 3207, RFC 4954, RFC 3030).
#: Anything else (a 250 to DATA, a 354 to RCPT) is a protocol violation.
ANSWERS: dict[Kind, tuple[frozenset[int], frozenset[int]]] = {
    Kind.GREETING: (frozenset(), frozenset({2, 4, 5})),
    Kind.STARTTLS: (frozenset({220}), frozenset({4, 5})),
    Kind.AUTH: (frozenset({334}), frozenset({2, 4, 5})),
    Kind.AUTH_RESPONSE: (frozenset({334}), frozenset({2, 4, 5})),
    Kind.DATA: (frozenset({354}), frozenset({4, 5})),
    Kind.COMMAND: (frozenset(), frozenset({2, 3, 4, 5})),
}
ANSWERS_DEFAULT = (frozenset[int](), frozenset({2, 4, 5}))

#: Kinds whose plain 2xx replies change no state: a pipelined batch takes
#: them on the fast path (a thousand RCPT replies in one segment).
FAST = frozenset({Kind.MAIL, Kind.RCPT, Kind.BDAT, Kind.MESSAGE_END})
