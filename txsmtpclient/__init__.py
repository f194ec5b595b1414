"""
txsmtpclient: a complete SMTP client for Twisted, with smtplib's API.

Every network call returns a Deferred.
"""

from txsmtpclient.api import sendmail
from txsmtpclient.client import SMTP
from txsmtpclient.connect import SMTPClientFactory
from txsmtpclient.errors import (
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
)
from txsmtpclient.extensions import Extensions
from txsmtpclient.protocol import SMTPClientProtocol, Timeouts
from txsmtpclient.reply import Reply

__version__ = "0.1.0"

__all__ = [
    "SMTP",
    "Extensions",
    "Reply",
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
    "SMTPTimeoutError",
    "Timeouts",
    "sendmail",
]
