"""
Real SMTP servers on loopback for the end-to-end tests.

Two kinds of server live here:

* :class:`AiosmtpdServer`: an aiosmtpd server in its own thread and asyncio event
  loop, listening on ``127.0.0.1`` and a port the kernel picks.  Its handler records
  every envelope exactly as it arrived and can be scripted per test (refuse
  recipients, the sender or DATA; hide or add EHLO keywords; refuse EHLO; AUTH;
  STARTTLS; implicit TLS; CHUNKING; LMTP; a Unix socket).
* :class:`PostfixInstance`: a private Postfix (never the system service, never port
  25) with its own configuration, queue and data folders under a temporary folder,
  STARTTLS on a self-signed certificate, PIPELINING, CHUNKING, DSN, SMTPUTF8 and a
  SIZE limit, delivering every recipient of :data:`TEST_DOMAIN` into one Maildir.

Both can be waited on without sleeping in the reactor thread: the aiosmtpd server
wakes waiting Deferreds with ``callFromThread`` as each message is recorded; the
Postfix Maildir is polled with a bound through ``task.deferLater``.

Nothing here imports the reactor at module level; the functions that need one take
it as an argument or fetch it inside the call.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hashlib
import hmac
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorFromThreads, IReactorTime

__all__ = [
    "TEST_DOMAIN",
    "AiosmtpdServer",
    "ConnectionRecord",
    "MaildirMessage",
    "PostfixInstance",
    "PostfixUnavailable",
    "RecordedMessage",
    "ServerScript",
    "TLSFiles",
    "client_ssl_context",
    "find_postfix",
    "free_loopback_port",
    "make_self_signed_cert",
    "server_ssl_context",
    "strip_added_headers",
]

#: The domain whose every recipient the Postfix instance delivers into its Maildir.
TEST_DOMAIN = "example.test"

#: The name the aiosmtpd server gives itself in its greeting and EHLO reply.  Given
#: explicitly so that aiosmtpd does not call ``socket.getfqdn()`` (a DNS lookup).
AIOSMTPD_HOSTNAME = "mx.aiosmtpd.test"

#: The name the Postfix instance gives itself (``myhostname``).
POSTFIX_HOSTNAME = f"mx.{TEST_DOMAIN}"

_LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------- TLS


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """
    A self-signed certificate and its private key, on disk and in memory.

    :ivar cert_path: PEM file of the certificate.
    :ivar key_path: PEM file of the unencrypted private key.
    :ivar cert_pem: the certificate's PEM bytes, for a client's trust root (for
        example ``twisted.internet.ssl.Certificate.loadPEM(cert_pem)``).
    :ivar hostnames: the DNS names the certificate is valid for.
    """

    cert_path: Path
    key_path: Path
    cert_pem: bytes
    hostnames: tuple[str, ...]


def make_self_signed_cert(
    directory: Path,
    hostnames: Sequence[str] = ("localhost", POSTFIX_HOSTNAME, AIOSMTPD_HOSTNAME),
    addresses: Sequence[str] = ("127.0.0.1", "::1"),
) -> TLSFiles:
    """
    Make a self-signed certificate and key valid for the given names and addresses.

    :param directory: an existing folder to write ``cert.pem`` and ``key.pem`` into.
    :param hostnames: DNS names for the subjectAltName (the first is also the CN).
    :param addresses: IP addresses for the subjectAltName, so a client that connects
        to ``127.0.0.1`` and verifies the address succeeds.
    :returns: where the files are, and the certificate's PEM bytes.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt_names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert_pem)
    # Postfix refuses a private key that others can read.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    return TLSFiles(cert_path, key_path, cert_pem, tuple(hostnames))


def server_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """
    Build a server-side context presenting the certificate in ``tls``.

    :param tls: the certificate and key.
    :returns: a context for aiosmtpd's ``tls_context`` or ``create_server(ssl=...)``.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_path, tls.key_path)
    return context


def client_ssl_context(tls: TLSFiles) -> ssl.SSLContext:
    """
    Build a client-side context that trusts only the certificate in ``tls``.

    :param tls: the certificate to trust.
    :returns: a verifying context (hostname checked) for ``smtplib``.
    """
    context = ssl.create_default_context(cadata=tls.cert_pem.decode("ascii"))
    return context


def free_loopback_port() -> int:
    """
    Ask the kernel for a TCP port free on ``127.0.0.1`` right now.

    Only for servers that cannot listen on port 0 themselves (Postfix reads its port
    from ``master.cf``); the port could be taken again before the server binds it,
    so callers retry on failure.

    :returns: the port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


# --------------------------------------------------------------------- aiosmtpd


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    """
    One mail transaction the aiosmtpd server accepted, exactly as it arrived.

    :ivar mail_from: the reverse-path, without angle brackets.
    :ivar mail_options: the MAIL parameters (aiosmtpd upper-cases them).
    :ivar mail_arg: the MAIL command's argument as sent, case kept
        (``"FROM:<a@b> SIZE=10"``).
    :ivar rcpt_tos: the accepted forward-paths, in order.
    :ivar rcpt_options: the parameters of each accepted RCPT, in the same order.
    :ivar rcpt_args: the argument of each accepted RCPT as sent, case kept.
    :ivar content: the message bytes after dot-unstuffing, CRLF line ends kept,
        without the final ``.`` line (or the BDAT chunks joined).
    :ivar smtp_utf8: whether MAIL carried SMTPUTF8.
    :ivar helo: the name given in EHLO, HELO or LHLO.
    :ivar esmtp: whether the session began with EHLO (or LHLO).
    :ivar tls: whether the transaction ran over TLS (STARTTLS or implicit).
    :ivar auth_login: the user name the session authenticated as, if any.
    :ivar bdat_chunks: the size of each BDAT chunk, or ``None`` when DATA was used.
    """

    mail_from: str
    mail_options: tuple[str, ...]
    mail_arg: str
    rcpt_tos: tuple[str, ...]
    rcpt_options: tuple[tuple[str, ...], ...]
    rcpt_args: tuple[str, ...]
    content: bytes
    smtp_utf8: bool
    helo: str | None
    esmtp: bool
    tls: bool
    auth_login: bytes | None
    bdat_chunks: tuple[int, ...] | None


@dataclass(slots=True)
class ConnectionRecord:
    """
    What one client connection sent, in plain text (decrypted after STARTTLS).

    Written by the server's thread; read it through
    :meth:`AiosmtpdServer.connections`, which returns copies.

    :ivar received: every byte the client sent, in order.
    :ivar closed: whether the connection has been closed.
    """

    received: bytearray = field(default_factory=bytearray)
    closed: bool = False


@dataclass
class ServerScript:
    """
    How the aiosmtpd server should behave; set before the client connects.

    Replies are whole reply lines without CRLF, such as ``"550 5.1.1 No such user"``.

    :ivar refuse_recipients: recipient address -> reply to give its RCPT.
    :ivar refuse_sender: reply to give every MAIL, or ``None`` to accept.
    :ivar refuse_data_command: reply to give the DATA command itself (instead of 354).
    :ivar refuse_data: reply to give after the message's final dot (or BDAT LAST).
    :ivar refuse_ehlo: answer EHLO with 502 so the client must fall back to HELO.
    :ivar hide_extensions: EHLO keywords to leave out (``"SIZE"``, ``"8BITMIME"``,
        ``"SMTPUTF8"``, ``"STARTTLS"``, ``"AUTH"``, ``"PIPELINING"`` ...).
    :ivar add_extensions: extra EHLO lines to advertise (``"DSN"``,
        ``"ENHANCEDSTATUSCODES"``); the server does not implement them unless noted.
    :ivar pipelining: advertise PIPELINING (aiosmtpd reads pipelined commands fine).
    :ivar dsn: advertise DSN and accept RET, ENVID, NOTIFY and ORCPT parameters
        (recorded, not acted on).
    :ivar chunking: advertise CHUNKING and BINARYMIME and accept BDAT (RFC 3030).
    :ivar credentials: user -> password accepted by AUTH; ``None`` means no AUTH is
        advertised.
    :ivar auth_mechanisms: the AUTH mechanisms to offer, among PLAIN, LOGIN,
        CRAM-MD5 and SCRAM-SHA-256; ``None`` offers all four.
    """

    refuse_recipients: dict[str, str] = field(default_factory=dict)
    refuse_sender: str | None = None
    refuse_data_command: str | None = None
    refuse_data: str | None = None
    refuse_ehlo: bool = False
    hide_extensions: frozenset[str] = frozenset()
    add_extensions: tuple[str, ...] = ()
    pipelining: bool = True
    dsn: bool = False
    chunking: bool = False
    credentials: dict[str, str] | None = None
    auth_mechanisms: tuple[str, ...] | None = None


class _RecordingEnvelope(Envelope):
    """aiosmtpd's envelope plus what :class:`RecordedMessage` needs to keep exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.mail_arg = ""
        self.rcpt_args: list[str] = []
        self.rcpt_option_lists: list[tuple[str, ...]] = []
        self.bdat_chunks: list[bytes] | None = None


_DSN_PARAMS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})


class _ScriptedMixin:
    """
    Behaviour shared by the scripted SMTP and LMTP protocols.

    Must come before aiosmtpd's class in the bases so its overrides win.
    """

    _recorder: _Recorder
    _connection: ConnectionRecord
    _last_arg: str

    def _create_envelope(self) -> Envelope:
        return _RecordingEnvelope()

    def data_received(self, data: bytes) -> None:
        # Called with plain text both before and after STARTTLS, because aiosmtpd
        # puts its SSLProtocol below this protocol.
        self._recorder.note_received(self._connection, data)
        super().data_received(data)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._recorder.note_closed(self._connection)
        super().connection_lost(exc)  # type: ignore[misc]

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        result: dict[str, str | bool] | None
        result = super()._getparams(params)  # type: ignore[misc]
        if result is None:
            return None
        script = self._recorder.script
        if script.dsn:
            # aiosmtpd answers 555 to any parameter it does not know; drop the DSN
            # ones (RFC 3461 section 4) so they are accepted and only recorded.
            for name in _DSN_PARAMS:
                result.pop(name, None)
        if script.chunking and result.get("BODY") == "BINARYMIME":
            # aiosmtpd knows only 7BIT and 8BITMIME; BINARYMIME is RFC 3030 section 3.
            del result["BODY"]
        return result

    async def smtp_MAIL(self, arg: str | None) -> None:
        self._last_arg = arg or ""
        await super().smtp_MAIL(arg)  # type: ignore[misc]

    async def smtp_RCPT(self, arg: str | None) -> None:
        self._last_arg = arg or ""
        await super().smtp_RCPT(arg)  # type: ignore[misc]

    async def smtp_DATA(self, arg: str) -> None:
        refusal = self._recorder.script.refuse_data_command
        envelope = self.envelope  # type: ignore[attr-defined]
        if refusal is not None and envelope.rcpt_tos and not arg:
            await self.push(refusal)  # type: ignore[attr-defined]
            return
        await super().smtp_DATA(arg)  # type: ignore[misc]

    async def smtp_BDAT(self, arg: str | None) -> None:
        """BDAT (RFC 3030 section 2), only when the script offers CHUNKING."""
        push = self.push  # type: ignore[attr-defined]
        if not self._recorder.script.chunking:
            await push('500 Error: command "BDAT" not recognized')
            return
        parts = (arg or "").split()
        last = len(parts) == 2 and parts[1].upper() == "LAST"
        if not parts or not parts[0].isdigit() or (len(parts) == 2 and not last):
            await push("501 5.5.4 Syntax: BDAT chunk-size [LAST]")
            return
        # The chunk must be read even when the command fails (RFC 3030 section 2).
        reader = self._reader  # type: ignore[attr-defined]
        chunk: bytes = await reader.readexactly(int(parts[0]))
        envelope: _RecordingEnvelope = self.envelope  # type: ignore[attr-defined]
        if not envelope.rcpt_tos:
            await push("503 5.5.1 Error: need RCPT command")
            return
        if envelope.bdat_chunks is None:
            envelope.bdat_chunks = []
        envelope.bdat_chunks.append(chunk)
        if not last:
            await push(f"250 2.0.0 {len(chunk)} octets received")
            return
        content = b"".join(envelope.bdat_chunks)
        envelope.content = content
        envelope.original_content = content
        session = self.session  # type: ignore[attr-defined]
        server: SMTP = self  # type: ignore[assignment]
        status = await self._recorder.handle_DATA(server, session, envelope)
        self._set_post_data_state()  # type: ignore[attr-defined]
        await push(status)


class _ScriptedSMTP(_ScriptedMixin, SMTP):
    """aiosmtpd's SMTP with recording and the EHLO refusal the script may ask for."""

    def __init__(self, recorder: _Recorder, **kwargs: Any) -> None:
        self._recorder = recorder
        self._connection = recorder.new_connection()
        self._last_arg = ""
        super().__init__(recorder, **kwargs)

    async def smtp_EHLO(self, hostname: str) -> None:
        if self._recorder.script.refuse_ehlo:
            # RFC 5321 section 4.1.4: a client must fall back to HELO on 502.
            await self.push("502 5.5.1 EHLO not supported")
            return
        await super().smtp_EHLO(hostname)


class _ScriptedLMTP(_ScriptedMixin, LMTP):
    """aiosmtpd's LMTP (RFC 2033) with recording; DATA answers once per recipient."""

    def __init__(self, recorder: _Recorder, **kwargs: Any) -> None:
        self._recorder = recorder
        self._connection = recorder.new_connection()
        self._last_arg = ""
        super().__init__(recorder, **kwargs)


def _is_tls(server: SMTP) -> bool:
    """Whether the connection of ``server`` is TLS from its first byte (implicit TLS)."""
    transport = server.transport
    return transport is not None and transport.get_extra_info("ssl_object") is not None


class _Recorder:
    """
    The aiosmtpd handler: applies the script, records messages, wakes waiters.

    Its ``handle_*`` and ``auth_*`` methods run in the server's event loop thread;
    everything they share with other threads is guarded by ``condition``.
    """

    def __init__(self, script: ServerScript, lmtp: bool) -> None:
        self.script = script
        self.lmtp = lmtp
        self.condition = threading.Condition()
        self.messages: list[RecordedMessage] = []
        self.connections: list[ConnectionRecord] = []
        self._reactors: set[IReactorFromThreads] = set()
        self.wake: Callable[[], None] = lambda: None

    # Bookkeeping called from the protocol.

    def new_connection(self) -> ConnectionRecord:
        record = ConnectionRecord()
        with self.condition:
            self.connections.append(record)
        return record

    def note_received(self, record: ConnectionRecord, data: bytes) -> None:
        with self.condition:
            record.received += data

    def note_closed(self, record: ConnectionRecord) -> None:
        with self.condition:
            record.closed = True
            self.condition.notify_all()
        self._notify_reactors()

    def add_reactor(self, reactor: IReactorFromThreads) -> None:
        with self.condition:
            self._reactors.add(reactor)

    def _notify_reactors(self) -> None:
        with self.condition:
            reactors = list(self._reactors)
        for reactor in reactors:
            reactor.callFromThread(self.wake)

    # aiosmtpd hooks.

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        # With a handle_EHLO hook aiosmtpd leaves setting the name to the hook.
        session.host_name = hostname
        script = self.script
        hidden = {k.upper() for k in script.hide_extensions}
        if script.credentials is None:
            hidden.add("AUTH")
        first, features = responses[0][4:], [r[4:] for r in responses[1:]]
        features = [f for f in features if f.split()[0].upper() not in hidden]
        extra: list[str] = []
        if script.pipelining:
            extra.append("PIPELINING")
        if script.dsn:
            extra.append("DSN")
        if script.chunking:
            extra += ["CHUNKING", "BINARYMIME"]
        extra += list(script.add_extensions)
        features += [f for f in extra if f.split()[0].upper() not in hidden]
        lines = [first, *features]
        return [f"250-{line}" for line in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.script.refuse_sender is not None:
            return self.script.refuse_sender
        assert isinstance(envelope, _RecordingEnvelope)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.mail_arg = getattr(server, "_last_arg", "")
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        refusal = self.script.refuse_recipients.get(address)
        if refusal is not None:
            return refusal
        assert isinstance(envelope, _RecordingEnvelope)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        envelope.rcpt_option_lists.append(tuple(options))
        envelope.rcpt_args.append(getattr(server, "_last_arg", ""))
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.script.refuse_data is not None:
            return self.script.refuse_data
        assert isinstance(envelope, _RecordingEnvelope)
        content = envelope.content
        assert isinstance(content, bytes), "decode_data must be False"
        login = getattr(session.auth_data, "login", None) if session.authenticated else None
        chunks = envelope.bdat_chunks
        record = RecordedMessage(
            mail_from=envelope.mail_from or "",
            mail_options=tuple(envelope.mail_options),
            mail_arg=envelope.mail_arg,
            rcpt_tos=tuple(envelope.rcpt_tos),
            rcpt_options=tuple(envelope.rcpt_option_lists),
            rcpt_args=tuple(envelope.rcpt_args),
            content=content,
            smtp_utf8=envelope.smtp_utf8,
            helo=session.host_name,
            esmtp=session.extended_smtp,
            tls=session.ssl is not None or _is_tls(server),
            auth_login=login if isinstance(login, bytes) else None,
            bdat_chunks=None if chunks is None else tuple(len(c) for c in chunks),
        )
        with self.condition:
            self.messages.append(record)
            self.condition.notify_all()
        self._notify_reactors()
        if self.lmtp:
            # RFC 2033 section 4.2: one reply per accepted recipient.
            return "\r\n".join("250 2.1.5 OK" for _ in envelope.rcpt_tos)
        return "250 OK"

    # AUTH: PLAIN and LOGIN come from aiosmtpd and call authenticate(); CRAM-MD5
    # (RFC 2195) and SCRAM-SHA-256 (RFC 7677) are not built in, so they are here.

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        credentials = self.script.credentials or {}
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        try:
            user = auth_data.login.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        expected = credentials.get(user)
        ok = expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), auth_data.password
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    async def auth_SCRAM__SHA__256(self, server: SMTP, args: list[str]) -> AuthResult:
        """SCRAM-SHA-256 (RFC 5802, RFC 7677) without channel binding."""
        if len(args) == 2:
            # RFC 4954 section 4: an initial response; "=" stands for an empty one.
            try:
                first = b"" if args[1] == "=" else base64.b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        else:
            response = await server.challenge_auth(b"")
            if not isinstance(response, bytes):
                return AuthResult(success=False, handled=True)
            first = response
        gs2, _, first_bare = _split_gs2(first)
        attrs = _scram_attrs(first_bare)
        if gs2 is None or "n" not in attrs or "r" not in attrs:
            return AuthResult(success=False, handled=False)
        user = attrs["n"].replace("=2C", ",").replace("=3D", "=")
        password = (self.script.credentials or {}).get(user)
        salt, iterations = secrets.token_bytes(16), 4096
        nonce = attrs["r"] + base64.b64encode(secrets.token_bytes(18)).decode("ascii")
        server_first = f"r={nonce},s={base64.b64encode(salt).decode()},i={iterations}"
        final = await server.challenge_auth(server_first.encode("ascii"))
        if not isinstance(final, bytes):
            return AuthResult(success=False, handled=True)
        final_text = final.decode("utf-8", "replace")
        without_proof, _, proof_b64 = final_text.rpartition(",p=")
        final_attrs = _scram_attrs(without_proof)
        if password is None or final_attrs.get("r") != nonce:
            return AuthResult(success=False, handled=False)
        if final_attrs.get("c") != base64.b64encode(gs2).decode("ascii"):
            return AuthResult(success=False, handled=False)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(stored_key, auth_message, "sha256")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except binascii.Error:
            return AuthResult(success=False, handled=False)
        recovered = bytes(a ^ b for a, b in zip(proof, signature, strict=False))
        if len(proof) != len(signature) or not hmac.compare_digest(
            hashlib.sha256(recovered).digest(), stored_key
        ):
            return AuthResult(success=False, handled=False)
        # The server proves itself in a last challenge; the client answers with an
        # empty line (RFC 4954 section 4 has no room for data with the 235).
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        verifier = base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
        if not isinstance(await server.challenge_auth(b"v=" + verifier), bytes):
            return AuthResult(success=False, handled=True)
        return AuthResult(
            success=True, handled=False, auth_data=LoginPassword(user.encode("utf-8"), b"")
        )

    async def auth_CRAM__MD5(self, server: SMTP, args: list[str]) -> AuthResult:
        challenge = f"<{uuid.uuid4().hex}@{AIOSMTPD_HOSTNAME}>".encode("ascii")
        response = await server.challenge_auth(challenge)
        if not isinstance(response, bytes):
            # challenge_auth already replied (the client sent "*" or bad base64).
            return AuthResult(success=False, handled=True)
        user_bytes, _, digest = response.rpartition(b" ")
        try:
            user = user_bytes.decode("utf-8")
        except UnicodeDecodeError:
            return AuthResult(success=False, handled=False)
        password = (self.script.credentials or {}).get(user)
        if password is None:
            return AuthResult(success=False, handled=False)
        expected = hmac.new(password.encode("utf-8"), challenge, hashlib.md5).hexdigest()
        ok = hmac.compare_digest(expected.encode("ascii"), digest)
        return AuthResult(success=ok, handled=False, auth_data=LoginPassword(user_bytes, b""))


def _split_gs2(message: bytes) -> tuple[bytes | None, bytes, str]:
    """
    Split a SCRAM client-first message into its GS2 header and the bare rest.

    :returns: (header with its trailing comma, or ``None`` when malformed or
        asking for channel binding; the authzid; the bare message).
    """
    text = message.decode("utf-8", "replace")
    parts = text.split(",", 2)
    if len(parts) != 3 or parts[0] not in ("n", "y"):
        return None, b"", text
    header = f"{parts[0]},{parts[1]},".encode()
    return header, parts[1].encode(), parts[2]


def _scram_attrs(text: str) -> dict[str, str]:
    """``"a=1,b=2"`` -> ``{"a": "1", "b": "2"}`` (RFC 5802 section 5)."""
    attrs: dict[str, str] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if eq:
            attrs[key] = value
    return attrs


class AiosmtpdServer:
    """
    An aiosmtpd server on loopback, in its own thread with its own event loop.

    Use :meth:`start` and :meth:`stop` (the ``smtp_server`` fixtures do), then
    point a client at :attr:`host` and :attr:`port` (or :attr:`unix_path`).

    :param script: how to behave; a default one accepts everything.
    :param tls: a certificate to offer STARTTLS with (and implicit TLS, if asked).
    :param implicit_tls: wrap every connection in TLS from the first byte (port
        465 style, for ``SMTP_SSL``); needs ``tls``.
    :param require_starttls: refuse commands other than EHLO, STARTTLS, NOOP and
        QUIT before STARTTLS.
    :param auth_require_tls: refuse AUTH before TLS (aiosmtpd's default); set it to
        ``False`` to test AUTH over plain text.
    :param data_size_limit: the SIZE to advertise and enforce; ``None`` for none.
    :param lmtp: speak LMTP (LHLO, one reply per recipient after DATA).
    :param unix_path: listen on this Unix socket instead of TCP.
    :param timeout: seconds of client silence before the server hangs up.
    """

    def __init__(
        self,
        script: ServerScript | None = None,
        *,
        tls: TLSFiles | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        auth_require_tls: bool = True,
        data_size_limit: int | None = 33554432,
        lmtp: bool = False,
        unix_path: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        if implicit_tls and tls is None:
            raise ValueError("implicit_tls=True needs a certificate: pass tls=TLSFiles")
        self.script = script if script is not None else ServerScript()
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.require_starttls = require_starttls
        self.auth_require_tls = auth_require_tls
        self.data_size_limit = data_size_limit
        self.lmtp = lmtp
        self.unix_path = unix_path
        self.timeout = timeout
        self.host = _LOOPBACK
        self.port = 0
        self._recorder = _Recorder(self.script, lmtp)
        self._recorder.wake = self._wake_waiters
        self._pending: list[tuple[int, bool, Deferred[Any]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._protocols: list[SMTP] = []

    # Lifecycle.

    def _make_protocol(self) -> SMTP:
        assert self._loop is not None
        tls_context = None
        if self.tls is not None and not self.implicit_tls:
            tls_context = server_ssl_context(self.tls)
        cls = _ScriptedLMTP if self.lmtp else _ScriptedSMTP
        mechanisms = {"PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256"}
        wanted = self.script.auth_mechanisms
        excluded = [] if wanted is None else sorted(mechanisms - {m.upper() for m in wanted})
        protocol = cls(
            self._recorder,
            data_size_limit=self.data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=AIOSMTPD_HOSTNAME,
            tls_context=tls_context,
            require_starttls=self.require_starttls,
            timeout=self.timeout,
            auth_require_tls=self.auth_require_tls,
            auth_exclude_mechanism=excluded,
            authenticator=self._recorder.authenticate,
            loop=self._loop,
        )
        self._protocols.append(protocol)
        return protocol

    def start(self) -> AiosmtpdServer:
        """
        Start listening; returns once the port is known.

        :returns: this server, for chaining.
        :raises RuntimeError: if the server could not start within 10 seconds.
        """
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []
        implicit = server_ssl_context(self.tls) if self.implicit_tls and self.tls else None

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                server: asyncio.AbstractServer
                if self.unix_path is not None:
                    server = loop.run_until_complete(
                        loop.create_unix_server(
                            self._make_protocol, str(self.unix_path), ssl=implicit
                        )
                    )
                else:
                    server = loop.run_until_complete(
                        loop.create_server(self._make_protocol, self.host, 0, ssl=implicit)
                    )
                    sockets = server.sockets
                    self.port = sockets[0].getsockname()[1]
            except BaseException as e:
                failure.append(e)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                for protocol in self._protocols:
                    if protocol.transport is not None:
                        protocol.transport.close()
                loop.run_until_complete(server.wait_closed())
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run, name="aiosmtpd-test-server", daemon=True)
        self._thread = thread
        thread.start()
        if not ready.wait(10):
            raise RuntimeError("aiosmtpd test server did not start within 10 seconds")
        if failure:
            raise RuntimeError("aiosmtpd test server failed to start") from failure[0]
        return self

    def stop(self) -> None:
        """
        Close every connection, stop listening and end the server's thread.

        :raises RuntimeError: if the thread did not end within 10 seconds.
        """
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("aiosmtpd test server did not stop within 10 seconds")

    def __enter__(self) -> AiosmtpdServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def address(self) -> str:
        """The ``"host:port"`` string (or ``"unix:/path"``) a client can connect to."""
        if self.unix_path is not None:
            return f"unix:{self.unix_path}"
        return f"{self.host}:{self.port}"

    # What arrived.

    @property
    def messages(self) -> list[RecordedMessage]:
        """A snapshot of the messages accepted so far, oldest first."""
        with self._recorder.condition:
            return list(self._recorder.messages)

    def connections(self) -> list[ConnectionRecord]:
        """
        A snapshot of every connection so far, oldest first.

        :returns: copies, so later traffic does not change them.
        """
        with self._recorder.condition:
            return [
                ConnectionRecord(bytearray(c.received), c.closed)
                for c in self._recorder.connections
            ]

    def wait_for_messages(self, count: int, timeout: float = 10.0) -> list[RecordedMessage]:
        """
        Block until at least ``count`` messages have arrived; never call this in the
        reactor thread (use :meth:`when_messages` there).

        :param count: how many messages to wait for.
        :param timeout: the bound, in seconds.
        :returns: all the messages so far.
        :raises TimeoutError: if fewer than ``count`` arrived in time.
        """
        recorder = self._recorder
        with recorder.condition:
            if not recorder.condition.wait_for(lambda: len(recorder.messages) >= count, timeout):
                raise TimeoutError(
                    f"expected {count} message(s), {len(recorder.messages)} arrived "
                    f"within {timeout} s"
                )
            return list(recorder.messages)

    def wait_for_connections_closed(self, timeout: float = 10.0) -> list[ConnectionRecord]:
        """
        Block until every connection so far has been closed; never call this in the
        reactor thread (use :meth:`when_connections_closed` there).

        :param timeout: the bound, in seconds.
        :returns: a snapshot of the connections, as :meth:`connections` gives.
        :raises TimeoutError: if a connection is still open after ``timeout``.
        """
        recorder = self._recorder
        with recorder.condition:
            if not recorder.condition.wait_for(
                lambda: all(c.closed for c in recorder.connections), timeout
            ):
                raise TimeoutError(f"a connection is still open after {timeout} s")
        return self.connections()

    def when_messages(
        self, count: int, timeout: float = 10.0, reactor: Any = None
    ) -> Deferred[list[RecordedMessage]]:
        """
        A Deferred that fires once at least ``count`` messages have arrived.

        The server's thread wakes the reactor with ``callFromThread`` as each message
        is recorded; nothing polls or sleeps.

        :param count: how many messages to wait for.
        :param timeout: the bound, in seconds.
        :param reactor: the reactor to fire in; the global one when ``None``.
        :returns: a Deferred firing with all the messages so far; it fails with
            ``TimeoutError`` if fewer than ``count`` arrived in time.
        """
        return self._when(count, False, timeout, reactor)

    def when_connections_closed(
        self, timeout: float = 10.0, reactor: Any = None
    ) -> Deferred[list[RecordedMessage]]:
        """
        A Deferred that fires once every connection so far has been closed.

        :param timeout: the bound, in seconds.
        :param reactor: the reactor to fire in; the global one when ``None``.
        :returns: a Deferred firing with the messages so far; it fails with
            ``TimeoutError`` if a connection is still open after ``timeout``.
        """
        return self._when(0, True, timeout, reactor)

    def _when(
        self, count: int, closed: bool, timeout: float, reactor: Any
    ) -> Deferred[list[RecordedMessage]]:
        from twisted.internet.defer import Deferred

        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        d: Deferred[list[RecordedMessage]] = Deferred()
        self._recorder.add_reactor(reactor)
        self._pending.append((count, closed, d))

        def timed_out(result: object, seconds: float) -> None:
            with self._recorder.condition:
                got = len(self._recorder.messages)
                open_ = sum(not c.closed for c in self._recorder.connections)
            what = f"{open_} connection(s) still open" if closed else f"{got} arrived"
            raise TimeoutError(f"waited {seconds} s for {count} message(s): {what}")

        time_reactor: IReactorTime = reactor
        d.addTimeout(timeout, time_reactor, onTimeoutCancel=timed_out)
        self._wake_waiters()
        return d

    def _wake_waiters(self) -> None:
        """Fire the waiting Deferreds that are satisfied (in the reactor thread)."""
        with self._recorder.condition:
            messages = list(self._recorder.messages)
            all_closed = all(c.closed for c in self._recorder.connections)
        still: list[tuple[int, bool, Deferred[Any]]] = []
        ready: list[Deferred[Any]] = []
        for count, closed, d in self._pending:
            if d.called:
                continue
            if len(messages) >= count and (all_closed or not closed):
                ready.append(d)
            else:
                still.append((count, closed, d))
        self._pending = still
        for d in ready:
            d.callback(list(messages))


# ---------------------------------------------------------------------- Postfix


class PostfixUnavailable(Exception):
    """Postfix is not installed, or cannot run here; the tests that need it skip."""


def find_postfix() -> Path:
    """
    Find the ``postfix`` command.

    :returns: its path.
    :raises PostfixUnavailable: if Postfix is not installed or we are not root
        (Postfix's master must start as root to drop to ``mail_owner``).
    """
    found = shutil.which("postfix") or (
        "/usr/sbin/postfix" if os.path.exists("/usr/sbin/postfix") else None
    )
    if found is None:
        raise PostfixUnavailable(
            "Postfix is not installed (apt-get install postfix; .ci/run does this)"
        )
    if os.geteuid() != 0:
        raise PostfixUnavailable("a private Postfix instance must be started as root")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        raise PostfixUnavailable("the 'postfix' system user does not exist") from None
    return Path(found)


@dataclass(frozen=True, slots=True)
class MaildirMessage:
    """
    One message Postfix delivered into the Maildir.

    :ivar path: the file.
    :ivar raw: its bytes: the headers Postfix added, then the message, LF line ends.
    """

    path: Path
    raw: bytes

    @property
    def delivered_to(self) -> str:
        """The address of the ``Delivered-To:`` header Postfix added (RFC 9228)."""
        for line in self.raw.split(b"\n"):
            if not line:
                break
            if line.lower().startswith(b"delivered-to:"):
                return line.split(b":", 1)[1].strip().decode("utf-8")
        raise ValueError(f"{self.path} has no Delivered-To header")

    @property
    def original(self) -> bytes:
        """The message as the client sent it, with LF line ends (see
        :func:`strip_added_headers`)."""
        return strip_added_headers(self.raw)


#: Headers Postfix's smtpd, cleanup and virtual(8) put on top of a message.
_ADDED_HEADERS = (b"return-path:", b"x-original-to:", b"delivered-to:", b"received:")


def strip_added_headers(raw: bytes) -> bytes:
    """
    Remove the trace headers Postfix prepends (Return-Path, X-Original-To,
    Delivered-To, Received, each with its continuation lines) from a delivered file.

    :param raw: a Maildir file's bytes.
    :returns: the rest, which is the client's message with CRLF turned into LF.
    """
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and lines[i].lower().startswith(_ADDED_HEADERS):
        i += 1
        while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
            i += 1
    return b"\n".join(lines[i:])


_MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command
{listen} inet n      -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {conf}
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
maillog_file_prefixes = {base}
maillog_file = {base}/maillog

myhostname = {hostname}
mydomain = {domain}
myorigin = $myhostname
mydestination =
append_dot_mydomain = no
inet_interfaces = {host}
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_banner = $myhostname ESMTP
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_restrictions =
smtpd_helo_restrictions =
smtpd_sender_restrictions =
biff = no
in_flow_delay = 0
alias_maps =
alias_database =
local_recipient_maps =

# Every recipient of the test domain lands in one Maildir (virtual(8)).
virtual_mailbox_domains = {domain}
virtual_mailbox_base = {vmail}
virtual_mailbox_maps = regexp:{conf}/virtual_mailbox
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 1
virtual_mailbox_limit = 0

# Nothing ever leaves this machine: any other domain fails at once.
default_transport = error:outbound mail is disabled in the test instance
relay_transport = error:outbound mail is disabled in the test instance
notify_classes =

message_size_limit = {size_limit}
smtputf8_enable = yes
disable_mime_output_conversion = yes
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 1
tls_random_source = dev:/dev/urandom
"""


class PostfixInstance:
    """
    A private Postfix: own configuration, queue, data folders and Maildir under
    ``base``, listening on ``127.0.0.1`` and a free port (never 25), delivering every
    recipient of :data:`TEST_DOMAIN` into :attr:`maildir`.

    It offers STARTTLS (on ``tls``), PIPELINING, CHUNKING, DSN, 8BITMIME, SMTPUTF8,
    ENHANCEDSTATUSCODES and ``SIZE size_limit``; mail to any other domain fails.
    Needs root and Debian's ``postfix`` package (:func:`find_postfix`).

    :param base: an empty folder; it is made traversable by the ``postfix`` user,
        so every folder above it must be too (``/tmp/x`` is, pytest's
        ``tmp_path`` is not).
    :param tls: the certificate to offer; one is made when ``None``.
    :param size_limit: ``message_size_limit``, advertised as SIZE.
    """

    def __init__(
        self,
        base: Path,
        *,
        tls: TLSFiles | None = None,
        size_limit: int = 30 * 1024 * 1024,
    ) -> None:
        self.postfix = find_postfix()
        self.base = base
        self.host = _LOOPBACK
        self.port = 0
        self.size_limit = size_limit
        self.conf = base / "conf"
        self.queue = base / "queue"
        self.data = base / "data"
        self.vmail = base / "vmail"
        self.maildir = self.vmail / "Maildir"
        self._tls = tls
        self._daemon_directory: Path | None = None
        self._running = False

    @property
    def tls(self) -> TLSFiles:
        """The certificate Postfix presents (made by :meth:`start` if not given)."""
        assert self._tls is not None, "start() first"
        return self._tls

    @property
    def maillog(self) -> Path:
        """Postfix's own log file, for a failing test's message."""
        return self.base / "maillog"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.postfix), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def _master(self) -> Path:
        if self._daemon_directory is None:
            postconf = self.postfix.with_name("postconf")
            out = subprocess.run(
                [str(postconf), "-c", str(self.conf), "-h", "daemon_directory"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            self._daemon_directory = Path(out.stdout.strip())
        return self._daemon_directory / "master"

    def _write_config(self) -> None:
        postfix_user = pwd.getpwnam("postfix")
        # virtual(8) refuses to deliver as root; deliver as the postfix user.
        uid, gid = postfix_user.pw_uid, postfix_user.pw_gid
        for d in (self.conf, self.queue, self.data, self.vmail):
            d.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        # master.lock and the TLS caches live in data_directory, owned by mail_owner.
        os.chown(self.data, uid, gid)
        os.chown(self.vmail, uid, gid)
        if self._tls is None:
            tls_dir = self.base / "tls"
            tls_dir.mkdir(exist_ok=True)
            self._tls = make_self_signed_cert(tls_dir)
        (self.conf / "virtual_mailbox").write_text(
            f"/@{TEST_DOMAIN.replace('.', chr(92) + '.')}$/ Maildir/\n"
        )
        (self.conf / "master.cf").write_text(_MASTER_CF.format(listen=f"{self.host}:{self.port}"))
        (self.conf / "main.cf").write_text(
            _MAIN_CF.format(
                conf=self.conf,
                queue=self.queue,
                data=self.data,
                base=self.base,
                vmail=self.vmail,
                hostname=POSTFIX_HOSTNAME,
                domain=TEST_DOMAIN,
                host=self.host,
                uid=uid,
                gid=gid,
                size_limit=self.size_limit,
                cert=self._tls.cert_path,
                key=self._tls.key_path,
            )
        )

    def start(self, attempts: int = 3) -> PostfixInstance:
        """
        Write the configuration, make the queue and start Postfix's master.

        ``master -w`` returns only once the master has bound its listening socket,
        so the port accepts connections when this returns.

        :param attempts: how many free ports to try (another process may take the
            one picked before Postfix binds it).
        :returns: this instance, for chaining.
        :raises RuntimeError: if Postfix would not start; the message holds its
            output and log.
        """
        errors: list[str] = []
        for _ in range(attempts):
            self.port = free_loopback_port()
            self._write_config()
            # "check" creates the missing queue folders with the owners and modes
            # Postfix wants (postfix-files), and reports configuration errors.
            check = self._run("check")
            if check.returncode != 0:
                raise RuntimeError(
                    f"postfix check failed:\n{check.stdout}{check.stderr}{self._log_tail()}"
                )
            started = subprocess.run(
                [str(self._master()), "-c", str(self.conf), "-w", "-e", "7200"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                stdin=subprocess.DEVNULL,
            )
            if started.returncode == 0:
                self._running = True
                return self
            errors.append(started.stdout + started.stderr + self._log_tail())
        raise RuntimeError("Postfix did not start:\n" + "\n---\n".join(errors))

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _master_pid(self) -> int | None:
        try:
            return int((self.queue / "pid" / "master.pid").read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def is_running(self) -> bool:
        """Whether this instance's master process holds its lock (``master -t``)."""
        test = subprocess.run(
            [str(self._master()), "-c", str(self.conf), "-t"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return test.returncode != 0

    def stop(self, timeout: float = 20.0) -> None:
        """
        Stop this instance: SIGTERM to its master, which passes it to its children
        ("postfix abort"), then wait (bounded) for the master's lock to go.

        :param timeout: the bound, in seconds.
        :raises RuntimeError: if the master is still running after ``timeout``.
        """
        if not self._running:
            return
        self._running = False
        pid = self._master_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() > deadline:
                raise RuntimeError(f"Postfix master {pid} still running after {timeout} s")
            time.sleep(0.05)

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # The queue and the Maildir.

    def queue_size(self) -> int:
        """How many messages are still in Postfix's queues (not yet delivered)."""
        total = 0
        for name in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _root, _dirs, files in os.walk(self.queue / name):
                total += len(files)
        return total

    def delivered_paths(self) -> list[Path]:
        """The files in the Maildir's ``new`` and ``cur`` folders, oldest first."""
        paths: list[Path] = []
        for sub in ("new", "cur"):
            folder = self.maildir / sub
            if folder.is_dir():
                paths += [p for p in folder.iterdir() if p.is_file()]
        return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def read_messages(self) -> list[MaildirMessage]:
        """Every delivered message, oldest first (blocking file reads)."""
        return [MaildirMessage(p, p.read_bytes()) for p in self.delivered_paths()]

    def clear_maildir(self) -> None:
        """Remove every delivered message, so a test counts only its own."""
        for path in self.delivered_paths():
            path.unlink()

    def wait_for_queue_empty(self, timeout: float = 30.0) -> None:
        """
        Block (polling with a bound) until Postfix has delivered or bounced everything.

        :param timeout: the bound, in seconds.
        :raises TimeoutError: if messages are still queued after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while self.queue_size():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.queue_size()} message(s) still queued after {timeout} s\n"
                    + self._log_tail()
                )
            time.sleep(0.05)

    def wait_for_messages(self, count: int, timeout: float = 30.0) -> list[MaildirMessage]:
        """
        Block (polling with a bound) until ``count`` messages are in the Maildir.
        Never call this in the reactor thread: use :meth:`when_messages` there.

        :param count: how many files to wait for.
        :param timeout: the bound, in seconds.
        :returns: every delivered message, oldest first.
        :raises TimeoutError: if fewer arrived in time (with Postfix's log).
        """
        deadline = time.monotonic() + timeout
        while len(self.delivered_paths()) < count:
            if time.monotonic() > deadline:
                raise self._timeout(count, timeout)
            time.sleep(0.05)
        return self.read_messages()

    def _timeout(self, count: int, timeout: float) -> TimeoutError:
        return TimeoutError(
            f"expected {count} message(s) in {self.maildir}, "
            f"{len(self.delivered_paths())} arrived within {timeout} s; maillog:\n"
            + self._log_tail()
        )

    def when_messages(
        self, count: int, timeout: float = 30.0, reactor: Any = None
    ) -> Deferred[list[MaildirMessage]]:
        """
        A Deferred that fires once ``count`` messages are in the Maildir.

        Lists the Maildir every 50 ms with ``task.deferLater`` (a bounded poll; the
        reactor is never blocked), then reads the files in a thread, since a
        20 MB message is too big to read in the reactor thread.

        :param count: how many files to wait for.
        :param timeout: the bound, in seconds.
        :param reactor: the reactor to use; the global one when ``None``.
        :returns: a Deferred firing with every delivered message, oldest first; it
            fails with ``TimeoutError`` (with Postfix's log) if fewer arrived in time.
        """
        from twisted.internet import defer, task, threads

        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor

        async def poll() -> list[MaildirMessage]:
            deadline = reactor.seconds() + timeout
            while len(self.delivered_paths()) < count:
                if reactor.seconds() > deadline:
                    raise self._timeout(count, timeout)
                await task.deferLater(reactor, 0.05, lambda: None)
            messages: list[MaildirMessage] = await threads.deferToThreadPool(
                reactor, reactor.getThreadPool(), self.read_messages
            )
            return messages

        return defer.Deferred.fromCoroutine(poll())


def headers_map(message: bytes) -> Mapping[str, str]:
    """
    The header fields of a message, lower-cased names to unfolded values (the last
    one of a repeated name wins); for assertions only.

    :param message: a message with CRLF or LF line ends.
    :returns: the mapping.
    """
    import email.parser
    import email.policy

    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(message)
    return {k.lower(): str(v) for k, v in parsed.items()}
