"""
Multi-step exchanges on one connection that do not depend on the session's
state: a transaction's envelope (MAIL, RCPT, DATA; RFC 5321, pipelined per
RFC 2920), the SASL dialogue of AUTH (RFC 4954) and waiting for a TLS
handshake (RFC 3207).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import TimeoutError as DeferTimeoutError

from txsmtpclient.auth import (
    CANCEL,
    SASLError,
    SASLMechanism,
    auth_command,
    decode_challenge,
    encode_response,
)
from txsmtpclient.errors import (
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPException,
    SMTPTLSError,
)
from txsmtpclient.protocol import SMTPClientProtocol
from txsmtpclient.reply import Reply
from txsmtpclient.session import Command, Kind
from txsmtpclient.transaction import Plan, judge_recipients, sender_error

__all__ = ["authenticate", "reset_after_failure", "send_envelope", "tls_handshake"]

_RSET = Command(Kind.RSET, b"RSET\r\n")
_DATA = Command(Kind.DATA, b"DATA\r\n")
_EMPTY_MESSAGE = Command(Kind.MESSAGE_END, b".\r\n")


async def reset_after_failure(proto: SMTPClientProtocol) -> None:
    """
    RSET after a refused transaction so the session serves the next; a
    failure here must not hide the refusal being reported.
    """
    if proto.usable:
        with contextlib.suppress(SMTPException):
            await proto.send(_RSET)


async def send_envelope(
    proto: SMTPClientProtocol,
    plan: Plan,
    sender: str,
    recipients: Sequence[str],
    pipelining: bool,
    bdat: bool,
) -> dict[str, Reply]:
    """
    Send MAIL, every RCPT and (unless the message goes by BDAT) DATA: in one
    write with PIPELINING, else each after the last one's reply.

    :returns: the refused recipients, when at least one was accepted and
        DATA (if sent) got its 354.
    :raises SMTPSenderRefused: when MAIL is refused.
    :raises SMTPRecipientsRefused: when every recipient is refused.
    :raises SMTPDataError: when DATA is refused.
    After a refusal the session has been reset with RSET.
    """
    if pipelining:
        batch = [
            Command(Kind.MAIL, plan.mail),
            Command(Kind.RCPT, b"".join(plan.rcpts), replies=len(plan.rcpts)),
        ]
        if not bdat:
            batch.append(_DATA)
        replies = await proto.send_batch(batch)
        error: SMTPException | None = sender_error(sender, replies[0])
        refused, all_refused = judge_recipients(recipients, replies[1 : 1 + len(recipients)])
        error = error or all_refused
        if error is not None:
            if not bdat and replies[-1].code == 354:
                # RFC 2920 section 3.1: DATA was accepted although the
                # transaction failed; end it with an empty message.
                await proto.send(_EMPTY_MESSAGE)
            await reset_after_failure(proto)
            raise error
        if not bdat and replies[-1].code != 354:
            await reset_after_failure(proto)
            raise SMTPDataError(replies[-1].code, replies[-1].message)
        return refused
    error = sender_error(sender, await proto.send(Command(Kind.MAIL, plan.mail)))
    if error is not None:
        await reset_after_failure(proto)
        raise error
    rcpt_replies = [await proto.send(Command(Kind.RCPT, line)) for line in plan.rcpts]
    refused, all_refused = judge_recipients(recipients, rcpt_replies)
    if all_refused is not None:
        await reset_after_failure(proto)
        raise all_refused
    if not bdat:
        data_reply = await proto.send(_DATA)
        if data_reply.code != 354:
            await reset_after_failure(proto)
            raise SMTPDataError(data_reply.code, data_reply.message)
    return refused


async def authenticate(
    proto: SMTPClientProtocol, mech: SASLMechanism, initial_response_ok: bool
) -> Reply:
    """
    Run one AUTH exchange: the command (with its initial response when
    allowed), then a response to each 334 challenge.  Nothing of it is
    logged.

    :returns: the final reply, whatever its code.
    :raises SMTPAuthenticationError: when the server's side of the exchange
        is wrong (a bad challenge, a SCRAM proof that does not verify); the
        exchange is cancelled with "*", or the connection closed when the
        server failed to prove itself.
    """
    name = mech.name.encode("ascii")
    line = auth_command(mech) if initial_response_ok else b"AUTH " + name
    reply = await proto.send(Command(Kind.AUTH, line + b"\r\n", secret=True))
    try:
        while reply.code == 334:
            response = mech.respond(decode_challenge(reply.message))
            reply = await proto.send(
                Command(Kind.AUTH_RESPONSE, encode_response(response) + b"\r\n", secret=True)
            )
        if reply.code == 235:
            # RFC 4954 section 4: success data comes in a 334 challenge;
            # the 235's text is for humans, not the mechanism.
            mech.verify_success()
    except SASLError as e:
        if reply.code == 334:
            # RFC 4954 section 4: "*" cancels the exchange.
            with contextlib.suppress(SMTPException):
                await proto.send(Command(Kind.AUTH_RESPONSE, CANCEL + b"\r\n", secret=True))
        else:
            # The server's proof was wrong: it is not who it claims.
            proto.close()
        raise SMTPAuthenticationError(reply.code, f"authentication failed: {e}") from e
    return reply


async def tls_handshake(proto: SMTPClientProtocol, timeout: float | None, clock: Any) -> None:
    """
    Wait for the TLS handshake STARTTLS began.

    :raises SMTPTLSError: when it fails or takes longer than ``timeout``;
        the connection is aborted.
    """
    handshake = proto.wait_for_handshake()
    if timeout is not None:
        handshake.addTimeout(timeout, clock)
    try:
        await handshake
    except (SMTPException, DeferTimeoutError) as e:
        proto.abort(SMTPTLSError(f"TLS handshake failed: {e}"))
        raise SMTPTLSError(f"TLS handshake with the server failed: {e}") from e
