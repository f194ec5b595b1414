"""
DKIM signing (RFC 6376; Ed25519 keys per RFC 8463) of what the client sends.

A :class:`DKIMSigner` is a frozen value: a domain, a selector, a private key
(RSA of 2048 bits or more, or Ed25519), the header fields to sign and the
canonicalisation.  Give one or several (an RSA and an Ed25519 signature at
once) as ``dkim=`` to any send call::

    signer = DKIMSigner.from_file("/etc/txsmtp/dkim/s2026.pem",
                                  domain="example.com", selector="s2026")
    await smtp.sendmail(sender, recipients, message, dkim=signer)

The signature covers exactly the message that goes on the wire after line
endings are made CRLF; each ``DKIM-Signature`` header is put before the
message's own headers.

The signature algorithms, header canonicalisation and header hashing are
dkimpy's.  The body is not handed to dkimpy whole: :class:`MessageHasher`
reads a message chunk by chunk, keeps its header block (at most
:data:`MAX_HEADER_BYTES`) and hashes the body incrementally with RFC 6376's
canonicalisation (section 3.4.3 and 3.4.4), so a message of any size signs
in bounded memory; dkimpy then signs the header set with that body hash
(``DomainSigner.gen_header``, the step its own ``DKIM.sign`` ends with).

Sans-IO: bytes in, bytes out; nothing here imports Twisted.  Needs the
``dkim`` extra (``pip install 'txsmtpclient[dkim]'``).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import dkim as _dkimpy
    import nacl.signing
    from dkim.canonicalization import CanonicalizationPolicy
    from dkim.crypto import parse_pem_private_key
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise ImportError(
        f"txsmtpclient.dkim needs dkimpy and PyNaCl ({_missing}); install them with "
        "pip install 'txsmtpclient[dkim]'"
    ) from _missing

from txsmtpclient.commands import DataEncoder
from txsmtpclient.errors import DKIMError, DKIMKeyError

__all__ = [
    "DEFAULT_HEADERS",
    "MAX_HEADER_BYTES",
    "BodyHasher",
    "DKIMSigner",
    "MessageHasher",
    "as_signers",
    "sign_message",
]

CRLF = b"\r\n"

#: Header fields signed by default when present: RFC 6376 section 5.4.1's
#: list (From, Subject, Date, Message-ID, To, Cc, the MIME fields, the
#: Resent- and List- fields) and RFC 8058's List-Unsubscribe-Post.
DEFAULT_HEADERS: tuple[str, ...] = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
)

#: The most header bytes held while a streamed message is read: the header
#: block must be whole before the signature can be made.
MAX_HEADER_BYTES = 1024 * 1024

#: RFC 8301 section 3.2: signers MUST use RSA keys of at least 1024 bits and
#: SHOULD use 2048; we refuse anything under 2048.
MIN_RSA_BITS = 2048

_CANONICALISATIONS = ("simple", "relaxed")
_NAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*"
)
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+")
# Runs of two or more, or a tab: a single space (the usual case) is left as is.
_WSP_RUN = re.compile(rb"[\t ]{2,}|\t")


def _load_key(data: bytes) -> tuple[str, Any, bytes]:
    """
    Parse a private key: PEM (PKCS#1 or PKCS#8, RSA or Ed25519) or the
    base64 Ed25519 seed dkimpy's ``dknewkey`` writes.

    :returns: the DKIM algorithm, the key as dkimpy signs with it, and the
        public key as the DNS record's ``p=`` carries it (base64).
    :raises DKIMKeyError: for anything else, an encrypted key, or an RSA key
        under 2048 bits.
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    if b"-----BEGIN" in data:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise DKIMKeyError(
                "the DKIM key is encrypted: give an unencrypted PEM key (keep it readable "
                "by the daemon's user only)"
            ) from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise DKIMKeyError(f"the DKIM key is not a usable PEM private key: {e}") from None
        if isinstance(key, rsa.RSAPrivateKey):
            if key.key_size < MIN_RSA_BITS:
                raise DKIMKeyError(
                    f"the DKIM RSA key has {key.key_size} bits; DKIM needs {MIN_RSA_BITS} "
                    "or more (RFC 8301): generate a new one"
                )
            pkcs1 = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
            public = key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return "rsa-sha256", parse_pem_private_key(pkcs1), base64.b64encode(public)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            seed = key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            return _ed25519(seed)
        raise DKIMKeyError(
            f"the DKIM key is a {type(key).__name__}: DKIM signs with RSA or Ed25519 keys"
        )
    try:
        seed = base64.b64decode(data.strip(), validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise DKIMKeyError(
            "the DKIM key is neither a PEM private key nor a base64 Ed25519 seed of 32 bytes"
        )
    return _ed25519(seed)


def _ed25519(seed: bytes) -> tuple[str, Any, bytes]:
    key = nacl.signing.SigningKey(seed)
    return "ed25519-sha256", key, base64.b64encode(bytes(key.verify_key))


def _dns_name(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    try:
        ascii_name = value.strip().rstrip(".").encode("idna").decode("ascii")
    except UnicodeError:
        raise DKIMError(f"{what} {value!r} is not a valid domain name") from None
    if not _NAME.fullmatch(ascii_name):
        raise DKIMError(f"{what} {value!r} is not a valid domain name")
    return ascii_name.lower()


@dataclass(frozen=True, slots=True)
class DKIMSigner:
    """
    What to sign with: a domain (``d=``), a selector (``s=``), a private key
    and the signing choices.  Checked when made; safe to share and reuse.

    :ivar domain: the signing domain; a Unicode name is kept as its A-label.
    :ivar selector: the key's selector; the public key is published at
        ``<selector>._domainkey.<domain>`` (see :meth:`dns_record`).
    :ivar private_key: the key: PEM (RSA of 2048 bits or more, or Ed25519)
        or a base64 Ed25519 seed.  Never shown by ``repr``.
    :ivar headers: header field names to sign when present (case-insensitive).
    :ivar oversign: names signed once more than they occur, so that no such
        field can be added without breaking the signature (``From`` by
        default, RFC 6376 section 8.15).
    :ivar canonicalization: ``header/body``, each ``relaxed`` or ``simple``.
    :ivar algorithm: ``rsa-sha256`` or ``ed25519-sha256``, from the key.
    :ivar public_key: the base64 public key, as ``p=`` publishes it.
    :raises DKIMKeyError: for a key that cannot be used.
    :raises DKIMError: for a bad domain, selector, header list or
        canonicalisation (``From`` must be signed; ``Received``, ``Bcc``,
        ``Return-Path`` and ``DKIM-Signature`` must not be).
    :raises TypeError: for values of the wrong type.
    """

    domain: str
    selector: str
    private_key: bytes = field(repr=False, compare=False)
    headers: tuple[str, ...] = DEFAULT_HEADERS
    oversign: tuple[str, ...] = ("from",)
    canonicalization: str = "relaxed/relaxed"
    algorithm: str = field(init=False)
    public_key: bytes = field(init=False, repr=False)
    _key: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "domain", _dns_name(self.domain, "DKIM domain"))
        set_(self, "selector", _dns_name(self.selector, "DKIM selector"))
        key = self.private_key
        if isinstance(key, str):
            key = key.encode("ascii", "replace")
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"private_key must be bytes, not {type(key).__name__}")
        set_(self, "private_key", bytes(key))
        algorithm, parsed, public = _load_key(bytes(key))
        set_(self, "algorithm", algorithm)
        set_(self, "_key", parsed)
        set_(self, "public_key", public)
        set_(self, "headers", self._names(self.headers, "headers"))
        set_(self, "oversign", self._names(self.oversign, "oversign"))
        if "from" not in self.headers:
            raise DKIMError("DKIM headers must include From (RFC 6376 section 5.4)")
        forbidden = sorted(
            {n.encode() for n in self.headers + self.oversign}
            & {n.lower() for n in _dkimpy.DKIM.SHOULD_NOT}
        )
        if forbidden:
            raise DKIMError(
                f"DKIM must not sign {', '.join(f.decode() for f in forbidden)}: "
                "relays add or change them (RFC 6376 section 5.4)"
            )
        parts = str(self.canonicalization).lower().split("/")
        if len(parts) == 1:
            parts.append("simple")  # RFC 6376 section 3.5, c=
        if len(parts) != 2 or not set(parts) <= set(_CANONICALISATIONS):
            raise DKIMError(
                "canonicalization must be header/body, each relaxed or simple "
                f"(such as relaxed/relaxed), not {self.canonicalization!r}"
            )
        set_(self, "canonicalization", "/".join(parts))

    @staticmethod
    def _names(names: Iterable[str], what: str) -> tuple[str, ...]:
        if isinstance(names, (str, bytes)):
            raise TypeError(f"{what} must be a sequence of header names, not a single string")
        checked = []
        for name in names:
            if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
                raise DKIMError(f"{what}: {name!r} is not a header field name")
            checked.append(name.lower())
        return tuple(checked)

    @classmethod
    def from_file(
        cls,
        path: str,
        *,
        domain: str,
        selector: str,
        headers: Sequence[str] = DEFAULT_HEADERS,
        oversign: Sequence[str] = ("from",),
        canonicalization: str = "relaxed/relaxed",
    ) -> DKIMSigner:
        """
        A signer whose key is read from a file now (a blocking read: call it
        at start-up, not in the reactor's thread while it serves).

        :raises DKIMKeyError: when the file cannot be read or holds no usable
            key (the message names the file, never its content).
        """
        try:
            with open(path, "rb") as f:
                data = f.read(1024 * 1024)
        except OSError as e:
            raise DKIMKeyError(f"cannot read the DKIM key {path}: {e.strerror}") from None
        try:
            return cls(domain, selector, data, tuple(headers), tuple(oversign), canonicalization)
        except DKIMKeyError as e:
            raise DKIMKeyError(f"{path}: {e}") from None

    @property
    def body_canonicalization(self) -> str:
        """
        ``relaxed`` or ``simple``: how the body is canonicalised.
        """
        return self.canonicalization.partition("/")[2]

    def dns_record(self) -> str:
        """
        The TXT record to publish at ``<selector>._domainkey.<domain>``.
        """
        kind = "rsa" if self.algorithm.startswith("rsa") else "ed25519"
        return f"v=DKIM1; k={kind}; p={self.public_key.decode('ascii')}"

    @property
    def dns_name(self) -> str:
        """
        Where :meth:`dns_record` is published.
        """
        return f"{self.selector}._domainkey.{self.domain}"

    def signature(self, header_block: bytes, body_hash: bytes, now: int | None = None) -> bytes:
        """
        The ``DKIM-Signature`` header field (CRLF included) for a message.

        :param header_block: the message's header fields, CRLF line ends,
            without the empty line that ends them.
        :param body_hash: the SHA-256 digest of the body canonicalised as
            :attr:`body_canonicalization` (see :class:`BodyHasher`).
        :param now: the signing time (``t=``), seconds since the epoch.
        :raises DKIMError: when the header block does not parse or holds no
            ``From``.
        """
        try:
            signer = _dkimpy.DKIM(
                header_block + CRLF, signature_algorithm=self.algorithm.encode(), linesep=CRLF
            )
        except _dkimpy.DKIMException as e:
            raise DKIMError(f"the message's header block cannot be signed: {e}") from None
        signer.should_sign = {n.encode() for n in self.headers}
        signer.frozen_sign = {n.encode() for n in self.oversign}
        include = [name.lower() for name in signer.default_sign_headers()]
        if b"from" not in include:
            raise DKIMError("the message has no From header, which DKIM must sign")
        algorithm = self.algorithm.encode()
        signer.hasher = hashlib.sha256
        fields = [
            (b"v", b"1"),
            (b"a", algorithm),
            (b"c", self.canonicalization.encode()),
            (b"d", self.domain.encode()),
            (b"q", b"dns/txt"),
            (b"s", self.selector.encode()),
            (b"t", b"%d" % (int(time.time()) if now is None else now)),
            (b"h", b" : ".join(include)),
            (b"bh", base64.b64encode(body_hash)),
            # As dkimpy's own sign(): a placeholder so that b= folds onto
            # its own line and refolding after signing moves nothing else.
            (b"b", b"0" * 60),
        ]
        policy = CanonicalizationPolicy.from_c_value(self.canonicalization.encode())
        try:
            value = signer.gen_header(fields, include, policy, b"DKIM-Signature", self._key)
        except _dkimpy.DKIMException as e:  # pragma: no cover - checked keys sign
            raise DKIMError(f"DKIM signing failed: {e}") from None
        return b"DKIM-Signature: " + bytes(value)


def as_signers(dkim: DKIMSigner | Sequence[DKIMSigner] | None) -> tuple[DKIMSigner, ...]:
    """
    A caller's ``dkim=`` as a tuple of signers.

    :raises TypeError: for anything but a signer or a sequence of signers.
    """
    if dkim is None:
        return ()
    if isinstance(dkim, DKIMSigner):
        return (dkim,)
    if isinstance(dkim, (str, bytes)) or not isinstance(dkim, Sequence):
        raise TypeError(
            f"dkim must be a DKIMSigner or a sequence of them, not {type(dkim).__name__}"
        )
    for signer in dkim:
        if not isinstance(signer, DKIMSigner):
            raise TypeError(f"dkim must hold DKIMSigner values, not {type(signer).__name__}")
    return tuple(dkim)


class BodyHasher:
    """
    The body hash of RFC 6376 (``bh=``), computed incrementally: feed the
    body in chunks of any size, read :meth:`digest` at the end.

    Simple canonicalisation (section 3.4.3) drops the empty lines at the end
    of the body; relaxed (section 3.4.4) also drops whitespace at the end of
    each line and makes every other run of whitespace one space.  Both need
    to know what follows: trailing CRLFs are counted, not hashed, until a
    line with content comes (memory holds a count and one flag, whatever
    the input), and in relaxed mode whitespace at a chunk's end is held back
    as one pending space.

    Input must be CRLF-normalised, with no CRLF split between chunks
    (:class:`MessageHasher` guarantees both).
    """

    __slots__ = ("_any", "_hash", "_pending_crlf", "_pending_wsp", "_relaxed")

    def __init__(self, canonicalization: str) -> None:
        if canonicalization not in _CANONICALISATIONS:
            raise ValueError(
                f"body canonicalization must be simple or relaxed, not {canonicalization!r}"
            )
        self._relaxed = canonicalization == "relaxed"
        self._hash = hashlib.sha256()
        self._pending_crlf = 0
        self._pending_wsp = False
        self._any = False

    def update(self, data: bytes) -> None:
        """
        Hash the next part of the body.
        """
        if self._relaxed:
            if self._pending_wsp:
                data = b" " + data
                self._pending_wsp = False
            if b"\t" in data or b"  " in data:
                # Two C-level searches spare a regex pass over ordinary text.
                data = _WSP_RUN.sub(b" ", data)
            data = data.replace(b" \r\n", CRLF)
            if data.endswith(b" "):
                self._pending_wsp = True
                data = data[:-1]
        if not data:
            return
        content = data.rstrip(CRLF)
        if content:
            if self._pending_crlf:
                self._hash.update(CRLF * self._pending_crlf)
            self._hash.update(content)
            self._any = True
            # After normalisation every CR or LF belongs to a CRLF pair.
            self._pending_crlf = (len(data) - len(content)) // 2
        else:
            self._pending_crlf += len(data) // 2

    def digest(self) -> bytes:
        """
        The SHA-256 digest of the canonical body: its last line ended by one
        CRLF; an empty body is one CRLF in simple mode and nothing in
        relaxed mode.  Call once, after the last :meth:`update`.
        """
        if self._any or not self._relaxed:
            self._hash.update(CRLF)
        return self._hash.digest()


class MessageHasher:
    """
    Reads a message chunk by chunk, as it is sent: makes line endings CRLF
    (the client's own :class:`~txsmtpclient.commands.DataEncoder` rule, so
    what is hashed is what goes on the wire), keeps the header block, and
    hashes the body once per body canonicalisation asked for.

    :meth:`update` and :meth:`finish` return the normalised bytes, which the
    caller sends (or keeps to send); the message always ends with CRLF.

    :ivar size: the normalised message's length so far.
    :ivar eight_bit: whether a byte over 127 was seen.
    :ivar added_crlf: whether :meth:`finish` added a final CRLF.
    """

    def __init__(
        self, canonicalizations: Iterable[str], max_header_bytes: int = MAX_HEADER_BYTES
    ) -> None:
        self._encoder = DataEncoder(dot_stuff=False)
        self._header = bytearray()
        self._in_body = False
        self._max_header = max_header_bytes
        self._hashers = {c: BodyHasher(c) for c in set(canonicalizations)}
        self._ends_crlf = True
        self._body_hashes: dict[str, bytes] | None = None
        self.added_crlf = False
        self.size = 0
        self.eight_bit = False

    def update(self, chunk: bytes) -> bytes:
        """
        Take the next chunk of the message.

        :returns: its bytes with CRLF line endings.
        :raises DKIMError: when the header block grows past the limit.
        """
        out = self._encoder.encode(chunk)
        self._feed(out)
        return out

    def finish(self) -> bytes:
        """
        End the message.

        :returns: the last bytes to send: a held-back line ending, and a CRLF
            when the message did not end with one.
        """
        out = self._encoder.finish()
        if out:
            self._feed(out)
        self.added_crlf = not self._ends_crlf
        if self.added_crlf:
            out += CRLF
            self._feed(CRLF)
        if not self._in_body:
            # Headers only, no empty line: the body is empty.
            self._in_body = True
        self._body_hashes = {c: h.digest() for c, h in self._hashers.items()}
        return out

    @property
    def header_block(self) -> bytes:
        """
        The message's header fields, without the empty line after them.
        """
        return bytes(self._header)

    def _feed(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if not self.eight_bit and not data.isascii():
            self.eight_bit = True
        self._ends_crlf = data.endswith(CRLF)
        if not self._in_body:
            if not self._header and data.startswith(CRLF):
                # No header block at all; the body starts after this line.
                self._in_body = True
                data = data[2:]
            else:
                start = max(0, len(self._header) - 3)
                self._header += data
                end = self._header.find(b"\r\n\r\n", start)
                if end < 0:
                    if len(self._header) > self._max_header:
                        raise DKIMError(
                            f"the message's header block is over {self._max_header} bytes: "
                            "too large to sign"
                        )
                    return
                data = bytes(self._header[end + 4 :])
                del self._header[end + 2 :]
                self._in_body = True
        for hasher in self._hashers.values():
            hasher.update(data)

    def signatures(self, signers: Sequence[DKIMSigner], now: int | None = None) -> bytes:
        """
        Every signer's ``DKIM-Signature`` field, in order, to put before the
        message.  Call after :meth:`finish`.

        :raises DKIMError: as :meth:`DKIMSigner.signature`.
        """
        if self._body_hashes is None:
            raise RuntimeError("MessageHasher.signatures() called before finish()")
        hashes: Mapping[str, bytes] = self._body_hashes
        header = self.header_block
        return b"".join(s.signature(header, hashes[s.body_canonicalization], now) for s in signers)


def sign_message(message: bytes, signers: Sequence[DKIMSigner], now: int | None = None) -> bytes:
    """
    A whole message, signed: its line endings made CRLF (and a final CRLF
    added when missing), with each signer's ``DKIM-Signature`` before it.

    :raises DKIMError: when the message cannot be signed (no ``From``).
    """
    hasher = MessageHasher(s.body_canonicalization for s in signers)
    body = hasher.update(message) + hasher.finish()
    return hasher.signatures(signers, now) + body
