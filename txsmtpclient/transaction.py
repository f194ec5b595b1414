"""
One mail transaction, planned and judged without I/O: which ESMTP options to
send given what the server advertised, and what the replies to MAIL and RCPT
mean (smtplib's ``sendmail`` semantics).

Sans-IO; nothing here imports Twisted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from txsmtpclient._checks import ArgumentError, check_dsn
from txsmtpclient._checks import check_argument as _check_argument
from txsmtpclient._checks import check_options as _check_options
from txsmtpclient.commands import (
    encode_command,
    extension_for_option,
    plain_addresses,
    quote_address,
    quote_checked_address,
    xtext_encode,
)
from txsmtpclient.errors import (
    SMTPArgumentError,
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
)
from txsmtpclient.extensions import Extensions
from txsmtpclient.mailparams import DeliverBy, Travel, parse_travel_options, travel_options
from txsmtpclient.reply import Reply

if TYPE_CHECKING:
    from txsmtpclient.dkim import DKIMSigner

__all__ = [
    "DSN",
    "Envelope",
    "Plan",
    "Refused",
    "judge_recipients",
    "plan_transaction",
    "sender_error",
]


@dataclass(frozen=True, slots=True)
class DSN:
    """
    Delivery status notification requests (RFC 3461), checked when made.

    :ivar ret: ``"FULL"`` or ``"HDRS"``: what a bounce returns.
    :ivar envid: the envelope id echoed in notices.
    :ivar notify: when to notify for each recipient: ``("NEVER",)`` or some
        of ``SUCCESS``, ``FAILURE``, ``DELAY``.
    :ivar orcpt: send each recipient's original address as ``ORCPT``.
    :raises SMTPArgumentError: (when made) as :meth:`check`.
    """

    ret: str | None = None
    envid: str | None = None
    notify: tuple[str, ...] = ()
    orcpt: bool = False

    def __post_init__(self) -> None:
        try:
            ret, _envid, notify = check_dsn(self.ret, self.envid, self.notify)
        except ArgumentError as e:
            raise SMTPArgumentError(*e.args) from None
        # Normalised in place: the value is new and nobody holds it yet.
        object.__setattr__(self, "ret", ret)
        object.__setattr__(self, "notify", notify)
        object.__setattr__(self, "orcpt", bool(self.orcpt))

    @classmethod
    def check(
        cls,
        ret: str | None = None,
        envid: str | None = None,
        notify: str | Sequence[str] | None = None,
        orcpt: bool = False,
    ) -> DSN | None:
        """
        Check a caller's DSN requests (``sendmail``'s ``dsn_*`` arguments);
        ``None`` when there are none.

        :raises SMTPArgumentError: for a RET other than FULL/HDRS, NOTIFY
            values other than SUCCESS/FAILURE/DELAY or NEVER alone, or an
            ENVID that is not printable ASCII of at most 100 characters.
        """
        if ret is None and envid is None and not notify and not orcpt:
            return None
        words = tuple(notify.split(",")) if isinstance(notify, str) else tuple(notify or ())
        return cls(ret, envid, words, orcpt)

    def mail_options(self) -> list[str]:
        """
        The MAIL parameters.
        """
        options = []
        if self.ret:
            options.append(f"RET={self.ret}")
        if self.envid:
            options.append(f"ENVID={xtext_encode(self.envid)}")
        return options

    def rcpt_options(self, recipient: str) -> list[str]:
        """
        The RCPT parameters for one recipient.
        """
        options = []
        if self.notify:
            options.append("NOTIFY=" + ",".join(self.notify))
        if self.orcpt:
            address = quote_address(recipient)[1:-1]
            if address.isascii():
                options.append(f"ORCPT=rfc822;{xtext_encode(address)}")
            else:
                # RFC 6533 section 3: utf-8-addr-xtext, non-ASCII kept as is.
                options.append(f"ORCPT=utf-8;{_utf8_xtext(address)}")
        return options


def _utf8_xtext(value: str) -> str:
    return "".join(
        c if (ord(c) > 127 or (33 <= ord(c) <= 126 and c not in "+=\\")) else f"\\x{{{ord(c):X}}}"
        for c in value
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    """
    Everything about one message but its content: the value every send path
    takes (``SMTP.sendmail``, ``SMTPConnectionPool.sendmail``, the one-shot
    ``txsmtpclient.sendmail`` and their ``send_message``, as ``envelope=``;
    the daemon builds one per delivery attempt).

    Checked when made, however it is made, so that no unchecked value
    reaches a command line::

        Envelope("me@example.com", ("you@example.com",),
                 dsn=DSN(ret="HDRS", notify=("FAILURE",)))

    Options added later (DKIM signing, REQUIRETLS, FUTURERELEASE ...) are
    fields here, keyword-only with a default: no send path's signature
    changes for them.

    :ivar sender: the envelope sender (``""`` for the null sender).
    :ivar recipients: the recipients; a single ``str`` is taken as one.
    :ivar mail_options: MAIL parameters, sent only when the server
        advertises their extension.
    :ivar rcpt_options: RCPT parameters for every recipient.
    :ivar dsn: delivery status notification requests.
    :ivar dkim: the DKIM signers to sign the message with as it is sent
        (:mod:`txsmtpclient.dkim`); a single signer is taken as one.
    :ivar require_tls: REQUIRETLS (RFC 8689): every hop over verified TLS.
    :ivar hold_for: FUTURERELEASE (RFC 4865): seconds for the server to hold
        the message before delivering it.
    :ivar hold_until: FUTURERELEASE: an aware datetime to hold it until.
    :ivar deliver_by: DELIVERBY (RFC 2852): seconds (return the message when
        late), or a :class:`~txsmtpclient.mailparams.DeliverBy`.
    :ivar priority: MT-PRIORITY (RFC 6710): -9 to 9.

    These five are sent only when the server advertises their extension;
    otherwise sending fails with
    :class:`~txsmtpclient.errors.SMTPNotSupportedError` before MAIL.
    Given as raw ``mail_options`` (``"REQUIRETLS"``, ``"HOLDFOR=60"``,
    ``"BY=3600;R"``, ``"MT-PRIORITY=3"``: the spool's form) they are read
    into these fields.

    :raises TypeError: (when made) for values of the wrong type.
    :raises SMTPArgumentError: (when made) for control characters, an empty
        recipient, no recipients, or an option that is not one word.
    """

    sender: str
    recipients: tuple[str, ...]
    mail_options: tuple[str, ...] = ()
    rcpt_options: tuple[str, ...] = ()
    dsn: DSN | None = None
    dkim: tuple[DKIMSigner, ...] = ()
    require_tls: bool = False
    hold_for: int | None = None
    hold_until: datetime | None = None
    deliver_by: DeliverBy | None = None
    priority: int | None = None

    def __post_init__(self) -> None:
        # The shared checks, called directly (this runs for every message):
        # their ArgumentError becomes the client's error once, at the end.
        try:
            _check_argument(self.sender, "from_addr")
            recipients: object = self.recipients
            if isinstance(recipients, str):
                recipients = (recipients,)
            elif isinstance(recipients, bytes) or not isinstance(recipients, Sequence):
                raise TypeError(
                    f"to_addrs must be a str or a sequence of str, not {type(recipients).__name__}"
                )
            checked = tuple(recipients)
            if not plain_addresses(checked):
                # Not all plain local@domain (or none at all): look at each,
                # so that the error names the culprit.
                checked = tuple(_check_argument(r, "recipient address") for r in checked)
                if not checked:
                    raise ArgumentError(
                        "to_addrs is empty: a message needs at least one recipient"
                    )
                for address in checked:
                    if quote_checked_address(address) == "<>":
                        raise ArgumentError(f"recipient address {address!r} is empty")
            mail, rcpt = self.mail_options, self.rcpt_options
            # No options (the usual case): nothing to check.
            if mail.__class__ is not tuple or mail:
                mail = _check_options(mail, "mail option")
            if rcpt.__class__ is not tuple or rcpt:
                rcpt = _check_options(rcpt, "recipient option")
            if (
                mail
                or self.require_tls
                or self.hold_for is not None
                or self.hold_until is not None
                or self.deliver_by is not None
                or self.priority is not None
            ):
                mail = self._read_travel(mail)
        except ArgumentError as e:
            raise SMTPArgumentError(*e.args) from None
        if self.dsn is not None and not isinstance(self.dsn, DSN):
            raise TypeError(f"dsn must be a DSN, not {type(self.dsn).__name__}")
        # Normalised in place: the value is new and nobody holds it yet.
        dkim = self.dkim
        # No signers (the usual case, an empty tuple): nothing to do.
        if dkim.__class__ is not tuple or dkim:
            object.__setattr__(self, "dkim", _signers(dkim))
        object.__setattr__(self, "recipients", checked)
        object.__setattr__(self, "mail_options", mail)
        object.__setattr__(self, "rcpt_options", rcpt)

    def _read_travel(self, mail: tuple[str, ...]) -> tuple[str, ...]:
        """
        Move the travel parameters out of ``mail`` into the fields, and
        check them together.

        :raises ArgumentError: for bad values, or a field and a raw option
            that disagree.
        """
        rest, parsed = parse_travel_options(mail)
        by = self.deliver_by
        if isinstance(by, int) and not isinstance(by, bool):
            by = DeliverBy(by)
        given = Travel(self.require_tls, self.hold_for, self.hold_until, by, self.priority)
        merged: dict[str, Any] = {}
        for name in ("require_tls", "hold_for", "hold_until", "deliver_by", "priority"):
            mine, raw = getattr(given, name), getattr(parsed, name)
            if mine not in (None, False) and raw not in (None, False) and mine != raw:
                raise ArgumentError(f"{name} and mail_options disagree: {mine!r}, {raw!r}")
            merged[name] = mine if mine not in (None, False) else raw
        Travel(**merged)  # checks the values together
        for name, value in merged.items():
            object.__setattr__(self, name, value)
        return rest

    @property
    def travel(self) -> Travel:
        """
        The REQUIRETLS, FUTURERELEASE, DELIVERBY and MT-PRIORITY requests.
        """
        return Travel(
            self.require_tls, self.hold_for, self.hold_until, self.deliver_by, self.priority
        )

    @property
    def travels(self) -> bool:
        """
        Whether any of those is asked for.
        """
        return (
            self.require_tls
            or self.hold_for is not None
            or self.hold_until is not None
            or self.deliver_by is not None
            or self.priority is not None
        )

    @classmethod
    def check(
        cls,
        sender: str,
        recipients: str | Sequence[str],
        mail_options: Sequence[str] = (),
        rcpt_options: Sequence[str] = (),
        dsn: DSN | None = None,
        dkim: DKIMSigner | Sequence[DKIMSigner] | None = None,
    ) -> Envelope:
        """
        The envelope for smtplib-style arguments (any sequences).

        :raises TypeError: for values of the wrong type.
        :raises SMTPArgumentError: as :class:`Envelope`.
        """
        # The constructor checks each and makes it a tuple.
        return cls(sender, recipients, mail_options, rcpt_options, dsn, dkim)  # type: ignore[arg-type]

    @property
    def needs_smtputf8(self) -> bool:
        """
        Whether an address holds non-ASCII characters (RFC 6531).
        """
        # One C-level pass over all the recipients, not a call for each.
        return not (self.sender.isascii() and "".join(self.recipients).isascii())


def _signers(dkim: DKIMSigner | Sequence[DKIMSigner] | None) -> tuple[DKIMSigner, ...]:
    if dkim is None or (isinstance(dkim, (tuple, list)) and not dkim):
        return ()
    # Imported only when asked for: it needs the optional dkimpy.
    from txsmtpclient.dkim import as_signers

    return as_signers(dkim)


@dataclass(frozen=True, slots=True)
class Plan:
    """
    The command lines of one transaction.

    :ivar dropped: options left out because the server did not advertise
        their extension.
    """

    mail: bytes
    rcpts: tuple[bytes, ...]
    dropped: tuple[str, ...]
    #: BODY=BINARYMIME was asked for: the message must go by BDAT, as is.
    binary: bool = False


def _supported(options: Sequence[str], features: Extensions | None) -> tuple[list[str], list[str]]:
    kept: list[str] = []
    dropped: list[str] = []
    for option in options:
        if features is not None and features.has(extension_for_option(option)):
            kept.append(option)
        else:
            dropped.append(option)
    return kept, dropped


def plan_transaction(
    envelope: Envelope,
    features: Extensions | None,
    size: int | None,
    eight_bit: bool,
    tls: bool = False,
) -> Plan:
    """
    Build MAIL and RCPT lines for ``envelope``.

    :param features: the server's EHLO extensions; ``None`` after HELO,
        which suppresses every ESMTP option (as smtplib).
    :param size: the message size to declare when SIZE is advertised.
    :param eight_bit: whether the message holds bytes over 127.
    :param tls: whether the session runs over (verified) TLS, for REQUIRETLS.
    :raises SMTPNotSupportedError: for non-ASCII addresses without SMTPUTF8,
        8-bit data without 8BITMIME (never sent corrupted), or a travel
        option (:mod:`txsmtpclient.mailparams`) the server cannot honour.
    :raises SMTPSenderRefused: (552) when ``size`` is over the server's
        advertised SIZE limit (RFC 1870 section 6.1), before MAIL is sent.
    """
    dsn = envelope.dsn
    requested = list(envelope.mail_options) + (dsn.mail_options() if dsn else [])
    mail_options, dropped = _supported(requested, features)
    rcpt_options, rcpt_dropped = _supported(envelope.rcpt_options, features)
    dsn_ok = dsn is not None and features is not None and features.has("dsn")
    if dsn is not None and not dsn_ok:
        dropped.extend(dsn.rcpt_options(envelope.recipients[0]))
    upper = [o.upper() for o in mail_options]
    utf8 = envelope.needs_smtputf8 or "SMTPUTF8" in upper
    if utf8:
        if features is None or not features.has("smtputf8"):
            raise SMTPNotSupportedError(
                "a non-ASCII address needs the SMTPUTF8 extension, which the server "
                "does not advertise"
            )
        if "SMTPUTF8" not in upper:
            mail_options.append("SMTPUTF8")
    if envelope.travels:
        mail_options.extend(travel_options(envelope.travel, features, tls))
    if eight_bit and not any(o.startswith("BODY=") for o in upper):
        if features is None or not features.has("8bitmime"):
            raise SMTPNotSupportedError(
                "the message holds 8-bit data and the server does not advertise 8BITMIME; "
                "encode it as 7-bit (quoted-printable or base64) first"
            )
        mail_options.append("BODY=8BITMIME")
    if size is not None and features is not None and features.has("size"):
        limit = features.size_limit
        if limit is not None and size > limit:
            raise SMTPSenderRefused(
                552,
                f"5.3.4 message of {size} bytes exceeds the server's limit of {limit} bytes",
                envelope.sender,
            )
        mail_options.insert(0, f"SIZE={size}")
    tail = "".join(" " + option for option in mail_options)
    mail = encode_command("MAIL", f"FROM:{quote_address(envelope.sender)}{tail}", utf8=utf8)
    rcpt_tail = "".join(" " + option for option in rcpt_options)
    # Every part was checked for control characters by Envelope.check and
    # check_options, so the lines are built directly rather than through
    # encode_command: with a thousand recipients the re-checks add up.
    if dsn_ok:
        text = "".join(
            f"RCPT TO:{quote_checked_address(r)}{rcpt_tail}{_dsn_tail(dsn, dsn_ok, r)}\r\n"
            for r in envelope.recipients
        )
    else:
        recipients = envelope.recipients
        if plain_addresses(recipients):
            # Each quotes as "<address>": one join builds every line.
            joined = f">{rcpt_tail}\r\nRCPT TO:<".join(recipients)
            text = f"RCPT TO:<{joined}>{rcpt_tail}\r\n"
        else:
            text = "".join(
                f"RCPT TO:{quote_checked_address(r)}{rcpt_tail}\r\n" for r in envelope.recipients
            )
    if not utf8 and not text.isascii():
        # Non-ASCII only in an option: encode_command names it.
        for line in text.split("\r\n")[:-1]:
            encode_command(line)
    encoded = text.encode("utf-8")
    # No part holds a CR or LF (all were checked), so the only line breaks
    # are the CRLFs put there above.
    rcpts = tuple(encoded.splitlines(keepends=True))
    binary = "BODY=BINARYMIME" in upper
    if binary and (features is None or not features.has("chunking")):
        raise SMTPNotSupportedError("BODY=BINARYMIME needs the server's CHUNKING extension")
    return Plan(mail, rcpts, tuple(dropped + rcpt_dropped), binary)


def _dsn_tail(dsn: DSN | None, supported: bool, recipient: str) -> str:
    if dsn is None or not supported:
        return ""
    return "".join(" " + option for option in dsn.rcpt_options(recipient))


class Refused(dict[str, Reply]):
    """
    What ``sendmail`` fires with: smtplib's ``{address: reply}`` of refused
    recipients (a plain dict to code written for smtplib), plus the server's
    replies to the end of the message, where a relay's queue id is
    ("250 2.0.0 Ok: queued as ABC123").

    :ivar final: the reply to the final dot (or ``BDAT ... LAST``); for LMTP
        the first recipient's.
    :ivar finals: every reply to the end of the message (one per accepted
        recipient for LMTP).
    :ivar accepted: the reply to the end of the message for each accepted
        recipient whose reply is not :attr:`final` (direct delivery: each
        domain's mail host answers for its own recipients); empty when
        :attr:`final` answers for all.
    """

    final: Reply | None = None
    finals: tuple[Reply, ...] = ()
    accepted: Mapping[str, Reply] = MappingProxyType({})

    @classmethod
    def with_replies(cls, refused: dict[str, Reply], finals: Sequence[Reply]) -> Refused:
        """
        ``refused`` with the replies to the end of the message attached.
        """
        result = cls(refused)
        result.finals = tuple(finals)
        result.final = result.finals[0] if result.finals else None
        return result


def judge_recipients(
    recipients: Sequence[str], replies: Sequence[Reply]
) -> tuple[dict[str, Reply], SMTPRecipientsRefused | None]:
    """
    Fold the replies to RCPT into smtplib's refused-recipients dict.

    :returns: the refused recipients, and the exception to raise when every
        recipient was refused (``None`` when at least one was accepted).
    """
    refused = {
        r: reply
        for r, reply in zip(recipients, replies, strict=True)
        if reply.code not in (250, 251)
    }
    if len(refused) == len(recipients):
        return refused, SMTPRecipientsRefused(refused)
    return refused, None


def sender_error(sender: str, reply: Reply) -> SMTPResponseException | None:
    """
    The error for a reply to MAIL, or ``None`` when it accepted the sender.
    """
    if reply.code == 250:
        return None
    return SMTPSenderRefused(reply.code, reply.message, sender)
