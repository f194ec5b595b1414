"""
DKIM test tools: keys generated on the fly (never stored), and dkimpy's
verifier answering from the signers' own DNS records (its ``dnsfunc`` hook).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from txsmtpclient.dkim import DKIMSigner

DOMAIN = "example.com"


def rsa_pem(bits: int = 2048) -> bytes:
    """A fresh RSA private key as PKCS#8 PEM, made once per size and test run."""
    return _rsa_pem(bits)


@functools.cache
def _rsa_pem(bits: int) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ed25519_pem(number: int = 0) -> bytes:
    """A fresh Ed25519 private key as PKCS#8 PEM (``number`` tells keys apart)."""
    return _ed25519_pem(number)


@functools.cache
def _ed25519_pem(number: int) -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def rsa_signer(canonicalization: str = "relaxed/relaxed", selector: str = "rsa") -> DKIMSigner:
    return DKIMSigner(DOMAIN, selector, rsa_pem(), canonicalization=canonicalization)


def ed25519_signer(
    canonicalization: str = "relaxed/relaxed", selector: str = "ed", number: int = 0
) -> DKIMSigner:
    return DKIMSigner(DOMAIN, selector, ed25519_pem(number), canonicalization=canonicalization)


def dns_for(signers: Sequence[DKIMSigner]) -> dict[str, bytes]:
    """The TXT records of ``signers``, by the name dkimpy asks for."""
    return {f"{s.dns_name}.": s.dns_record().encode("ascii") for s in signers}


def verify_all(message: bytes, signers: Sequence[DKIMSigner]) -> list[bool]:
    """
    dkimpy's verdict on each DKIM-Signature of ``message`` (in header
    order), with DNS answered from ``signers``' published records.
    """
    records = dns_for(signers)

    def dnsfunc(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = name.decode("ascii") if isinstance(name, bytes) else name
        return records.get(key)

    verifier = dkim.DKIM(message)
    count = sum(1 for name, _ in verifier.headers if name.lower() == b"dkim-signature")
    with warnings.catch_warnings():
        # dkimpy formats bytes into its debug messages: python -bb objects.
        warnings.simplefilter("ignore", BytesWarning)
        return [_verify_one(verifier, i, dnsfunc) for i in range(count)]


def _verify_one(verifier: dkim.DKIM, index: int, dnsfunc: object) -> bool:
    try:
        return bool(verifier.verify(index, dnsfunc=dnsfunc))
    except dkim.DKIMException:
        # A body hash mismatch raises rather than answering False.
        return False
