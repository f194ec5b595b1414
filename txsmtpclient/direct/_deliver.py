"""
Direct delivery (RFC 5321 section 5.1): each recipient's domain is looked up
and its mail hosts are tried in MX order, over IPv6 and IPv4, with no relay
in between.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from email.parser import BytesHeaderParser
from email.policy import SMTP as SMTP_POLICY
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IResolver
from twisted.names import dns

from txsmtpclient._sendargs import envelope_for_call
from txsmtpclient._tls import TLSPolicy, check_policy
from txsmtpclient.client import SMTP
from txsmtpclient.commands import message_bytes
from txsmtpclient.direct._dane import TLSARecord
from txsmtpclient.direct._dns import default_resolver, lookup_addresses, lookup_mx
from txsmtpclient.direct._fetch import MTASTS, TLSOptionsFor
from txsmtpclient.direct._mtasts import Mode, STSPolicy, TLSReportEntry
from txsmtpclient.direct._results import DirectResult, Stop, gather
from txsmtpclient.direct._route import Destination, group_by_domain, order_mx
from txsmtpclient.direct._secure import DANE, DANEOptions
from txsmtpclient.errors import (
    SMTPAmbiguousDelivery,
    SMTPConnectError,
    SMTPDestinationDeferred,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupportedError,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPRoutingError,
    SMTPServerDisconnected,
    SMTPTLSError,
)
from txsmtpclient.message import header_block
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, Timeouts
from txsmtpclient.reply import Reply

__all__ = ["DestinationGate", "DirectResult", "send_direct"]


class DestinationGate(Protocol):
    """
    What a daemon puts in front of each destination (recipient domain) of
    :func:`send_direct`: a limit on sessions at once and a backoff.
    """

    def enter(self, destination: str) -> Deferred[None]:
        """
        Fire when ``destination`` may be delivered to now (a session slot is
        free); fail with :class:`~txsmtpclient.errors.SMTPDestinationDeferred`
        when it is backed off.  Cancelling it gives up the wait.
        """

    def leave(self, destination: str, results: dict[str, DirectResult]) -> None:
        """
        Give the slot back, with the domain's results (empty when the
        delivery was cancelled), to judge whether to back off.
        """


class _MoveOn(Exception):
    """
    This mail host could not take the message; try the next.

    :ivar result_type: the TLSRPT result type when TLS was the reason.
    """

    def __init__(self, error: SMTPException, result_type: str | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.result_type = result_type


@dataclass(frozen=True, slots=True)
class _Job:
    sender: str
    data: bytes
    mail_options: tuple[str, ...]
    rcpt_options: tuple[str, ...]
    resolver: IResolver
    reactor: Any
    local_hostname: str | None
    port: int
    tls: TLSPolicy
    timeout: Timeouts | float | None
    dns_timeout: float
    rng: random.Random | None
    mta_sts: MTASTS | None
    tls_options_for: TLSOptionsFor | None
    dane: DANE | None
    gate: DestinationGate | None
    dsn: dict[str, Any]
    stop: Stop


def send_direct(
    from_addr: str,
    to_addrs: str | Sequence[str],
    msg: str | bytes,
    mail_options: Sequence[str] = (),
    rcpt_options: Sequence[str] = (),
    *,
    resolver: IResolver | None = None,
    reactor: Any = None,
    local_hostname: str | None = None,
    port: int = 25,
    tls: TLSPolicy = "opportunistic",
    timeout: Timeouts | float | None = None,
    dns_timeout: float = 10.0,
    rng: random.Random | None = None,
    mta_sts: MTASTS | bool | None = True,
    tls_options_for: TLSOptionsFor | None = None,
    dane: DANE | None = None,
    gate: DestinationGate | None = None,
    dsn_ret: str | None = None,
    dsn_envid: str | None = None,
    dsn_notify: Sequence[str] | None = None,
) -> Deferred[dict[str, DirectResult]]:
    """
    Deliver a message straight to each recipient's mail hosts.

    The recipients are grouped by domain; each domain's MX records are
    looked up (``twisted.names``, never the blocking resolver) and tried by
    preference, randomly among equal preferences.  A domain with no MX is
    its own mail host (implicit MX); a null MX (RFC 7505) or a domain that
    does not exist fails its recipients permanently, a DNS failure or
    timeout temporarily.  Each host's IPv6 and IPv4 addresses are tried in
    turn; the next host is tried after a refused or failed connection, a 4xx
    greeting or EHLO reply, or a TLS failure; a 5xx stops.  A connection lost
    after the final dot is not retried elsewhere: the outcome is unknown
    (:class:`~txsmtpclient.SMTPAmbiguousDelivery`).

    :param msg: the message; read once, sent to each domain.
    :param resolver: the ``IResolver`` to query (default: the system's
        resolvers through ``twisted.names``).
    :param port: the port of every mail host (25; tests use others).
    :param tls: the STARTTLS policy for every host, as for :class:`SMTP`;
        certificates are checked against the MX host name.
    :param timeout: the SMTP stage timeouts, as for :class:`SMTP`.
    :param dns_timeout: seconds for each DNS query.
    :param rng: the random source for ordering equal preferences.
    :param mta_sts: apply MTA-STS (RFC 8461): ``True`` (the default) with a
        cache for this call only, an :class:`MTASTS` to share its cache
        between calls, ``False`` or ``None`` to ignore policies.  Under an
        ``enforce`` policy only matching MX hosts are used, over verified
        TLS, and a failure stays temporary; under ``testing`` delivery goes
        on as without a policy and the failures are reported.
    :param tls_options_for: host name -> TLS options verifying that host's
        certificate, for STARTTLS to MX hosts and the MTA-STS policy fetch
        (default: the system's trust roots).  A message whose header says
        ``TLS-Required: No`` (RFC 8689 section 5) is sent with MTA-STS and
        DANE set aside.
    :param dane: DANE (RFC 7672) through a local validating resolver: an MX
        host with DNSSEC-validated TLSA records (and a validated MX RRset)
        must offer STARTTLS with a certificate they match, in place of the
        WebPKI and ahead of MTA-STS.  ``None`` (the default): no DANE.
    :param gate: entered before each domain is delivered to and left with
        its results (a daemon's per-destination concurrency and backoff); a
        domain the gate defers gets temporary results whose error is the
        :class:`~txsmtpclient.errors.SMTPDestinationDeferred`.
    :param dsn_ret: RFC 3461 ``RET``, as for :meth:`SMTP.sendmail`.
    :param dsn_envid: RFC 3461 ``ENVID``, as for :meth:`SMTP.sendmail`.
    :param dsn_notify: RFC 3461 ``NOTIFY``, as for :meth:`SMTP.sendmail`.
    :returns: a Deferred firing with a :class:`DirectResult` per recipient;
        it never fails for a recipient's sake.  Cancelling it cancels every
        domain's delivery and fires once their sessions are closed: with
        the results of the recipients already decided for good (the others
        temporary), or with :class:`CancelledError` when none was.
    :raises SMTPArgumentError: (at once) for a message that cannot be sent.
    :raises SMTPRoutingError: (at once) for an address with no domain or a
        malformed domain.
    :raises TypeError: for arguments of the wrong type.
    """
    if isinstance(to_addrs, str):
        to_addrs = [to_addrs]
    # The one check of a send's arguments, before any lookup or connection
    # (each host's session checks the same again, cheaply).
    envelope_for_call(
        from_addr,
        to_addrs,
        mail_options,
        rcpt_options,
        dsn_ret,
        dsn_envid,
        dsn_notify,
        False,
        None,
        None,
    )
    destinations = group_by_domain(to_addrs)
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    data = message_bytes(msg)
    if _tls_not_required(data):
        # RFC 8689 section 5: the sender asks that the recipients' TLS
        # policies be set aside for this message (opportunistic TLS stays).
        mta_sts, dane = False, None
    job = _Job(
        from_addr,
        data,
        tuple(mail_options),
        tuple(rcpt_options),
        resolver if resolver is not None else default_resolver(),
        reactor,
        local_hostname,
        port,
        check_policy(tls),
        timeout,
        dns_timeout,
        rng,
        _mta_sts(mta_sts, tls_options_for),
        tls_options_for,
        dane,
        gate,
        {"dsn_ret": dsn_ret, "dsn_envid": dsn_envid, "dsn_notify": dsn_notify},
        Stop(),
    )
    parts = [Deferred.fromCoroutine(_deliver_domain(job, d)) for d in destinations]
    return Deferred.fromCoroutine(gather(job.stop, destinations, parts))


def _tls_not_required(data: bytes) -> bool:
    """
    Whether the message's header says ``TLS-Required: No`` (RFC 8689).
    """
    if b"tls-required" not in data[:65536].lower():
        return False
    headers = BytesHeaderParser(policy=SMTP_POLICY).parsebytes(header_block(data))
    return any(str(v).strip().lower() == "no" for v in headers.get_all("TLS-Required", []))


def _mta_sts(choice: MTASTS | bool | None, tls_options_for: TLSOptionsFor | None) -> MTASTS | None:
    if isinstance(choice, MTASTS):
        return choice
    return MTASTS(tls_options_for=tls_options_for) if choice else None


def _all(
    destination: Destination,
    report: Sequence[TLSReportEntry],
    *,
    delivered: bool = False,
    final: bool,
    **kwargs: Any,
) -> dict[str, DirectResult]:
    return {
        r: DirectResult(r, delivered, final or delivered, tls_report=tuple(report), **kwargs)
        for r in destination.recipients
    }


async def _deliver_domain(job: _Job, destination: Destination) -> dict[str, DirectResult]:
    if job.gate is None:
        return await _deliver_routed(job, destination)
    try:
        await job.gate.enter(destination.domain)
    except SMTPDestinationDeferred as e:
        return _all(destination, [], final=False, error=e)
    results: dict[str, DirectResult] = {}
    try:
        results = await _deliver_routed(job, destination)
    finally:
        job.gate.leave(destination.domain, results)
    return results


async def _deliver_routed(job: _Job, destination: Destination) -> dict[str, DirectResult]:
    report: list[TLSReportEntry] = []
    # Host -> how its TLS is checked: DANE options, "sts" (verified WebPKI,
    # enforced MTA-STS), or absent (the caller's TLS policy).
    secured: dict[str, DANEOptions | str] = {}
    errors: list[SMTPException] = []
    try:
        if destination.literal is not None:
            hosts: list[tuple[str, list[str]]] = [(destination.literal, [destination.literal])]
        else:
            lookup = destination.lookup
            assert lookup is not None
            records = await lookup_mx(job.resolver, lookup, job.dns_timeout)
            names = order_mx(records, destination.domain, job.rng) or [lookup]
            if job.dane is not None:
                for name, found in (await _dane_hosts(job, lookup, names)).items():
                    if isinstance(found, SMTPException):
                        # RFC 7672 section 2.2: a host whose TLSA lookup
                        # failed is not used.
                        errors.append(found)
                        names.remove(name)
                    else:
                        secured[name] = DANEOptions(name, found, (name, lookup))
            if job.mta_sts is not None:
                job.stop.check()
                found_policy = await job.mta_sts.discover(
                    lookup, job.resolver, job.reactor, job.dns_timeout
                )
                report.extend(found_policy.report)
                # DANE takes precedence over MTA-STS (RFC 8461 section 2).
                names, enforced = _apply_policy(
                    found_policy.policy, lookup, names, report, set(secured)
                )
                for name in enforced:
                    secured.setdefault(name, "sts")
            hosts = [(name, []) for name in names]
    except SMTPRoutingError as e:
        return _all(destination, report, final=not e.temporary, error=e)
    for host, known in hosts:
        job.stop.check()
        try:
            addresses = known or await lookup_addresses(job.resolver, host, job.dns_timeout)
        except SMTPRoutingError as e:
            errors.append(e)
            continue
        check = secured.get(host)
        for address in addresses:
            try:
                results = await _try_host(job, destination, host, address, check)
            except _MoveOn as move:
                errors.append(move.error)
                if check is not None and move.result_type is not None:
                    kind = "sts" if check == "sts" else "tlsa"
                    report.append(
                        TLSReportEntry(
                            kind, destination.domain, move.result_type, host, str(move.error)
                        )
                    )
                continue
            return {r: replace(v, tls_report=tuple(report)) for r, v in results.items()}
    if not errors:
        error: SMTPException = SMTPRoutingError(
            f"550 5.1.2 no mail host of {destination.domain} has an address", temporary=False
        )
        return _all(destination, report, final=True, error=error)
    # Every host failed: temporary unless each failure was a permanent one,
    # and always temporary where DANE or MTA-STS applied (RFC 7672 section
    # 2.2, RFC 8461 section 5.1).
    final = not secured and not any(e.temporary for e in errors)
    return _all(destination, report, final=final, error=errors[-1])


async def _dane_hosts(
    job: _Job, domain: str, names: list[str]
) -> dict[str, list[TLSARecord] | SMTPException]:
    """
    The usable TLSA records of each MX host that has them, when the MX
    RRset is DNSSEC-validated (RFC 7672 section 2.2.1); a failed TLSA
    lookup maps to its error.
    """
    assert job.dane is not None
    mx = await job.dane.query(job.reactor, domain, dns.MX)
    if not mx.secure:
        return {}
    found: dict[str, list[TLSARecord] | SMTPException] = {}
    for name in names:
        job.stop.check()
        try:
            records = await job.dane.tlsa(job.reactor, name, job.port)
        except SMTPRoutingError as e:
            found[name] = e
            continue
        if records:
            found[name] = records
    return found


def _apply_policy(
    policy: STSPolicy | None,
    domain: str,
    names: list[str],
    report: list[TLSReportEntry],
    exempt: set[str],
) -> tuple[list[str], list[str]]:
    """
    The MX hosts an MTA-STS policy lets us use, and those of them it binds
    to verified TLS (none unless the policy is enforced).

    :param exempt: hosts secured by DANE, to which the policy does not apply.
    :raises SMTPRoutingError: (temporary) when an enforced policy leaves none.
    """
    if policy is None or policy.mode is Mode.NONE:
        return names, []
    for name in names:
        if name not in exempt and not policy.allows(name):
            report.append(
                TLSReportEntry(
                    "sts", domain, "validation-failure", name, "MX host not named by the policy"
                )
            )
    if policy.mode is Mode.TESTING:
        return names, []
    allowed = [n for n in names if n in exempt or policy.allows(n)]
    if not allowed:
        raise SMTPRoutingError(
            f"451 4.7.5 no MX host of {domain} matches its MTA-STS policy", temporary=True
        )
    return allowed, [n for n in allowed if n not in exempt]


async def _try_host(
    job: _Job,
    destination: Destination,
    host: str,
    address: str,
    check: DANEOptions | str | None,
) -> dict[str, DirectResult]:
    """
    Offer the domain's recipients to one mail host at one address.

    :param check: how TLS must be verified, if it must: by the host's TLSA
        records (DANE options), or ``"sts"`` for the WebPKI under an
        enforced MTA-STS policy.
    :raises _MoveOn: when the next host should be tried.
    :raises CancelledError: when the call was cancelled (nothing started).
    """
    job.stop.check()
    verified_tls = check is not None
    if isinstance(check, DANEOptions):
        tls_options: IOpenSSLClientConnectionCreator | None = check
    else:
        tls_options = job.tls_options_for(host) if job.tls_options_for is not None else None
    smtp = SMTP(
        local_hostname=job.local_hostname,
        reactor=job.reactor,
        # Under a policy, STARTTLS is checked below rather than by the
        # client, to tell "not offered" from "did not verify" (RFC 8460).
        tls="opportunistic" if verified_tls else job.tls,
        tls_options=tls_options,
        server_hostname=host,
        timeout=DEFAULT_TIMEOUTS if job.timeout is None else job.timeout,
    )
    target = f"[{address}]:{job.port}" if ":" in address else f"{address}:{job.port}"
    recipients = destination.recipients
    try:
        try:
            await smtp.connect(target)
            await smtp.ehlo_or_helo_if_needed()
        except (SMTPConnectError, SMTPHeloError) as e:
            if e.smtp_code >= 500:
                return _all(destination, [], final=True, reply=_reply(e), mx=host, error=e)
            raise _MoveOn(e) from e
        except SMTPTLSError as e:
            raise _MoveOn(e, "validation-failure") from e
        except (SMTPServerDisconnected, ConnectError, OSError) as e:
            raise _MoveOn(_disconnected(e, host, address)) from e
        session = smtp.sock
        if verified_tls and (session is None or not session.tls):
            await smtp.close()
            error = SMTPTLSError(f"{host} does not offer STARTTLS, which the policy requires")
            raise _MoveOn(error, "starttls-not-supported")
        try:
            refused = await smtp.sendmail(
                job.sender, recipients, job.data, job.mail_options, job.rcpt_options, **job.dsn
            )
        except SMTPAmbiguousDelivery as e:
            return _all(destination, [], final=False, mx=host, error=e)
        except SMTPRecipientsRefused as e:
            return {
                r: DirectResult(r, False, reply.code >= 500, reply, host, e)
                for r, reply in ((r, Reply(*e.recipients[r])) for r in recipients)
            }
        except SMTPResponseException as e:
            return _all(
                destination, [], final=e.smtp_code >= 500, reply=_reply(e), mx=host, error=e
            )
        except SMTPTLSError as e:
            raise _MoveOn(e, "validation-failure") from e
        except SMTPNotSupportedError as e:
            return _all(destination, [], final=True, mx=host, error=e)
        except SMTPServerDisconnected as e:
            # Lost before the end of the message: nothing was accepted.
            raise _MoveOn(e) from e
        results = {}
        for r in recipients:
            if r in refused:
                reply = refused[r]
                results[r] = DirectResult(r, False, reply.code >= 500, reply, host)
            else:
                results[r] = DirectResult(r, True, True, getattr(refused, "final", None), host)
        return results
    finally:
        await _close_quietly(smtp)


def _reply(error: SMTPResponseException) -> Reply:
    message = error.smtp_error
    return Reply(error.smtp_code, message if isinstance(message, bytes) else message.encode())


def _disconnected(error: BaseException, host: str, address: str) -> SMTPException:
    if isinstance(error, SMTPException):
        return error
    wrapped = SMTPServerDisconnected(f"could not connect to {host} at {address}: {error}")
    wrapped.__cause__ = error
    return wrapped


async def _close_quietly(smtp: SMTP) -> None:
    # The outcome is decided; a failing QUIT must not change it.
    try:
        if smtp.sock is not None and smtp.sock.usable:
            await smtp.quit()
        else:
            await smtp.close()
    except Exception:
        await smtp.close()
