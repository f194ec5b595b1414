"""
The failure notice the daemon queues for a sender whose message could not be
delivered: a delivery status notification (RFC 3464, ``multipart/report``).

Sans-IO: values in, the notice's bytes out; nothing here touches files or
imports Twisted.
"""

from __future__ import annotations

import email.utils
import re
import secrets
from collections.abc import Mapping

from txsmtpclient.spool.envelope import Entry, ReplyRecord

__all__ = ["failure_notice"]


def failure_notice(
    entry: Entry,
    failed: Mapping[str, ReplyRecord],
    original: bytes,
    *,
    hostname: str,
    now: float,
) -> bytes:
    """
    A delivery status notification (RFC 3464, ``multipart/report``) telling
    the sender which recipients failed and why, with the original headers.

    :param entry: the entry that failed.
    :param failed: the failed recipients and the reply for each.
    :param original: the original message (its headers are attached).
    :param hostname: the reporting host.
    :param now: the time of the report, epoch seconds.
    :returns: the notice's bytes, CRLF line ends.
    """
    boundary = f"=_txsmtp_{secrets.token_hex(8)}"
    explanation = [
        f"Your message (spool id {entry.id}) could not be delivered to "
        f"{'this recipient' if len(failed) == 1 else 'these recipients'}:",
        "",
        *(f"  <{address}>: {_one_line(str(reply))}" for address, reply in failed.items()),
    ]
    status = [f"Reporting-MTA: dns; {hostname}", f"X-Txsmtp-Spool-Id: {entry.id}"]
    for address, reply in failed.items():
        # RFC 3464 section 2.3: a status code; the reply's enhanced code when
        # it gives one (RFC 3463), else a generic permanent or expired one.
        enhanced = re.match(r"([245]\.\d{1,3}\.\d{1,3})\b", reply.text)
        code = enhanced.group(1) if enhanced else ("5.0.0" if reply.code >= 500 else "4.4.7")
        status += [
            "",
            f"Final-Recipient: rfc822; {address}",
            "Action: failed",
            f"Status: {code}",
            f"Diagnostic-Code: smtp; {_one_line(str(reply))}",
        ]
    headers = original.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    parts = [
        "From: " + f"Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{entry.sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        "Date: " + email.utils.formatdate(now, localtime=True),
        "Message-ID: " + email.utils.make_msgid(domain=hostname),
        # RFC 3834 section 5: an automatic reply, not to be answered.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        *explanation,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *status,
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    head = "\r\n".join(parts).encode("utf-8") + b"\r\n"
    body = b"\r\n".join(line.rstrip(b"\r") for line in headers.split(b"\n")) if headers else b""
    return head + body + f"\r\n\r\n--{boundary}--\r\n".encode("ascii")


def _one_line(text: str) -> str:
    return " ".join(text.split())
