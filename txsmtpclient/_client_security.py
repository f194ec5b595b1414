"""
TLS and AUTH for :class:`~txsmtpclient.SMTP`: STARTTLS and the TLS policy
(RFC 3207), and login (RFC 4954).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
)

from txsmtpclient._client_base import ClientBase
from txsmtpclient._exchange import (
    authenticate,
    tls_handshake,
)
from txsmtpclient._sasl import SASLMechanism
from txsmtpclient._tls import client_tls_options
from txsmtpclient.auth import (
    choose_mechanism,
    mechanism_for,
)
from txsmtpclient.commands import (
    check_argument,
)
from txsmtpclient.errors import (
    SMTPAuthenticationError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupportedError,
    SMTPTLSError,
)
from txsmtpclient.reply import Reply

__all__ = ["Security"]


class Security(ClientBase):
    """
    STARTTLS, the TLS policy applied before anything else, and AUTH.
    """

    #: Challenges answered in the current AUTH exchange (smtplib's counter,
    #: which :meth:`auth_login` reads).
    _auth_challenge_count = 0

    async def _ehlo_or_helo_if_needed(self, tls_policy: bool = True) -> None:
        if self.helo_resp is None and self.ehlo_resp is None:
            reply = await self._ehlo(None)
            if not 200 <= reply.code < 300:
                if self.ehlo_msg != "EHLO":
                    raise SMTPHeloError(reply.code, reply.message)
                reply = await self._helo(None)
                if not 200 <= reply.code < 300:
                    raise SMTPHeloError(reply.code, reply.message)
        if tls_policy:
            await self._apply_tls_policy()

    # -- TLS and AUTH ------------------------------------------------------------

    def starttls(self, context: IOpenSSLClientConnectionCreator | None = None) -> Deferred[Reply]:
        """
        Switch the connection to TLS (RFC 3207), then say EHLO again: the
        feature list from before TLS is dropped.

        :param context: TLS client options (``optionsForClientTLS(...)``);
            by default the ones given to the constructor, or options that
            verify the certificate against the system's trust roots and the
            server's host name.
        :returns: a Deferred firing with the reply to STARTTLS.
        :raises SMTPNotSupportedError: when the server does not offer
            STARTTLS.
        :raises SMTPTLSError: when the handshake fails (the connection is
            closed).
        """
        return self._call(lambda: self._starttls(context))

    def _server_tls_options(self) -> IOpenSSLClientConnectionCreator:
        if self._tls_options is not None:
            return self._tls_options
        name = self.server_hostname or self._server_name
        if not name:
            raise SMTPTLSError(
                "cannot verify the server's certificate: no host name is known for it; "
                "pass server_hostname= or tls_options="
            )
        return client_tls_options(name)

    async def _starttls(self, context: IOpenSSLClientConnectionCreator | None) -> Reply:
        await self._ehlo_or_helo_if_needed(tls_policy=False)
        proto = self._connection()
        if proto.tls:
            raise SMTPException("TLS is already active on this connection")
        if not self.has_option("starttls"):
            raise SMTPNotSupportedError("STARTTLS extension not supported by server.")
        reply = await proto.starttls(context or self._server_tls_options())
        if reply.code != 220:
            return reply
        self._reset_session()
        await tls_handshake(proto, self.timeouts.command, self._reactor)
        ehlo = await self._ehlo(None)
        if ehlo.code != 250:
            raise SMTPHeloError(ehlo.code, ehlo.message)
        return reply

    async def _apply_tls_policy(self) -> None:
        proto = self._connection()
        if proto.tls or self.tls == "never":
            return
        if self.has_option("starttls"):
            reply = await self._starttls(None)
            if reply.code == 220 or self.tls != "required":
                return
            refusal = f"the server refused STARTTLS: {reply.code} {reply.text}"
        else:
            refusal = "the server does not offer STARTTLS"
        if self.tls == "required":
            proto.close()
            raise SMTPTLSError(f'tls="required" but {refusal}; nothing was sent in the clear')

    def login(
        self,
        user: str,
        password: str,
        mechanism: str | None = None,
        *,
        initial_response_ok: bool = True,
    ) -> Deferred[Reply]:
        """
        Authenticate (RFC 4954) with the strongest mechanism both sides
        have among SCRAM-SHA-256, CRAM-MD5, PLAIN and LOGIN, or the one named
        (``"XOAUTH2"`` with an OAuth 2.0 token as ``password``).

        Refused over a connection without TLS unless the SMTP object was
        made with ``allow_plaintext_auth=True``.  Credentials and AUTH
        payloads never reach the debug log.

        :returns: a Deferred firing with the 235 reply.
        :raises SMTPNotSupportedError: when the server offers no AUTH, or no
            mechanism in common, or the connection is not encrypted.
        :raises SMTPAuthenticationError: when the server refuses the
            credentials (with its reply), or its SCRAM proof is wrong.
        """
        check_argument(user, "user")
        if not isinstance(password, str):
            raise TypeError(f"password must be str, not {type(password).__name__}")
        # As smtplib, for the auth_* methods.
        self.user, self.password = user, password
        return self._call(lambda: self._login(user, password, mechanism, initial_response_ok))

    def auth(
        self,
        mechanism: str,
        authobject: Callable[..., str | None],
        *,
        initial_response_ok: bool = True,
    ) -> Deferred[Reply]:
        """
        smtplib's ``auth``: one AUTH exchange driven by ``authobject``, called
        with no argument for the initial response (``None``: send none) and
        with each decoded challenge for the answer, returning ``str``.
        :meth:`auth_plain`, :meth:`auth_login` and :meth:`auth_cram_md5`
        are such objects, using :attr:`user` and :attr:`password`.  Prefer
        :meth:`login`, which picks the strongest mechanism.

        :returns: a Deferred firing with the 235 reply.
        :raises SMTPNotSupportedError: when the server does not offer the
            mechanism, or the connection is not encrypted (see :meth:`login`).
        :raises SMTPAuthenticationError: when the server refuses.
        """
        check_argument(mechanism, "mechanism")
        if not callable(authobject):
            raise TypeError(f"authobject must be callable, not {type(authobject).__name__}")
        name = mechanism.upper()
        mech = _CallableMechanism(name, authobject, self)

        async def op() -> Reply:
            await self._ehlo_or_helo_if_needed()
            self._may_authenticate()
            return await self._authenticate(name, mech, initial_response_ok)

        return self._call(op)

    def auth_plain(self, challenge: bytes | None = None) -> str:
        """
        smtplib's PLAIN authobject: ``\\0user\\0password``.
        """
        return f"\0{self.user}\0{self.password}"

    def auth_login(self, challenge: bytes | None = None) -> str:
        """
        smtplib's LOGIN authobject: the user name, then the password.
        """
        if challenge is None or self._auth_challenge_count < 2:
            return self.user or ""
        return self.password or ""

    def auth_cram_md5(self, challenge: bytes | None = None) -> str | None:
        """
        smtplib's CRAM-MD5 authobject (RFC 2195): no initial response, then
        the user and the keyed MD5 of the challenge.
        """
        if challenge is None:
            return None
        digest = hmac.new((self.password or "").encode("utf-8"), challenge, "md5").hexdigest()
        return f"{self.user} {digest}"

    async def _login(
        self, user: str, password: str, mechanism: str | None, initial_response_ok: bool
    ) -> Reply:
        await self._ehlo_or_helo_if_needed()
        self._may_authenticate()
        if mechanism is None:
            name = choose_mechanism(self.esmtp_features.auth_mechanisms)
        else:
            name = mechanism.upper()
        return await self._authenticate(
            name, mechanism_for(name, user, password), initial_response_ok
        )

    def _may_authenticate(self) -> None:
        """
        :raises SMTPNotSupportedError: when the server offers no AUTH, or the
            connection is not encrypted and plaintext AUTH was not allowed.
        """
        proto = self._connection()
        if not self.has_option("auth"):
            raise SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
        if not proto.tls and not self.allow_plaintext_auth:
            raise SMTPNotSupportedError(
                "refusing to send credentials over a connection without TLS: use STARTTLS "
                "or implicit TLS, or pass allow_plaintext_auth=True"
            )

    async def _authenticate(
        self, name: str, mech: SASLMechanism, initial_response_ok: bool
    ) -> Reply:
        """
        One AUTH exchange, after EHLO, the TLS policy and the checks of
        :meth:`_may_authenticate`.
        """
        offered = self.esmtp_features.auth_mechanisms
        if name not in offered:
            raise SMTPNotSupportedError(
                f"the server does not offer AUTH {name}; it offers {sorted(offered)}"
            )
        self._auth_challenge_count = 0
        reply = await authenticate(self._connection(), mech, initial_response_ok)
        if reply.code not in (235, 503):
            raise SMTPAuthenticationError(reply.code, reply.message)
        return reply


class _CallableMechanism(SASLMechanism):
    """
    An smtplib authobject as a mechanism: called with no argument for the
    initial response, then with each decoded challenge.
    """

    name = ""

    def __init__(self, name: str, authobject: Callable[..., str | None], owner: Security) -> None:
        self.name = name  # type: ignore[misc]
        self._authobject = authobject
        self._owner = owner

    def initial_response(self) -> bytes | None:
        response = self._authobject()
        return None if response is None else response.encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        self._owner._auth_challenge_count += 1
        response = self._authobject(challenge)
        return b"" if response is None else response.encode("utf-8")
