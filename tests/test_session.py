"""
Tests for :mod:`txsmtpclient.session`, the sans-IO engine: no reactor, no
transport.  Every dialogue is fed whole, one byte at a time and split at
every byte boundary, and must give the same events.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from txsmtpclient.errors import (
    SMTPLocalProtocolError,
    SMTPProtocolError,
    SMTPServerDisconnected,
)
from txsmtpclient.reply import Reply
from txsmtpclient.session import (
    Command,
    ConnectionFailed,
    Event,
    Kind,
    Replied,
    Session,
    StartTLS,
    State,
    Timeouts,
)
from txsmtpclient.states import SEND_TRANSITIONS

GREETING = b"220 mx.example ESMTP\r\n"


def _splits(data: bytes) -> Iterator[list[bytes]]:
    """``data`` whole, one byte at a time, and cut in two at every boundary."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]


def _feed(session: Session, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += session.receive_data(chunk)
    return events


def _greeted() -> Session:
    session = Session(greeting_tag="greeting")
    assert session.receive_data(GREETING) == [
        Replied("greeting", [Reply(220, b"mx.example ESMTP")])
    ]
    assert session.state is State.READY
    return session


#: (name, commands sent in one batch, what the server sends, replies, state after)
CASES: list[tuple[str, list[Command], bytes, list[Reply], State]] = [
    (
        "ehlo-multiline",
        [Command(Kind.EHLO, b"EHLO c\r\n")],
        b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n",
        [Reply(250, b"mx.example\nPIPELINING\nSIZE 10")],
        State.READY,
    ),
    (
        "bare-lf",
        [Command(Kind.COMMAND, b"NOOP\r\n")],
        b"250-a\n250 b\n",
        [Reply(250, b"a\nb")],
        State.READY,
    ),
    (
        "pipelined-envelope",
        [
            Command(Kind.MAIL, b"MAIL FROM:<a@x>\r\n"),
            Command(Kind.RCPT, b"RCPT TO:<b@x>\r\nRCPT TO:<c@x>\r\n", replies=2),
            Command(Kind.DATA, b"DATA\r\n"),
        ],
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no\r\n550 such user\r\n354 go\r\n",
        [
            Reply(250, b"2.1.0 ok"),
            Reply(250, b"2.1.5 ok"),
            Reply(550, b"5.1.1 no\nsuch user"),
            Reply(354, b"go"),
        ],
        State.DATA,
    ),
    (
        "mail-refused",
        [Command(Kind.MAIL, b"MAIL FROM:<a@x>\r\n")],
        b"550 5.7.1 no\r\n",
        [Reply(550, b"5.7.1 no")],
        State.READY,
    ),
    (
        "auth-challenge",
        [Command(Kind.AUTH, b"AUTH LOGIN\r\n", secret=True)],
        b"334 VXNlcm5hbWU6\r\n",
        [Reply(334, b"VXNlcm5hbWU6")],
        State.AUTH,
    ),
]


@pytest.mark.parametrize(
    ("name", "commands", "data", "replies", "state"), CASES, ids=[c[0] for c in CASES]
)
def test_replies_split_anywhere(
    name: str, commands: list[Command], data: bytes, replies: list[Reply], state: State
) -> None:
    """However the replies are cut, the batch gets them all, once, in order."""
    for chunks in _splits(data):
        session = _greeted()
        written = session.send_batch(commands, tag=name)
        assert written == b"".join(c.data for c in commands)
        assert _feed(session, chunks) == [Replied(name, replies)]
        assert session.state is state
        assert session.pending == 0


def test_lock_step_commands_each_get_their_reply() -> None:
    """Commands sent one by one get one Replied each, in order."""
    session = _greeted()
    session.send(Command(Kind.MAIL, b"MAIL FROM:<a@x>\r\n"), "mail")
    assert session.receive_data(b"250 ok\r\n") == [Replied("mail", [Reply(250, b"ok")])]
    session.send(Command(Kind.RCPT, b"RCPT TO:<b@x>\r\n"), "rcpt")
    assert session.receive_data(b"250 ok\r\n") == [Replied("rcpt", [Reply(250, b"ok")])]
    assert session.state is State.MAIL


def test_thousand_replies_take_the_fast_path_and_stay_in_order() -> None:
    """A thousand pipelined RCPT replies in one segment reach the batch in order."""
    session = _greeted()
    session.send_batch(
        [Command(Kind.MAIL, b"M\r\n"), Command(Kind.RCPT, b"R\r\n" * 1000, replies=1000)], "batch"
    )
    data = b"250 ok\r\n" + b"".join(
        b"250 r%d\r\n" % n if n % 7 else b"450-4.2.0 busy\r\n450 later %d\r\n" % n
        for n in range(1000)
    )
    (event,) = session.receive_data(data)
    assert isinstance(event, Replied)
    assert event.replies[0] == Reply(250, b"ok")
    assert event.replies[1:] == [
        Reply(250, b"r%d" % n) if n % 7 else Reply(450, b"4.2.0 busy\nlater %d" % n)
        for n in range(1000)
    ]


# -- defects of issue 8 ---------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"250 Sender OK\r\n250 Recipient OK\r\n354 go\r\n", b"250 Sen"])
def test_bytes_before_a_command_are_never_its_reply(tail: bytes) -> None:
    """Issue 8, defect 1: replies that arrived before EHLO was written fail the session."""
    for chunks in _splits(GREETING + tail):
        session = Session(greeting_tag="greeting")
        events = _feed(session, chunks)
        assert events[0] == Replied("greeting", [Reply(220, b"mx.example ESMTP")])
        if tail.endswith(b"\n"):
            assert isinstance(events[-1], ConnectionFailed) and len(events) == 2
            assert isinstance(events[-1].error, SMTPProtocolError) and events[-1].abort
        else:
            assert len(events) == 1
            # Only when the next command is written is it known to be unsolicited.
            with pytest.raises(SMTPProtocolError, match="before the command"):
                session.send(Command(Kind.EHLO, b"EHLO c\r\n"))
        assert session.state is State.CLOSED
        with pytest.raises(SMTPProtocolError):
            session.send(Command(Kind.EHLO, b"EHLO c\r\n"))


def test_extra_reply_after_a_batch_is_unsolicited() -> None:
    """A reply more than the batch asked for is never kept for the next command."""
    session = _greeted()
    session.send_batch([Command(Kind.MAIL, b"M\r\n"), Command(Kind.RCPT, b"R\r\n")], "b")
    events = session.receive_data(b"250 a\r\n250 b\r\n250 c\r\n")
    assert events[0] == Replied("b", [Reply(250, b"a"), Reply(250, b"b")])
    assert isinstance(events[1], ConnectionFailed)
    assert "nobody asked for" in str(events[1].error)


def test_421_after_a_reply_ends_the_session() -> None:
    """Issue 8, defect 2: a 421 right after the EHLO reply: nothing more may be written."""
    data = b"250-mx\r\n250 PIPELINING\r\n421 4.3.2 shutting down\r\n"
    for chunks in _splits(data):
        session = _greeted()
        session.send(Command(Kind.EHLO, b"EHLO c\r\n"), "ehlo")
        events = _feed(session, chunks)
        assert events[0] == Replied("ehlo", [Reply(250, b"mx\nPIPELINING")])
        failed = events[1]
        assert isinstance(failed, ConnectionFailed) and not failed.abort
        assert type(failed.error) is SMTPServerDisconnected
        assert "421 4.3.2 shutting down" in str(failed.error) and failed.error.temporary
        with pytest.raises(SMTPServerDisconnected, match="421"):
            session.send(Command(Kind.MAIL, b"MAIL FROM:<a@x>\r\n"))


def test_421_answering_a_command_is_its_reply_then_the_end() -> None:
    """A 421 to a command reaches it; the sends queued after it are unanswered."""
    session = _greeted()
    session.send(Command(Kind.COMMAND, b"NOOP\r\n"), "noop")
    session.send(Command(Kind.RSET, b"RSET\r\n"), "rset")
    events = session.receive_data(b"421 closing\r\n")
    assert events[0] == Replied("noop", [Reply(421, b"closing")])
    assert isinstance(events[1], ConnectionFailed) and events[1].unanswered == ("rset",)


def test_421_to_quit_is_just_its_reply() -> None:
    """QUIT may be answered with 421."""
    session = _greeted()
    session.send(Command(Kind.QUIT, b"QUIT\r\n"), "quit")
    assert session.receive_data(b"421 bye\r\n") == [Replied("quit", [Reply(421, b"bye")])]
    assert session.state is State.CLOSING


@pytest.mark.parametrize(
    ("kind", "reply"),
    [
        (Kind.DATA, b"250 ok"),
        (Kind.RCPT, b"354 go"),
        (Kind.STARTTLS, b"250 ok"),
        (Kind.MESSAGE_END, b"354 again"),
        (Kind.MAIL, b"334 what"),
    ],
)
def test_reply_that_cannot_answer_the_command(kind: Kind, reply: bytes) -> None:
    """Issue 8, defect 3: a code that cannot answer the command is SMTPProtocolError, temporary."""
    session = _greeted()
    session.send_batch([Command(Kind.MAIL, b"M\r\n")], "mail")
    session.receive_data(b"250 ok\r\n")
    if kind is Kind.MESSAGE_END:
        session.send(Command(Kind.DATA, b"DATA\r\n"))
        session.receive_data(b"354 go\r\n")
    elif kind is Kind.STARTTLS:
        session.send(Command(Kind.RSET, b"RSET\r\n"))
        session.receive_data(b"250 ok\r\n")
    session.send(Command(kind, b"X\r\n"), "x")
    (failed,) = session.receive_data(reply + b"\r\n")
    assert isinstance(failed, ConnectionFailed) and failed.abort
    assert isinstance(failed.error, SMTPProtocolError) and failed.error.temporary
    assert kind.name in str(failed.error)
    assert failed.unanswered == ("x",)


def test_starttls_discards_what_follows_the_220() -> None:
    """RFC 3207 section 4.2: nothing after the 220 survives; EHLO is due again."""
    reply = b"220 go ahead\r\n"
    data = reply + b"250 injected\r\n250-half"
    # Cut only within the 220: once it is read, TLS starts and later bytes
    # are the TLS layer's, never this session's plaintext.
    cuts = [[data]] + [[data[:cut], data[cut:]] for cut in range(1, len(reply))]
    cuts.append([reply[i : i + 1] for i in range(len(reply) - 1)] + [data[len(reply) - 1 :]])
    for chunks in cuts:
        session = _greeted()
        session.send(Command(Kind.STARTTLS, b"STARTTLS\r\n"), "tls")
        events = _feed(session, chunks)
        assert events == [StartTLS(), Replied("tls", [Reply(220, b"go ahead")])]
        assert session.state is State.TLS
        with pytest.raises(SMTPLocalProtocolError, match="state TLS"):
            session.send(Command(Kind.EHLO, b"EHLO c\r\n"))
        session.tls_established()
        assert session.state.name == "HELLO"
        with pytest.raises(SMTPLocalProtocolError, match="MAIL in state HELLO"):
            session.send(Command(Kind.MAIL, b"MAIL FROM:<a@x>\r\n"))
        session.send(Command(Kind.EHLO, b"EHLO c\r\n"), "ehlo")
        assert session.receive_data(b"250 mx\r\n") == [Replied("ehlo", [Reply(250, b"mx")])]
        assert session.state.name == "READY"


def test_message_data_only_after_354() -> None:
    """Message data is refused before DATA's 354, and nothing but its end is sent after."""
    session = _greeted()
    with pytest.raises(SMTPLocalProtocolError, match="message data in state READY"):
        session.send_data(b"hello\r\n")
    session.send_batch([Command(Kind.MAIL, b"M\r\n"), Command(Kind.DATA, b"DATA\r\n")])
    session.receive_data(b"250 ok\r\n354 go\r\n")
    assert session.send_data(b"hello\r\n") == b"hello\r\n"
    with pytest.raises(SMTPLocalProtocolError, match="RSET in state DATA"):
        session.send(Command(Kind.RSET, b"RSET\r\n"))
    session.send(Command(Kind.MESSAGE_END, b".\r\n", replies=2), "end")
    assert session.receive_data(b"250 one\r\n450 two\r\n") == [
        Replied("end", [Reply(250, b"one"), Reply(450, b"two")])
    ]
    assert session.state is State.READY


def test_malformed_and_overlong_replies() -> None:
    """A malformed line or one over the limit fails the session and every waiter."""
    session = _greeted()
    session.send(Command(Kind.COMMAND, b"NOOP\r\n"), "n")
    (failed,) = session.receive_data(b"bogus\r\n")
    assert isinstance(failed, ConnectionFailed) and "malformed" in str(failed.error)
    session = Session(max_line_length=20, greeting_tag="g")
    (failed,) = session.receive_data(b"220 " + b"x" * 30)
    assert isinstance(failed, ConnectionFailed) and failed.unanswered == ("g",)
    assert "exceeds the limit of 20" in str(failed.error)
    assert session.receive_data(b"220 late\r\n") == []


def test_timeout_follows_the_reply_awaited() -> None:
    """The timeout is the stage's of the reply awaited next, and None when idle."""
    timeouts = Timeouts(greeting=1, command=2, mail=3, rcpt=4, data_init=5, data_end=6)
    session = Session(timeouts)
    assert (session.waiting_for, session.timeout) == (Kind.GREETING, 1)
    session.receive_data(GREETING)
    assert session.timeout is None
    session.send_batch(
        [
            Command(Kind.MAIL, b"M\r\n"),
            Command(Kind.RCPT, b"R\r\n"),
            Command(Kind.DATA, b"D\r\n"),
        ]
    )
    seen = [session.timeout]
    for line in (b"250 a\r\n", b"250 b\r\n"):
        session.receive_data(line)
        seen.append(session.timeout)
    assert seen == [3, 4, 5]
    assert Kind.EHLO.stage == "command" and Kind.BDAT_LAST.stage == "data_end"


def test_transition_table_names_only_real_states() -> None:
    """Nothing may be sent while greeting, during TLS, or once closing."""
    for state in (State.GREETING, State.TLS, State.CLOSING, State.CLOSED):
        assert not [key for key in SEND_TRANSITIONS if key[0] is state]


def test_local_failure_returns_the_unanswered() -> None:
    """fail() ends the session and hands back every tag still waiting."""
    session = _greeted()
    session.send(Command(Kind.COMMAND, b"NOOP\r\n"), "a")
    session.send(Command(Kind.COMMAND, b"NOOP\r\n"), "b")
    assert session.fail() == ["a", "b"]
    assert session.receive_data(b"250 ok\r\n") == []
    with pytest.raises(SMTPLocalProtocolError):
        session.send(Command(Kind.COMMAND, b"NOOP\r\n"))


def test_a_remembered_reply_line_inside_a_multiline_reply_is_part_of_it() -> None:
    """
    One-line replies are parsed once per session and remembered; the same
    bytes as the last line of a multi-line reply still end that reply, and a
    remembered reply is never taken for a different line.
    """
    session = _greeted()
    noop = Command(Kind.COMMAND, b"NOOP\r\n")
    replies = []
    for data in (b"250 ok\r\n", b"250-first\r\n250 ok\r\n", b"250 ok\r\n", b"250 ok2\r\n"):
        session.send(noop, tag="noop")
        [event] = session.receive_data(data)
        assert isinstance(event, Replied)
        replies += event.replies
    assert replies == [
        Reply(250, b"ok"),
        Reply(250, b"first\nok"),
        Reply(250, b"ok"),
        Reply(250, b"ok2"),
    ]
