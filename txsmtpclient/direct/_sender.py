"""
The direct sender: what the spool's
:class:`~txsmtpclient.spool.delivery.Deliverer` sends through in
``twist txsmtp --direct``, in place of the connection pool to a relay.

Each message goes through :func:`~txsmtpclient.direct.send_direct` (the one
direct send path) with a shared :class:`~txsmtpclient.direct._gate.Destinations`
gate (a queue, a concurrency limit and a backoff per destination) and a
shared MTA-STS cache; the per-recipient :class:`DirectResult` values are
mapped onto what the Deliverer records per recipient (smtplib's refused
dict), and TLS failures are logged in the TLSRPT shape.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IResolver
from twisted.logger import Logger

from txsmtpclient._body import Body
from txsmtpclient._tls import TLSPolicy
from txsmtpclient.direct._deliver import DirectResult, send_direct
from txsmtpclient.direct._fetch import MTASTS, TLSOptionsFor
from txsmtpclient.direct._gate import Destinations
from txsmtpclient.direct._mtasts import TLSReportEntry
from txsmtpclient.direct._route import Destination, group_by_domain
from txsmtpclient.direct._secure import DANE
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPDestinationDeferred,
    SMTPResponseException,
    SMTPRoutingError,
)
from txsmtpclient.mailparams import raw_options
from txsmtpclient.protocol import Timeouts
from txsmtpclient.reply import Reply
from txsmtpclient.transaction import Envelope, Refused

__all__ = ["DirectSender", "refusal_for"]


def refusal_for(result: DirectResult) -> Reply:
    """
    The reply to record for a recipient that was not delivered: the
    server's own when one decided, else one built from the error with a
    code of the right class (5xx when final, 4xx when temporary), so the
    spool fails or retries exactly that recipient.
    """
    if result.reply is not None and (result.reply.code >= 500) == result.final:
        return result.reply
    error = result.error
    if isinstance(error, SMTPResponseException) and (error.smtp_code >= 500) == result.final:
        message = error.smtp_error
        return Reply(error.smtp_code, message if isinstance(message, bytes) else message.encode())
    text = str(error) if error is not None else "not delivered"
    if text[:3].isdigit() and (text[0] == "5") == result.final:
        # Routing errors spell their reply: "556 5.1.10 ... null MX".
        code, _, rest = text.partition(" ")
        return Reply(int(code), rest.encode("utf-8", "replace"))
    if isinstance(error, SMTPAmbiguousDelivery):
        text = f"4.4.2 outcome unknown (lost after the end of the message): {text}"
        return Reply(451, text.encode("utf-8", "replace"))
    if result.final:
        # The status a standard gives the refusal (REQUIRETLS: 5.7.30).
        enhanced = getattr(error, "enhanced_code", None) or "5.4.0"
        return Reply(554, f"{enhanced} {text}".encode("utf-8", "replace"))
    return Reply(451, f"4.4.0 {text}".encode("utf-8", "replace"))


class DirectSender:
    """
    Sends spooled messages straight to each recipient domain's mail hosts;
    a ``Sender`` for the spool (``txsmtpclient.spool.delivery``).

    :param destinations: the per-destination gate (concurrency, backoff),
        shared by every message.
    :param resolver: the DNS resolver (default: the system's resolvers
        through ``twisted.names``).
    :param reactor: the reactor connections and DNS queries run on.
    :param mta_sts: the MTA-STS cache shared for the daemon's lifetime, or
        ``None`` to ignore MTA-STS.
    :param dane: DANE through a local validating resolver, or ``None``.
    :param on_tls_report: called with each TLSRPT-shaped failure record
        (after it is logged): a seam for metrics.

    The other parameters are :func:`~txsmtpclient.direct.send_direct`'s.
    """

    log = Logger()

    def __init__(
        self,
        destinations: Destinations,
        *,
        resolver: IResolver | None = None,
        reactor: Any = None,
        local_hostname: str | None = None,
        port: int = 25,
        tls: TLSPolicy = "opportunistic",
        timeout: Timeouts | float | None = None,
        dns_timeout: float = 10.0,
        rng: random.Random | None = None,
        mta_sts: MTASTS | None = None,
        tls_options_for: TLSOptionsFor | None = None,
        dane: DANE | None = None,
        on_tls_report: Callable[[TLSReportEntry], None] | None = None,
    ) -> None:
        if resolver is None:
            from txsmtpclient.direct._dns import default_resolver

            resolver = default_resolver()
        self.destinations = destinations
        self.resolver = resolver
        self.reactor = reactor
        self.local_hostname = local_hostname
        self.port = port
        self.tls: TLSPolicy = tls
        self.timeout = timeout
        self.dns_timeout = dns_timeout
        self.rng = rng
        self.mta_sts = mta_sts
        self.tls_options_for = tls_options_for
        self.dane = dane
        self.on_tls_report = on_tls_report

    def sendmail(self, *, msg: Body, envelope: Envelope) -> Deferred[dict[str, Reply]]:
        """
        Deliver one message to its recipients' domains (the spool's
        ``Sender`` method): the envelope's sender, recipients, options, DSN
        requests and travel options; DKIM signers sign it first.

        :returns: a Deferred firing with ``{address: reply}`` for each
            recipient not delivered (5xx: failed for good; 4xx: to try
            again), a :class:`~txsmtpclient.transaction.Refused` whose
            ``final`` is a mail host's reply to the end of the message and
            whose ``accepted`` holds the other domains' replies.
        :raises SMTPDestinationDeferred: (in the Deferred) when every
            recipient's destination is backed off: nothing was tried.
        :raises SMTPAmbiguousDelivery: (in the Deferred) when nothing was
            delivered and the outcome is unknown for some recipients (the
            connection was lost after the end of the message).
        :raises SMTPArgumentError: for a message that cannot be sent.
        :raises TypeError: for a message given other than as bytes or str.
        """
        if not isinstance(msg, (bytes, str)):
            raise TypeError(f"direct delivery sends a message as bytes, not {type(msg).__name__}")
        if envelope.dkim:
            from txsmtpclient.dkim import sign_message

            data = msg.encode("ascii") if isinstance(msg, str) else msg
            msg = sign_message(data, envelope.dkim)
        return self._send(msg, envelope)

    def _send(self, msg: bytes | str, envelope: Envelope) -> Deferred[dict[str, Reply]]:
        from_addr: str = envelope.sender
        to_addrs: Sequence[str] = envelope.recipients
        mail_options = (*envelope.mail_options, *raw_options(envelope.travel))
        rcpt_options = envelope.rcpt_options
        dsn = envelope.dsn
        refused: dict[str, Reply] = {}
        routable: list[str] = []
        for address in to_addrs:
            try:
                group_by_domain([address])
            except SMTPRoutingError as e:
                refused[address] = refusal_for(DirectResult(address, False, True, error=e))
            else:
                routable.append(address)
        if not routable:
            return succeed(Refused(refused))
        destinations = group_by_domain(routable)
        d = send_direct(
            from_addr,
            routable,
            msg,
            mail_options,
            rcpt_options,
            resolver=self.resolver,
            reactor=self.reactor,
            local_hostname=self.local_hostname,
            port=self.port,
            tls=self.tls,
            timeout=self.timeout,
            dns_timeout=self.dns_timeout,
            rng=self.rng,
            mta_sts=self.mta_sts if self.mta_sts is not None else False,
            tls_options_for=self.tls_options_for,
            dane=self.dane,
            gate=self.destinations,
            dsn_ret=dsn.ret if dsn is not None else None,
            dsn_envid=dsn.envid if dsn is not None else None,
            dsn_notify=dsn.notify if dsn is not None else None,
        )
        return d.addCallback(self._judge, destinations, refused)

    def _judge(
        self,
        results: dict[str, DirectResult],
        destinations: list[Destination],
        refused: dict[str, Reply],
    ) -> dict[str, Reply]:
        """
        Map the per-recipient results onto the refused dict the spool keeps
        per recipient; log each domain's TLS report.
        """
        for destination in destinations:
            first = results[destination.recipients[0]]
            self._report(first.tls_report)
            reply = first.reply
            self.log.info(
                "Direct delivery to {destination} via {mx}: {code} {reply}",
                destination=destination.domain,
                mx=first.mx,
                code=reply.code if reply is not None else None,
                reply=reply.message.decode("utf-8", "replace")
                if reply is not None
                else str(first.error),
                delivered=[r for r in destination.recipients if results[r].delivered],
            )
        delivered = [r for r in results.values() if r.delivered]
        undelivered = [r for r in results.values() if not r.delivered]
        deferred = [r for r in undelivered if isinstance(r.error, SMTPDestinationDeferred)]
        if not refused and undelivered and len(deferred) == len(undelivered) == len(results):
            # Nothing tried: the spool waits for the first destination to
            # open, without counting a failed attempt.
            errors = [r.error for r in deferred if isinstance(r.error, SMTPDestinationDeferred)]
            raise min(errors, key=lambda e: e.until)
        ambiguous = [r.error for r in undelivered if isinstance(r.error, SMTPAmbiguousDelivery)]
        unknown = (SMTPAmbiguousDelivery, SMTPDestinationDeferred)
        if (
            ambiguous
            and not delivered
            and not refused
            and all(isinstance(r.error, unknown) for r in undelivered)
        ):
            # Never reported as sent: the message's outcome is unknown (a
            # recipient refused or delivered elsewhere keeps its own record).
            raise ambiguous[0]
        for result in undelivered:
            refused[result.recipient] = refusal_for(result)
        finals = []
        for result in delivered:
            if result.reply is not None and result.reply not in finals:
                finals.append(result.reply)
        outcome = Refused.with_replies(refused, finals)
        # Each domain's mail host answered for its own recipients.
        outcome.accepted = {
            r.recipient: r.reply
            for r in delivered
            if r.reply is not None and r.reply != outcome.final
        }
        return outcome

    def _report(self, report: Sequence[TLSReportEntry]) -> None:
        for entry in report:
            self.log.warn(
                "TLS failure for {policy_domain} ({policy_type}: {result_type}) at {mx}: {reason}",
                policy_domain=entry.policy_domain,
                policy_type=entry.policy_type,
                result_type=entry.result_type,
                mx=entry.receiving_mx_hostname,
                reason=entry.failure_reason,
                tls_report=entry.as_json(),
            )
            if self.on_tls_report is not None:
                self.on_tls_report(entry)

    def close(self) -> Deferred[None]:
        """
        Nothing to close: each delivery closes its own sessions.
        """
        return succeed(None)
