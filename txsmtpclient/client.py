"""
:class:`SMTP`: smtplib's SMTP object for Twisted.

Every method that talks to the server returns a Deferred.  Calls need not
wait for each other: each is queued and runs when the one before it has
finished, so ``s = SMTP("localhost"); s.sendmail(f, t, m); d = s.quit()``
works as the blocking original does.  A call that fails does not stop the
queue; a later call that needs what failed (a connection, say) fails with an
error naming the earlier cause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from email.message import Message
from functools import partial
from typing import TYPE_CHECKING, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)

from txsmtpclient._body import Body, BodySource, body_source
from txsmtpclient._client_commands import Commands
from txsmtpclient._data import send_bdat, send_data
from txsmtpclient._exchange import (
    reset_after_failure,
    send_envelope,
)
from txsmtpclient._sendargs import envelope_for_call, message_for_call
from txsmtpclient._tls import client_tls_options
from txsmtpclient.errors import (
    DKIMError,
    SMTPDataError,
    SMTPTLSError,
)
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, Timeouts
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import (
    Envelope,
    Refused,
    plan_transaction,
)

if TYPE_CHECKING:
    from txsmtpclient.dkim import DKIMSigner

__all__ = ["SMTP", "SMTP_SSL"]


class SMTP(Commands):
    """
    An SMTP client session, with smtplib's methods.

    :param host: when given, :meth:`connect` starts at once with ``host`` and
        ``port``; its failure is reported by the calls queued after it.
    :param port: the port; see :meth:`connect`.
    :param local_hostname: the name sent with EHLO/HELO; by default the
        local host's fully qualified name (looked up in a thread), or the
        connection's address literal when that name has no dot.
    :param timeout: a :class:`Timeouts` for each stage, or one number of
        seconds for all (as smtplib's ``timeout``); defaults to RFC 5321's.
    :param reactor: provides ``IReactorTCP`` and ``IReactorTime``; the global
        reactor when ``None``.
    :param tls: ``"opportunistic"`` (the default) upgrades with STARTTLS
        whenever the server offers it; ``"required"`` fails closed with
        :class:`SMTPTLSError` when it does not or the handshake fails, never
        falling back to plaintext; ``"never"`` stays in the clear.
        Certificates are always verified.
    :param tls_options: TLS client options (``optionsForClientTLS(...)``),
        for a private CA or a client certificate.
    :param server_hostname: the name to verify the certificate against, when
        the connection was given as an endpoint.
    :param allow_plaintext_auth: let :meth:`login` send credentials over a
        connection without TLS.
    :param bdat_threshold: with CHUNKING, messages larger than this (and
        streams of unknown size) go by BDAT instead of DATA.
    :param source_address: smtplib's ``(host, port)`` to bind the local end
        of the connection to (a host name or address, not an endpoint).

    Used as ``async with SMTP(host) as smtp:``, QUIT is sent on a normal exit
    and the connection closed after an error.

    :ivar esmtp_features: the extensions of the last EHLO reply.
    :ivar does_esmtp: whether the last EHLO succeeded.
    :ivar ehlo_resp: the message of the last EHLO reply, or ``None``.
    :ivar helo_resp: the message of the last HELO reply, or ``None``.
    """

    # -- sendmail ------------------------------------------------------------------

    def sendmail(
        self,
        from_addr: str | None = None,
        to_addrs: str | Sequence[str] | None = None,
        msg: Body | None = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        *,
        dsn_ret: str | None = None,
        dsn_envid: str | None = None,
        dsn_notify: str | Sequence[str] | None = None,
        dsn_orcpt: bool = False,
        dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
        envelope: Envelope | None = None,
    ) -> Deferred[dict[str, Reply]]:
        """
        Send one message: EHLO (or HELO) if not yet said, STARTTLS as the TLS
        policy asks, MAIL, one RCPT per recipient, then DATA (or BDAT when
        the server offers CHUNKING and the message is large or
        ``BODY=BINARYMIME``).  MAIL, RCPT and DATA go in one write when the
        server offers PIPELINING (RFC 2920).

        ESMTP options are passed only when their extension is advertised;
        ``SIZE=`` is added when SIZE is, ``SMTPUTF8`` for non-ASCII
        addresses, ``BODY=8BITMIME`` for 8-bit data.

        :param from_addr: the envelope sender.
        :param to_addrs: one address or a sequence of addresses.
        :param msg: ``bytes``, an ASCII ``str``, a binary file, an iterable
            or async iterable of ``bytes``, or an ``IBodyProducer``.
        :param mail_options: MAIL parameters.
        :param rcpt_options: RCPT parameters for every recipient.
        :param dsn_ret: RFC 3461 ``RET``: ``"FULL"`` or ``"HDRS"``.
        :param dsn_envid: RFC 3461 ``ENVID``, sent as xtext.
        :param dsn_notify: RFC 3461 ``NOTIFY``: some of ``"SUCCESS"``,
            ``"FAILURE"``, ``"DELAY"``, or ``("NEVER",)``.
        :param dsn_orcpt: send each recipient's address as ``ORCPT``.
        :param dkim: sign the message with this
            :class:`~txsmtpclient.dkim.DKIMSigner` (or each of a sequence of
            them) as it is sent; a stream is read whole first (see
            :mod:`txsmtpclient._signing`).
        :param envelope: the whole envelope as one
            :class:`~txsmtpclient.transaction.Envelope`, instead of
            ``from_addr``, ``to_addrs``, the options and ``dsn_*`` (which are
            then left out): ``sendmail(msg=data, envelope=envelope)``.
        :returns: a Deferred firing, when at least one recipient was
            accepted, with ``{address: reply}`` for each refused recipient:
            a :class:`~txsmtpclient.transaction.Refused`, a dict that also
            holds the reply to the end of the message as ``.final`` (with
            the relay's queue id).
        :raises SMTPArgumentError: (at once) for bad arguments.
        :raises SMTPHeloError: when the server refuses EHLO and HELO.
        :raises SMTPSenderRefused: when MAIL is refused (or the message is
            over the server's SIZE limit: 552, before MAIL is sent).
        :raises SMTPRecipientsRefused: when every recipient is refused.
        :raises SMTPDataError: when the message is refused.
        :raises SMTPNotSupportedError: for non-ASCII addresses or 8-bit data
            the server cannot take, or TLS the policy requires and the server
            lacks.
        :raises DKIMError: (through the Deferred, before MAIL) when the
            message cannot be signed.
        """
        checked = envelope_for_call(
            from_addr,
            to_addrs,
            mail_options,
            rcpt_options,
            dsn_ret,
            dsn_envid,
            dsn_notify,
            dsn_orcpt,
            dkim,
            envelope,
        )
        return self._send_checked(checked, body_source(msg))  # type: ignore[arg-type]

    def _send_checked(self, envelope: Envelope, source: BodySource) -> Deferred[dict[str, Reply]]:
        """
        :meth:`sendmail` for arguments already checked (the pool checks them
        before it takes a connection, and need not pay for it twice).
        """
        return self._call(
            lambda: (
                self._log_transaction(envelope, self._sendmail(envelope, source))
                if self._tracing()
                else self._sendmail(envelope, source)
            ),
            pipelinable=True,
        )

    def send_message(
        self,
        msg: Message,
        from_addr: str | None = None,
        to_addrs: str | Sequence[str] | None = None,
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        *,
        dsn_ret: str | None = None,
        dsn_envid: str | None = None,
        dsn_notify: str | Sequence[str] | None = None,
        dsn_orcpt: bool = False,
        dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
        envelope: Envelope | None = None,
    ) -> Deferred[dict[str, Reply]]:
        """
        Send an :class:`email.message.Message` (or ``EmailMessage``) as
        smtplib does: the sender from ``Sender`` or ``From`` and the
        recipients from ``To``, ``Cc`` and ``Bcc`` (the latest ``Resent-*``
        block when there is one) unless given (or ``envelope`` gives them);
        ``Bcc`` and ``Resent-Bcc`` left out of what is sent; SMTPUTF8 when an
        address needs it.  The other arguments are :meth:`sendmail`'s.

        :returns: as :meth:`sendmail`.
        :raises SMTPArgumentError: when no sender or recipient can be found.
        :raises ValueError: for more than one ``Resent-`` block.
        """
        checked, data = message_for_call(
            msg,
            from_addr,
            to_addrs,
            mail_options,
            rcpt_options,
            dsn_ret,
            dsn_envid,
            dsn_notify,
            dsn_orcpt,
            dkim,
            envelope,
        )
        return self._send_checked(checked, body_source(data))

    async def _sendmail(self, envelope: Envelope, source: BodySource) -> dict[str, Reply]:
        # A stream's first chunk is read (and its type checked) before
        # anything is sent, so a wrong type raises with the session intact.
        await source.prime(self._reactor)
        if envelope.dkim:
            return await self._send_signed(envelope, source)
        await self._ehlo_or_helo_if_needed()
        proto = self._connection()
        features = self.esmtp_features if self.does_esmtp else None
        eight_bit = source.eight_bit
        # A stream's content is unknown before MAIL: declare 8BITMIME when
        # the server has it, otherwise check each chunk as it is read.
        streamed_8bit = eight_bit is None and features is not None and features.has("8bitmime")
        key = (envelope, features, source.size, bool(eight_bit) or streamed_8bit, proto.tls)
        cached = self._last_plan
        if cached is not None and cached[0] == key:
            # The same envelope to the same server again (a batch of mail
            # to one list): its command lines depend on nothing else.
            plan = cached[1]
        else:
            plan = plan_transaction(*key)
            self._last_plan = (key, plan)
        if plan.dropped:
            self._transcript.note(
                f"options not advertised by the server, left out: {plan.dropped}"
            )
        refuse_8bit = eight_bit is None and not streamed_8bit and not plan.binary
        bdat = (
            features is not None
            and features.has("chunking")
            and (plan.binary or source.size is None or source.size > self.bdat_threshold)
        )
        pipelining = features is not None and features.has("pipelining")
        recipients = envelope.recipients
        refused = await send_envelope(proto, plan, envelope.sender, recipients, pipelining, bdat)
        accepted = [r for r in recipients if r not in refused]
        expected = self._final_reply_count(len(accepted))
        try:
            if bdat:
                finals = await send_bdat(
                    proto,
                    source,
                    self._reactor,
                    expected,
                    pipelining,
                    plan.binary,
                    refuse_8bit,
                )
            else:
                if pipelining:
                    # RFC 2920 section 3.1: the next queued send's MAIL,
                    # RCPT and DATA may follow this message's final dot in
                    # the same write.  (Not after BDAT: a refused chunk may
                    # leave the transaction for RSET to end.)
                    hook = partial(self._message_end_written)
                    proto.after_message_end = hook
                try:
                    finals = await send_data(proto, source, self._reactor, expected, refuse_8bit)
                finally:
                    if pipelining and proto.after_message_end is hook:
                        proto.after_message_end = None
        except SMTPDataError:
            # A refused BDAT chunk; the reply to the end of a message (judged
            # below) ends the transaction whatever it says, and needs no RSET.
            await self._reset_after_failure()
            raise
        return await self._judge_final(accepted, refused, finals)

    def _final_reply_count(self, accepted: int) -> int:
        """
        Replies to the end of the message: one for SMTP.
        """
        return 1

    async def _judge_final(
        self, accepted: list[str], refused: dict[str, Reply], finals: list[Reply]
    ) -> Refused:
        final = finals[0]
        if final.code != 250:
            # No RSET: the transaction ended with the final dot (RFC 5321
            # section 4.1.1.4), and the next one may already be written.
            raise SMTPDataError(final.code, final.message)
        return Refused.with_replies(refused, finals)

    async def _reset_after_failure(self) -> None:
        if self._proto is not None:
            await reset_after_failure(self._proto)

    async def _send_signed(self, envelope: Envelope, source: BodySource) -> dict[str, Reply]:
        """
        Sign the message (before MAIL, so a message that cannot be signed
        sends nothing), then send it as :meth:`_sendmail`.
        """
        from txsmtpclient._signing import SignedSource, signed_source

        if any(o.upper() == "BODY=BINARYMIME" for o in envelope.mail_options):
            raise DKIMError(
                "DKIM signs a message as lines of text; a BODY=BINARYMIME message cannot be signed"
            )
        signed = await signed_source(source, envelope.dkim, self._reactor)
        try:
            return await self._sendmail(replace(envelope, dkim=()), signed)
        finally:
            if isinstance(signed, SignedSource):
                signed.close()


class SMTP_SSL(SMTP):
    """
    SMTP over implicit TLS (RFC 8314, port 465): the connection is
    encrypted from its first byte, the certificate verified against the host
    name (or ``server_hostname``).

    :param context: TLS client options; by default ones that verify the
        certificate against the system's trust roots.  Other parameters as
        :class:`SMTP`.
    """

    default_port: ClassVar[int] = 465

    def __init__(
        self,
        host: str | IStreamClientEndpoint | None = None,
        port: int | None = None,
        local_hostname: str | None = None,
        timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
        reactor: IReactorTime | None = None,
        *,
        context: IOpenSSLClientConnectionCreator | None = None,
        server_hostname: str | None = None,
        allow_plaintext_auth: bool = False,
        bdat_threshold: int = 64 * 1024,
        source_address: tuple[str, int] | None = None,
    ) -> None:
        # The connection is TLS from its first byte: no STARTTLS on top.
        super().__init__(
            host,
            port,
            local_hostname,
            timeout,
            reactor,
            tls="never",
            tls_options=context,
            server_hostname=server_hostname,
            allow_plaintext_auth=allow_plaintext_auth,
            bdat_threshold=bdat_threshold,
            source_address=source_address,
        )

    def _implicit_tls(self, host: str) -> IOpenSSLClientConnectionCreator:
        """
        :raises SMTPTLSError: when no host name is known to verify the
            certificate against.
        """
        if self._tls_options is not None:
            return self._tls_options
        name = self.server_hostname or host
        if not name:
            raise SMTPTLSError(
                "cannot verify the server's certificate: no host name is known for it; "
                "pass server_hostname= or context="
            )
        return client_tls_options(name)
