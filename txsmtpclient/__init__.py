"""
txsmtpclient: a complete SMTP client for Twisted, with smtplib's API.

Every network call returns a Deferred.  The public names are imported on
first use (PEP 562), so the sans-IO modules (``reply``, ``commands``,
``extensions``, ``transaction``, ``auth``, ``message``) can be used without
importing Twisted, and the spool's submission path (``txsmtp-sendmail``,
``python -m txsmtpclient enqueue``) imports neither Twisted nor the errors'
:mod:`smtplib`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from txsmtpclient.api import send_message, sendmail
    from txsmtpclient.client import SMTP, SMTP_SSL
    from txsmtpclient.connect import SMTPClientFactory
    from txsmtpclient.errors import (
        SMTPAmbiguousDelivery,
        SMTPArgumentError,
        SMTPAuthenticationError,
        SMTPConnectError,
        SMTPDataError,
        SMTPException,
        SMTPHeloError,
        SMTPNotSupportedError,
        SMTPProtocolError,
        SMTPRecipientsRefused,
        SMTPResponseException,
        SMTPSenderRefused,
        SMTPServerDisconnected,
        SMTPTimeoutError,
        SMTPTLSError,
    )
    from txsmtpclient.extensions import Extensions
    from txsmtpclient.lmtp import LMTP
    from txsmtpclient.protocol import SMTPClientProtocol, Timeouts
    from txsmtpclient.reply import Reply

__version__ = "0.1.0"

_WHERE = {
    # The errors load smtplib (tens of ms): only when one is asked for.
    "SMTPAmbiguousDelivery": "errors",
    "SMTPArgumentError": "errors",
    "SMTPAuthenticationError": "errors",
    "SMTPConnectError": "errors",
    "SMTPDataError": "errors",
    "SMTPException": "errors",
    "SMTPHeloError": "errors",
    "SMTPNotSupportedError": "errors",
    "SMTPProtocolError": "errors",
    "SMTPRecipientsRefused": "errors",
    "SMTPResponseException": "errors",
    "SMTPSenderRefused": "errors",
    "SMTPServerDisconnected": "errors",
    "SMTPTimeoutError": "errors",
    "SMTPTLSError": "errors",
    "sendmail": "api",
    "send_message": "api",
    "SMTP": "client",
    "SMTP_SSL": "client",
    "LMTP": "lmtp",
    "SMTPClientFactory": "connect",
    "Extensions": "extensions",
    "SMTPClientProtocol": "protocol",
    "Timeouts": "protocol",
    "Reply": "reply",
}

__all__ = [
    "LMTP",
    "SMTP",
    "SMTP_SSL",
    "Extensions",
    "Reply",
    "SMTPAmbiguousDelivery",
    "SMTPArgumentError",
    "SMTPAuthenticationError",
    "SMTPClientFactory",
    "SMTPClientProtocol",
    "SMTPConnectError",
    "SMTPDataError",
    "SMTPException",
    "SMTPHeloError",
    "SMTPNotSupportedError",
    "SMTPProtocolError",
    "SMTPRecipientsRefused",
    "SMTPResponseException",
    "SMTPSenderRefused",
    "SMTPServerDisconnected",
    "SMTPTLSError",
    "SMTPTimeoutError",
    "Timeouts",
    "send_message",
    "sendmail",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'txsmtpclient' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"txsmtpclient.{module}"), name)
    globals()[name] = value
    return value
