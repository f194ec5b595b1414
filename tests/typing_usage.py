"""
Typical calls a user makes, type-checked with ``mypy --strict`` (not a test
module: pytest does not collect it, and it is never run).  If a public
signature or return type regresses, mypy fails on this file.
"""

from __future__ import annotations

import contextlib
import smtplib

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import react

import txsmtpclient
from txsmtpclient import (
    SMTP,
    Reply,
    SMTPClientFactory,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPServerDisconnected,
    Timeouts,
)
from txsmtpclient.pool import SMTPConnectionPool
from txsmtpclient.transaction import DSN, Envelope


async def typical(reactor: IReactorTime) -> None:
    smtp = SMTP(local_hostname="client.example", timeout=Timeouts(rcpt=60.0), reactor=reactor)
    greeting: Reply = await smtp.connect("127.0.0.1", 2525)
    code: int = greeting.code
    message: bytes = greeting.message
    enhanced: str | None = greeting.enhanced_code
    ehlo: Reply = await smtp.ehlo()
    if smtp.has_option("size"):
        limit: str = smtp.esmtp_features["size"]
        del limit
    refused: dict[str, Reply] = await smtp.sendmail(
        "a@example.com", ["b@example.com"], b"Subject: hi\r\n\r\nbody\r\n"
    )
    refused = await smtp.sendmail("a@example.com", "b@example.com", "ASCII text")
    for address, (rcode, rmessage) in refused.items():
        print(address, rcode, rmessage.decode())
    noop: Reply = await smtp.noop()
    rset: Reply = await smtp.rset()
    vrfy: Reply = await smtp.verify("b@example.com")
    helptext: bytes = await smtp.help()
    docmd: Reply = await smtp.docmd("XFOO", "bar")
    smtp.set_debuglevel(1)
    mail: Reply = await smtp.mail("a@example.com", ["BODY=8BITMIME"])
    rcpt: Reply = await smtp.rcpt("b@example.com")
    data: Reply = await smtp.data(b"hi")
    bye: Reply = await smtp.quit()
    await smtp.close()
    print(code, message, enhanced, ehlo, noop, rset, vrfy, helptext, docmd, mail, rcpt, data)
    print(bye)


async def chained(reactor: IReactorTime) -> None:
    smtp = SMTP("localhost:2525", reactor=reactor, timeout=30.0)
    sending: Deferred[dict[str, Reply]] = smtp.sendmail("a@x", ["b@x"], b"hi")
    quitting: Deferred[Reply] = smtp.quit()
    try:
        await sending
    except SMTPRecipientsRefused as e:
        per_recipient: dict[str, Reply] = e.recipients
        print(per_recipient, e.temporary)
    except SMTPResponseException as e:
        smtp_code: int = e.smtp_code
        smtp_error: bytes = e.smtp_error
        print(smtp_code, smtp_error, e.reply.enhanced_code)
    except smtplib.SMTPException:
        pass
    with contextlib.suppress(SMTPServerDisconnected):
        await quitting


async def one_shot(reactor: IReactorTime) -> None:
    refused: dict[str, Reply] = await txsmtpclient.sendmail(
        "127.0.0.1:2525", "a@x", ["b@x"], b"hi", reactor=reactor
    )
    refused = await txsmtpclient.sendmail("localhost", "a@x", "b@x", "hi", port=2525)
    print(refused)


async def with_envelope(reactor: IReactorTime) -> None:
    envelope = Envelope("a@x", ("b@x",), dsn=DSN(ret="HDRS", notify=("FAILURE",)))
    smtp = SMTP("127.0.0.1:2525", reactor=reactor)
    refused: dict[str, Reply] = await smtp.sendmail(msg=b"hi", envelope=envelope)
    pool = SMTPConnectionPool("127.0.0.1", 2525, reactor=reactor)
    refused = await pool.sendmail("a@x", ["b@x"], b"hi", dsn_ret="FULL")
    refused = await txsmtpclient.sendmail(
        "127.0.0.1:2525", msg=b"hi", envelope=envelope, pool=pool
    )
    served: bool = pool.serves("127.0.0.1:2525")
    print(refused, served)


async def with_factory(reactor: IReactorTime) -> None:
    factory = SMTPClientFactory(local_hostname="client.example", reactor=reactor)
    smtp: SMTP = await factory.deferred
    await smtp.sendmail("a@x", "b@x", b"hi")


async def signed(reactor: IReactorTime) -> None:
    from txsmtpclient.dkim import DKIMSigner

    rsa = DKIMSigner.from_file("rsa.pem", domain="example.com", selector="rsa2026")
    ed = DKIMSigner("example.com", "ed2026", b"...", canonicalization="relaxed/simple")
    record: str = rsa.dns_record()
    smtp = SMTP(reactor=reactor)
    refused: dict[str, Reply] = await smtp.sendmail("a@x", "b@x", b"hi", dkim=rsa)
    refused = await smtp.sendmail("a@x", "b@x", b"hi", dkim=[rsa, ed])
    refused = await txsmtpclient.sendmail("localhost", "a@x", "b@x", b"hi", dkim=(rsa, ed))
    print(record, refused)


def main() -> None:
    async def run(reactor: IReactorTime) -> None:
        await typical(reactor)

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
