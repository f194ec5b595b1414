"""
A kit for testing code that sends mail with txsmtpclient, in the spirit of
``treq.testing``: scriptable SMTP servers that record every byte.

* :class:`MemoryServer`: no sockets; the test moves bytes with
  :meth:`~MemoryServer.flush` and time with :meth:`~MemoryServer.advance`.
* :class:`LoopbackServer`: a real server on 127.0.0.1 and a free port, with
  STARTTLS or implicit TLS on a generated certificate.

Both follow one :class:`Script`: per command, the reply (multi-line and
enhanced codes included), a delay, a disconnect, a 421, premature or
unsolicited bytes; which extensions to advertise; which credentials AUTH
accepts.  Both record each session (:class:`ServerSession`) and each accepted
message (:class:`ReceivedMessage`) byte-exact.

The pytest plugin (registered on install) gives the fixtures
``txsmtp_script``, ``txsmtp_memory_server`` and ``txsmtp_server``.
"""

from txsmtpclient.testing._record import ReceivedMessage, ServerSession
from txsmtpclient.testing._script import CONNECT, DATA_END, DEFAULT_EXTENSIONS, Rule, Script
from txsmtpclient.testing._servers import LoopbackServer, MemoryServer
from txsmtpclient.testing._tls import TestCertificate

__all__ = [
    "CONNECT",
    "DATA_END",
    "DEFAULT_EXTENSIONS",
    "LoopbackServer",
    "MemoryServer",
    "ReceivedMessage",
    "Rule",
    "Script",
    "ServerSession",
    "TestCertificate",
]
