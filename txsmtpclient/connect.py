"""
:class:`SMTPClientFactory`, for code that connects by itself
(``reactor.connectTCP``, ``connectSSL``, ``connectUNIX`` or an endpoint).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IConnector, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from txsmtpclient._endpoints import connect_error
from txsmtpclient.client import SMTP
from txsmtpclient.errors import SMTPConnectError, SMTPServerDisconnected
from txsmtpclient.protocol import DEFAULT_TIMEOUTS, SMTPClientProtocol, Timeouts

__all__ = ["SMTPClientFactory"]


class SMTPClientFactory(ClientFactory):
    """
    Builds one :class:`SMTPClientProtocol` and hands the caller an
    :class:`SMTP` session on it once the server has greeted.

    ::

        factory = SMTPClientFactory()
        reactor.connectTCP("mail.example.com", 25, factory)
        smtp = await factory.deferred
        await smtp.sendmail(...)

    :param local_hostname: as for :class:`SMTP`.
    :param timeout: as for :class:`SMTP`.
    :param reactor: the clock for timeouts; the global reactor when ``None``.
    :param client_class: the session class to hand out (:class:`SMTP` or a
        subclass such as ``LMTP``).

    :ivar deferred: fires with the connected :class:`SMTP` after a 220
        greeting; fails with :class:`SMTPServerDisconnected` when the
        connection cannot be made (the reason as its ``__cause__``) or drops
        before the greeting, :class:`SMTPConnectError` for another greeting.
    """

    protocol = SMTPClientProtocol

    def __init__(
        self,
        local_hostname: str | None = None,
        timeout: Timeouts | float | None = DEFAULT_TIMEOUTS,
        reactor: IReactorTime | None = None,
        client_class: type[SMTP] = SMTP,
    ) -> None:
        self._client = client_class(
            local_hostname=local_hostname, timeout=timeout, reactor=reactor
        )
        self.deferred: Deferred[SMTP] = Deferred()

    @property
    def client(self) -> SMTP:
        """
        The session this factory's connection serves.
        """
        return self._client

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        if self.deferred.called:
            return None  # one factory, one connection
        proto = self._client._attach_new_protocol()
        proto.greeting.addCallbacks(self._greeted, self._failed)
        return proto

    def _greeted(self, greeting: Any) -> None:
        if self.deferred.called:
            return
        if greeting.code != 220:
            self._client.close()
            self.deferred.errback(SMTPConnectError(greeting.code, greeting.message))
        else:
            self.deferred.callback(self._client)

    def _failed(self, reason: Failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(reason)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if not self.deferred.called:
            error = reason.value if reason.value is not None else reason
            self.deferred.errback(connect_error(error, connector.getDestination()))

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(
                SMTPServerDisconnected(
                    f"connection lost before the greeting: {reason.getErrorMessage()}"
                )
            )
