"""
DKIM signing, pure tier: the signer value, key checks, the incremental body
hash against dkimpy's own canonicalisation, and signatures dkimpy verifies.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from dkim.canonicalization import Relaxed, Simple
from dkimtools import (
    DOMAIN,
    ed25519_pem,
    ed25519_signer,
    rsa_pem,
    rsa_signer,
    verify_all,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from txsmtpclient.commands import DataEncoder
from txsmtpclient.dkim import (
    BodyHasher,
    DKIMSigner,
    MessageHasher,
    as_signers,
    sign_message,
)
from txsmtpclient.errors import DKIMError, DKIMKeyError, SMTPArgumentError

CANONICALISATIONS = ["relaxed/relaxed", "simple/simple", "relaxed/simple", "simple/relaxed"]

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: a  folded\r\n   subject\r\n"
    b"Date: Wed, 02 Dec 2026 05:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Received: from somewhere\r\n"
    b"\r\n"
    b".a line starting with a dot\r\n"
    b"trailing space  \t\r\n"
    b"\r\n"
    b"in  between\r\n"
    b"\r\n\r\n"
)


# -- the signer value -------------------------------------------------------------


def test_signer_repr_and_equality_never_show_the_key() -> None:
    """The private key is in no repr (logs print values) and equal signers hash equal."""
    signer = rsa_signer()
    assert b"PRIVATE" in signer.private_key
    assert "PRIVATE" not in repr(signer)
    assert signer.private_key.decode().splitlines()[1] not in repr(signer)
    assert signer == rsa_signer()
    assert hash(signer) == hash(rsa_signer())
    assert signer != rsa_signer(selector="other")
    assert signer.algorithm == "rsa-sha256"
    assert ed25519_signer().algorithm == "ed25519-sha256"


def test_dns_record_is_the_published_form() -> None:
    """dns_record() is what goes in the TXT record, at dns_name."""
    signer = ed25519_signer()
    assert signer.dns_name == "ed._domainkey.example.com"
    assert signer.dns_record().startswith("v=DKIM1; k=ed25519; p=")
    assert rsa_signer().dns_record().startswith("v=DKIM1; k=rsa; p=MII")


def test_small_rsa_key_is_refused() -> None:
    """An RSA key under 2048 bits is refused with a typed error (RFC 8301)."""
    with pytest.raises(DKIMKeyError, match=r"1024 bits.*2048"):
        DKIMSigner(DOMAIN, "s", rsa_pem(1024))


def test_unusable_keys_are_refused() -> None:
    """Encrypted, non-RSA/Ed25519 and garbage keys raise DKIMKeyError, a ValueError."""
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = ec_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(DKIMKeyError, match="RSA or Ed25519"):
        DKIMSigner(DOMAIN, "s", ec_pem)
    with pytest.raises(DKIMKeyError, match="encrypted"):
        DKIMSigner(DOMAIN, "s", encrypted)
    with pytest.raises(DKIMKeyError, match="neither"):
        DKIMSigner(DOMAIN, "s", b"not a key")
    with pytest.raises(DKIMKeyError, match="PEM"):
        DKIMSigner(DOMAIN, "s", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert issubclass(DKIMKeyError, SMTPArgumentError)
    assert issubclass(DKIMKeyError, ValueError)


def test_dknewkey_ed25519_seed_is_accepted() -> None:
    """The base64 Ed25519 seed dkimpy's dknewkey writes is a usable key."""
    key = serialization.load_pem_private_key(ed25519_pem(), password=None)
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    signer = DKIMSigner(DOMAIN, "ed", base64.b64encode(seed) + b"\n")
    assert signer.public_key == ed25519_signer().public_key


def test_from_file_names_the_file_not_the_key(tmp_path: Path) -> None:
    """from_file reads a key; errors name the path and never show its content."""
    path = tmp_path / "key.pem"
    path.write_bytes(rsa_pem())
    assert DKIMSigner.from_file(str(path), domain=DOMAIN, selector="rsa") == rsa_signer()
    with pytest.raises(DKIMKeyError, match=r"cannot read the DKIM key .*missing"):
        DKIMSigner.from_file(str(tmp_path / "missing"), domain=DOMAIN, selector="s")
    small = tmp_path / "small.pem"
    small.write_bytes(rsa_pem(1024))
    with pytest.raises(DKIMKeyError) as caught:
        DKIMSigner.from_file(str(small), domain=DOMAIN, selector="s")
    assert str(small) in str(caught.value)
    assert "PRIVATE" not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"headers": ("to", "subject")}, "must include From"),
        ({"headers": ("from", "received")}, "must not sign received"),
        ({"oversign": ("bcc",)}, "must not sign bcc"),
        ({"headers": ("from", "bad:name")}, "not a header field name"),
        ({"canonicalization": "loose/relaxed"}, "relaxed or simple"),
        ({"domain": "exa mple.com"}, "not a valid domain"),
        ({"selector": "s;1"}, "not a valid domain"),
    ],
)
def test_bad_signer_choices_are_refused(kwargs: dict[str, object], message: str) -> None:
    """Each bad choice raises DKIMError naming the problem."""
    values: dict[str, object] = {"domain": DOMAIN, "selector": "s", "private_key": rsa_pem()}
    values.update(kwargs)
    with pytest.raises(DKIMError, match=message):
        DKIMSigner(**values)  # type: ignore[arg-type]


def test_canonicalization_forms() -> None:
    """A bare "relaxed" is relaxed/simple (RFC 6376 c=); case is ignored; IDN as A-label."""
    assert rsa_signer("Relaxed").canonicalization == "relaxed/simple"
    signer = DKIMSigner("bücher.example", "s", rsa_pem())
    assert signer.domain == "xn--bcher-kva.example"


def test_as_signers() -> None:
    """dkim= takes one signer, a sequence, or None; anything else is a TypeError."""
    signer = rsa_signer()
    assert as_signers(None) == ()
    assert as_signers(signer) == (signer,)
    assert as_signers([signer, ed25519_signer()]) == (signer, ed25519_signer())
    with pytest.raises(TypeError, match="DKIMSigner"):
        as_signers("rsa")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DKIMSigner"):
        as_signers([signer, "x"])  # type: ignore[list-item]


# -- the body hash ----------------------------------------------------------------


def _dkimpy_body_hash(message: bytes, canonicalization: str) -> bytes:
    """dkimpy's body hash of a message as it would arrive (CRLF, ending in CRLF)."""
    normalised = DataEncoder(dot_stuff=False)
    wire = normalised.encode(message) + normalised.finish()
    if not wire.endswith(b"\r\n"):
        wire += b"\r\n"
    _, body = dkim.rfc822_parse(wire)
    algorithm = Relaxed if canonicalization == "relaxed" else Simple
    return hashlib.sha256(algorithm.canonicalize_body(body)).digest()


def _chunked_body_hash(message: bytes, cuts: list[int], canonicalization: str) -> bytes:
    hasher = MessageHasher([canonicalization])
    start = 0
    for cut in sorted(cuts):
        hasher.update(message[start:cut])
        start = cut
    hasher.update(message[start:])
    hasher.finish()
    assert hasher._body_hashes is not None
    return hasher._body_hashes[canonicalization]


_BODY_BYTES = st.lists(
    st.sampled_from([b"a", b"b", b" ", b"\t", b"\r", b"\n", b"\r\n", b".", b"\xc3\xa9"]),
    max_size=60,
).map(b"".join)


# No deadline: the machine is shared, and timing is not what is tested.
@settings(deadline=None)
@given(
    body=_BODY_BYTES,
    cuts=st.lists(st.integers(min_value=0, max_value=80), max_size=8),
    canonicalization=st.sampled_from(["simple", "relaxed"]),
)
def test_incremental_body_hash_matches_dkimpy(
    body: bytes, cuts: list[int], canonicalization: str
) -> None:
    """Cut anywhere, in both modes, the streamed body hash equals dkimpy's over the whole body."""
    message = b"From: a@example.com\r\n\r\n" + body
    cuts = [c for c in cuts if c <= len(message)]
    assert _chunked_body_hash(message, cuts, canonicalization) == _dkimpy_body_hash(
        message, canonicalization
    )


@pytest.mark.parametrize(
    ("body", "canonical"),
    [
        (b"", {"simple": b"\r\n", "relaxed": b""}),
        (b"\r\n\r\n", {"simple": b"\r\n", "relaxed": b""}),
        (b"a  b \t\r\n\r\n \r\n", {"simple": b"a  b \t\r\n\r\n \r\n", "relaxed": b"a b\r\n"}),
        (b" x\r\n\r\ny", {"simple": b" x\r\n\r\ny\r\n", "relaxed": b" x\r\n\r\ny\r\n"}),
    ],
)
def test_body_hash_table(body: bytes, canonical: dict[str, bytes]) -> None:
    """RFC 6376 section 3.4.5's rules, one byte at a time: the expected canonical forms."""
    for mode, expected in canonical.items():
        hasher = BodyHasher(mode)
        for i in range(len(body)):
            # One byte at a time, never splitting a CRLF (MessageHasher's promise).
            if body[i : i + 1] == b"\n" and body[i - 1 : i] == b"\r":
                continue
            end = i + 2 if body[i : i + 2] == b"\r\n" else i + 1
            hasher.update(body[i:end])
        assert hasher.digest() == hashlib.sha256(expected).digest(), mode


def test_header_block_over_the_limit_is_refused() -> None:
    """A header block that never ends is refused once past the limit, not held in memory."""
    hasher = MessageHasher(["relaxed"], max_header_bytes=100)
    hasher.update(b"From: a@example.com\r\n")
    with pytest.raises(DKIMError, match="header block"):
        for _ in range(10):
            hasher.update(b"X-Filler: " + b"x" * 20 + b"\r\n")


# -- whole signatures --------------------------------------------------------------


@pytest.mark.parametrize("canonicalization", CANONICALISATIONS)
@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_signed_message_verifies(kind: str, canonicalization: str) -> None:
    """RSA and Ed25519, every canonicalisation: dkimpy's verifier accepts the signature."""
    signer = rsa_signer(canonicalization) if kind == "rsa" else ed25519_signer(canonicalization)
    signed = sign_message(MESSAGE, [signer])
    assert signed.startswith(b"DKIM-Signature: v=1; a=" + signer.algorithm.encode())
    assert verify_all(signed, [signer]) == [True]
    # A changed header, or body, fails: the test can tell the difference.
    assert verify_all(signed.replace(b"To: bob@", b"To: eve@"), [signer]) == [False]
    assert verify_all(signed.replace(b"in  between", b"in  betwixt"), [signer]) == [False]


def test_several_signers_each_verify() -> None:
    """An RSA and an Ed25519 signature at once: two headers, both verify."""
    signers = [rsa_signer(), ed25519_signer("simple/simple")]
    signed = sign_message(MESSAGE.replace(b"\r\n", b"\n"), signers)
    assert signed.count(b"DKIM-Signature:") == 2
    assert verify_all(signed, signers) == [True, True]


def test_signature_fields() -> None:
    """No l= (the whole body is signed); From oversigned; Received not signed; t= as given."""
    signed = sign_message(MESSAGE, [rsa_signer()], now=1_800_000_000)
    header = signed.split(b"\r\nFrom:")[0].replace(b"\r\n ", b" ")
    tags = dict(
        tag.strip().split(b"=", 1) for tag in header.split(b":", 1)[1].split(b";") if tag.strip()
    )
    assert b"l" not in tags
    assert tags[b"t"] == b"1800000000"
    signed_names = [n.strip() for n in tags[b"h"].split(b":")]
    assert signed_names.count(b"from") == 2
    assert b"received" not in signed_names
    assert {b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"} <= set(
        signed_names
    )


def test_added_from_header_breaks_the_signature() -> None:
    """From is oversigned: a second From added on the way fails verification."""
    signer = rsa_signer()
    signed = sign_message(MESSAGE, [signer])
    forged = signed.replace(b"To: bob@", b"From: mallory@example.net\r\nTo: bob@")
    assert verify_all(forged, [signer]) == [False]


def test_message_without_from_is_refused() -> None:
    """No From header: DKIMError, nothing signed."""
    with pytest.raises(DKIMError, match="no From header"):
        sign_message(b"To: bob@example.org\r\n\r\nbody\r\n", [rsa_signer()])
    with pytest.raises(DKIMError, match="no From header"):
        sign_message(b"\r\nbody only\r\n", [rsa_signer()])


def test_line_endings_are_normalised_before_signing() -> None:
    """Bare LF and CR become CRLF and a final CRLF is added: what is signed is what is sent."""
    signer = ed25519_signer()
    signed = sign_message(b"From: a@example.com\n\nline\rlast", [signer])
    assert signed.endswith(b"From: a@example.com\r\n\r\nline\r\nlast\r\n")
    assert verify_all(signed, [signer]) == [True]


def test_missing_extra_gives_a_clear_import_error(tmp_path: Path) -> None:
    """Without dkimpy, importing txsmtpclient.dkim says which extra to install."""
    blocker = tmp_path / "dkim.py"
    blocker.write_text("raise ImportError('No module named dkim')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]))
    result = subprocess.run(
        [sys.executable, "-c", "import txsmtpclient.dkim"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0
    assert "pip install 'txsmtpclient[dkim]'" in result.stderr
