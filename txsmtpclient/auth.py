"""
SASL mechanisms for SMTP AUTH (RFC 4954) as challenge -> response steps.

Sans-IO: each mechanism turns decoded server challenges into raw responses;
base64 framing and command building (in :mod:`txsmtpclient._sasl`, re-exported
here) and mechanism choice are plain functions.  Nothing here imports Twisted
or touches a connection.  Transcript redaction is :func:`txsmtpclient._log.redact`.

A driver (the client's ``login``) uses a mechanism like this::

    mechanism = mechanism_for(choose_mechanism(server_mechanisms), user, password)
    send(auth_command(mechanism))              # "AUTH NAME [initial-response]"
    while reply.code == 334:
        challenge = decode_challenge(reply.message)
        send(encode_response(mechanism.respond(challenge)))
    if reply.code == 235:
        mechanism.verify_success(b"")          # SCRAM: was the server proven?

A :class:`SASLError` from any step means the server's side of the exchange
was wrong; the driver cancels with :data:`CANCEL` (RFC 4954 section 4) and
fails the login.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from typing import ClassVar

from txsmtpclient._sasl import (
    CANCEL,
    SASLError,
    SASLMechanism,
    auth_command,
    decode_challenge,
    encode_initial_response,
    encode_response,
    saslprep,
    utf8,
)
from txsmtpclient.errors import SMTPArgumentError, SMTPNotSupportedError

__all__ = [
    "CANCEL",
    "DEFAULT_MAX_SCRAM_ITERATIONS",
    "MECHANISM_PREFERENCE",
    "SUPPORTED_MECHANISMS",
    "CramMD5",
    "Login",
    "Plain",
    "SASLError",
    "SASLMechanism",
    "ScramSHA256",
    "XOAuth2",
    "auth_command",
    "choose_mechanism",
    "decode_challenge",
    "encode_initial_response",
    "encode_response",
    "mechanism_for",
    "saslprep",
]

#: Mechanisms :func:`choose_mechanism` picks from without being asked, the
#: strongest first.  XOAUTH2 needs a token rather than a password, so it is
#: only used when the caller names it.
MECHANISM_PREFERENCE: tuple[str, ...] = ("SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN")

#: Every mechanism :func:`mechanism_for` can build.
SUPPORTED_MECHANISMS: frozenset[str] = frozenset({*MECHANISM_PREFERENCE, "XOAUTH2"})

#: PBKDF2 rounds a SCRAM server may ask for before we refuse: a hostile
#: server could otherwise ask for 2**31 and stall the client.  RFC 7677
#: section 4 asks servers for at least 4096; real ones use 4096 to 10000.
DEFAULT_MAX_SCRAM_ITERATIONS = 100_000


class Plain(SASLMechanism):
    """
    PLAIN (RFC 4616): ``authzid NUL authcid NUL password`` in one message.

    :param username: the authentication identity (authcid).
    :param password: the password.
    :param authzid: the identity to act as, if not the user's own.
    :raises SMTPArgumentError: when a field contains NUL.
    """

    name = "PLAIN"

    def __init__(self, username: str, password: str, *, authzid: str | None = None) -> None:
        self._message = b"\0".join(
            (
                utf8(authzid or "", "authzid"),
                utf8(username, "username"),
                utf8(password, "password"),
            )
        )
        self._sent = False

    def initial_response(self) -> bytes:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        # RFC 4616 section 2: the only challenge PLAIN allows is the empty one
        # asking for the message that was not sent with AUTH.
        if self._sent or challenge:
            raise SASLError("PLAIN: unexpected server challenge")
        self._sent = True
        return self._message


class Login(SASLMechanism):
    """
    LOGIN (draft-murchison-sasl-login): the user name, then the password,
    each in answer to a challenge.

    The challenge texts are not standard ("Username:", "User Name",
    localised prompts...): a prompt mentioning "pass" gets the password, one
    mentioning "user" the user name, and any other the next one in order.

    :param username: the user name.
    :param password: the password.
    :param send_username_first: send the user name as the initial response,
        as smtplib does, saving a round trip; off by default because some
        servers do not accept it.
    """

    name = "LOGIN"

    def __init__(self, username: str, password: str, *, send_username_first: bool = False) -> None:
        self._username = utf8(username, "username")
        self._password = utf8(password, "password")
        self._initial = send_username_first
        self._steps = 0

    def initial_response(self) -> bytes | None:
        return self._username if self._initial else None

    def respond(self, challenge: bytes) -> bytes:
        self._steps += 1
        if self._steps > 2:
            raise SASLError("LOGIN: unexpected challenge after the password")
        prompt = challenge.lower()
        if b"pass" in prompt:
            return self._password
        if b"user" in prompt or b"name" in prompt:
            return self._username
        if self._steps == 1 and (not challenge or not self._initial):
            # Either the first prompt, or RFC 4422 section 5.1's empty
            # challenge asking for the initial response left off AUTH.
            return self._username
        return self._password


class CramMD5(SASLMechanism):
    """
    CRAM-MD5 (RFC 2195): the user name and the hex HMAC-MD5 of the server's
    challenge keyed with the password.

    :param username: the user name.
    :param password: the password (the HMAC key, UTF-8 encoded).
    """

    name = "CRAM-MD5"

    def __init__(self, username: str, password: str) -> None:
        self._username = utf8(username, "username")
        self._password = utf8(password, "password")
        self._done = False

    def respond(self, challenge: bytes) -> bytes:
        if self._done:
            raise SASLError("CRAM-MD5: unexpected second challenge")
        if not challenge:
            # RFC 2195 section 2: the challenge is a non-empty msg-id; an
            # empty one would let anyone replay our answer.
            raise SASLError("CRAM-MD5: empty challenge")
        self._done = True
        digest = hmac.new(self._password, challenge, hashlib.md5).hexdigest()
        return self._username + b" " + digest.encode("ascii")


# RFC 5802 section 7: printable ASCII except ",".
_NONCE = re.compile(r"[\x21-\x2b\x2d-\x7e]+\Z")


def _default_nonce() -> str:
    # 24 random bytes: 192 bits; token_urlsafe's alphabet has no comma.
    return secrets.token_urlsafe(24)


def _scram_name(value: str) -> str:
    # RFC 5802 section 5.1: "=" and "," are escaped in saslname.
    return saslprep(value).replace("=", "=3D").replace(",", "=2C")


class _ScramState(enum.Enum):
    CLIENT_FIRST = "client-first"
    SERVER_FIRST = "awaiting server-first"
    SERVER_FINAL = "awaiting server-final"
    VERIFIED = "verified"


class _Scram(SASLMechanism):
    """
    The SCRAM family (RFC 5802) without channel binding; subclasses name the
    hash.
    """

    _hash: ClassVar[str]

    def __init__(
        self,
        username: str,
        password: str,
        *,
        authzid: str | None = None,
        nonce: Callable[[], str] = _default_nonce,
        max_iterations: int = DEFAULT_MAX_SCRAM_ITERATIONS,
    ) -> None:
        self._password = saslprep(password).encode("utf-8")
        client_nonce = nonce()
        if not _NONCE.match(client_nonce):
            raise SMTPArgumentError(
                f"SCRAM client nonce must be printable ASCII without ',', got {client_nonce!r}"
            )
        self._client_nonce = client_nonce
        # RFC 5802 section 7: gs2-header "n" (no channel binding), then the
        # optional authzid.
        self._gs2_header = "n," + (f"a={_scram_name(authzid)}" if authzid else "") + ","
        self._client_first_bare = f"n={_scram_name(username)},r={client_nonce}"
        self._max_iterations = max_iterations
        self._state = _ScramState.SERVER_FIRST
        self._server_signature = b""

    def initial_response(self) -> bytes:
        return (self._gs2_header + self._client_first_bare).encode("utf-8")

    def respond(self, challenge: bytes) -> bytes:
        if self._state is _ScramState.SERVER_FIRST:
            if not challenge:
                # RFC 4422 section 5.1: the server asks for the initial
                # response that did not go with AUTH.
                return self.initial_response()
            return self._client_final(challenge)
        if self._state is _ScramState.SERVER_FINAL:
            # RFC 4954 section 4: additional data with success arrives as a
            # last 334 challenge and is answered with an empty response.
            self._check_server_final(challenge)
            return b""
        raise SASLError(f"{self.name}: unexpected challenge after the exchange ended")

    def verify_success(self, data: bytes = b"") -> None:
        if data:
            if self._state is _ScramState.SERVER_FIRST:
                raise SASLError(f"{self.name}: success before the server-first-message")
            self._check_server_final(data)
        if self._state is not _ScramState.VERIFIED:
            raise SASLError(f"{self.name}: server reported success without proving itself")

    def _attributes(self, message: bytes) -> list[tuple[str, str]]:
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise SASLError(f"{self.name}: server message is not UTF-8") from None
        pairs = []
        for part in text.split(","):
            key, eq, value = part.partition("=")
            if len(key) != 1 or not eq:
                raise SASLError(f"{self.name}: malformed server message {text[:100]!r}")
            pairs.append((key, value))
        return pairs

    def _client_final(self, server_first: bytes) -> bytes:
        attributes = self._attributes(server_first)
        if attributes[0][0] == "m":
            # RFC 5802 section 5.1: a mandatory extension we do not know.
            raise SASLError(f"{self.name}: server requires an unsupported extension")
        fields = dict(attributes)
        try:
            nonce, salt_text, iterations_text = fields["r"], fields["s"], fields["i"]
        except KeyError as missing:
            raise SASLError(f"{self.name}: server-first-message lacks {missing}") from None
        # RFC 5802 section 5.1: the server's nonce must extend ours, else we
        # are not talking about the exchange we started.
        if not nonce.startswith(self._client_nonce) or not _NONCE.match(nonce):
            raise SASLError(f"{self.name}: server nonce does not start with the client nonce")
        try:
            salt = base64.b64decode(salt_text, validate=True)
        except binascii.Error:
            raise SASLError(f"{self.name}: salt is not base64") from None
        if not iterations_text.isdigit() or iterations_text.startswith("0"):
            raise SASLError(f"{self.name}: bad iteration count {iterations_text[:20]!r}")
        iterations = int(iterations_text)
        if iterations > self._max_iterations:
            raise SASLError(
                f"{self.name}: server asks for {iterations} iterations, "
                f"more than the {self._max_iterations} allowed"
            )

        channel_binding = base64.b64encode(self._gs2_header.encode("utf-8")).decode("ascii")
        without_proof = f"c={channel_binding},r={nonce}"
        auth_message = ",".join(
            (self._client_first_bare, server_first.decode("utf-8"), without_proof)
        ).encode("utf-8")
        # RFC 5802 section 3.
        salted = hashlib.pbkdf2_hmac(self._hash, self._password, salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", self._hash)
        stored_key = hashlib.new(self._hash, client_key).digest()
        client_signature = hmac.digest(stored_key, auth_message, self._hash)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature, strict=True))
        server_key = hmac.digest(salted, b"Server Key", self._hash)
        self._server_signature = hmac.digest(server_key, auth_message, self._hash)
        self._state = _ScramState.SERVER_FINAL
        return f"{without_proof},p={base64.b64encode(proof).decode('ascii')}".encode("ascii")

    def _check_server_final(self, server_final: bytes) -> None:
        fields = dict(self._attributes(server_final))
        if "e" in fields:
            raise SASLError(f"{self.name}: server error {fields['e'][:100]!r}")
        try:
            signature = base64.b64decode(fields["v"], validate=True)
        except (KeyError, binascii.Error):
            raise SASLError(f"{self.name}: server-final-message has no valid v=") from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise SASLError(f"{self.name}: server signature does not match")
        self._state = _ScramState.VERIFIED


class ScramSHA256(_Scram):
    """
    SCRAM-SHA-256 (RFC 7677, RFC 5802) without channel binding.

    The user name and password are prepared with :func:`saslprep`.  The
    server must extend the client nonce and prove, with its signature in the
    server-final message, that it knows the password too.

    :param username: the user name.
    :param password: the password.
    :param authzid: the identity to act as, if not the user's own.
    :param nonce: returns the client nonce (printable ASCII, no comma); by
        default 192 random bits.  Tests inject a fixed one.
    :param max_iterations: the most PBKDF2 rounds the server may ask for.
    :raises SMTPArgumentError: when SASLprep refuses the user name, authzid
        or password, or the nonce has characters RFC 5802 forbids.
    """

    name = "SCRAM-SHA-256"
    _hash = "sha256"


class XOAuth2(SASLMechanism):
    """
    XOAUTH2 (Google's and Microsoft's OAuth 2.0 bearer-token mechanism):
    ``user=<user>^Aauth=Bearer <token>^A^A`` as initial response.

    On a bad token the server sends a 334 challenge holding a JSON error;
    the client answers with an empty response and the server then sends the
    final error reply.  The JSON is kept in :attr:`error` for the caller.

    :param username: the account's address.
    :param token: the OAuth 2.0 access token.
    :raises SMTPArgumentError: when either contains ``\\x01``.
    :ivar error: the decoded error challenge, if the server sent one.
    """

    name = "XOAUTH2"

    def __init__(self, username: str, token: str) -> None:
        if "\x01" in username or "\x01" in token:
            raise SMTPArgumentError("XOAUTH2 user and token must not contain \\x01")
        self._message = f"user={username}\x01auth=Bearer {token}\x01\x01".encode()
        self._started = False
        self.error: bytes | None = None

    def initial_response(self) -> bytes:
        return self._message

    def respond(self, challenge: bytes) -> bytes:
        if not challenge and not self._started and self.error is None:
            self._started = True
            return self._message
        if self.error is not None:
            raise SASLError("XOAUTH2: unexpected challenge after the error challenge")
        self.error = challenge
        return b""


def mechanism_for(
    name: str,
    username: str,
    password_or_token: str,
    *,
    authzid: str | None = None,
    nonce: Callable[[], str] | None = None,
    max_iterations: int = DEFAULT_MAX_SCRAM_ITERATIONS,
) -> SASLMechanism:
    """
    Build the client side of one mechanism.

    :param name: the mechanism's name, any case (``"scram-sha-256"``).
    :param username: the user name (the address, for XOAUTH2).
    :param password_or_token: the password, or the OAuth 2.0 access token for
        XOAUTH2.
    :param authzid: the identity to act as; PLAIN and SCRAM only.
    :param nonce: the client nonce source for SCRAM (see
        :class:`ScramSHA256`).
    :param max_iterations: the SCRAM iteration ceiling.
    :returns: a fresh mechanism object for one exchange.
    :raises SMTPArgumentError: for a mechanism txsmtpclient does not
        implement, an ``authzid`` the mechanism cannot carry, or credentials
        the mechanism cannot encode.
    """
    upper = name.upper()
    if upper not in SUPPORTED_MECHANISMS:
        raise SMTPArgumentError(
            f"unsupported AUTH mechanism {name!r}; expected one of "
            f"{', '.join(sorted(SUPPORTED_MECHANISMS))}"
        )
    if authzid and upper not in {"PLAIN", "SCRAM-SHA-256"}:
        raise SMTPArgumentError(f"{upper} cannot carry an authorization identity")
    if upper == "PLAIN":
        return Plain(username, password_or_token, authzid=authzid)
    if upper == "LOGIN":
        return Login(username, password_or_token)
    if upper == "CRAM-MD5":
        return CramMD5(username, password_or_token)
    if upper == "XOAUTH2":
        return XOAuth2(username, password_or_token)
    return ScramSHA256(
        username,
        password_or_token,
        authzid=authzid,
        nonce=nonce or _default_nonce,
        max_iterations=max_iterations,
    )


def choose_mechanism(
    server_mechanisms: Iterable[str], available: Iterable[str] | None = None
) -> str:
    """
    Pick the strongest mechanism both sides have.

    The order is SCRAM-SHA-256, CRAM-MD5, PLAIN, LOGIN; XOAUTH2 is considered
    (first) only when ``available`` names it, since it needs a token.

    :param server_mechanisms: the names from the EHLO ``AUTH`` keyword.
    :param available: the mechanisms the caller allows, any case; by default
        :data:`MECHANISM_PREFERENCE`.
    :returns: the chosen name, upper case.
    :raises SMTPArgumentError: when ``available`` names a mechanism
        txsmtpclient does not implement.
    :raises SMTPNotSupportedError: when there is no mechanism in common.
    """
    offered = {m.upper() for m in server_mechanisms}
    if available is None:
        allowed = set(MECHANISM_PREFERENCE)
    else:
        allowed = {m.upper() for m in available}
        unknown = allowed - SUPPORTED_MECHANISMS
        if unknown:
            raise SMTPArgumentError(
                f"unsupported AUTH mechanism(s) {', '.join(sorted(unknown))}; expected "
                f"from {', '.join(sorted(SUPPORTED_MECHANISMS))}"
            )
    for candidate in ("XOAUTH2", *MECHANISM_PREFERENCE):
        if candidate in allowed and candidate in offered:
            return candidate
    raise SMTPNotSupportedError(
        "no AUTH mechanism in common: server offers "
        f"{', '.join(sorted(offered)) or 'none'}, client allows {', '.join(sorted(allowed))}"
    )
