"""
A throw-away certificate authority and server certificate for tests, made
fresh in memory: the server offers STARTTLS (or implicit TLS) with it and the
client trusts it through :meth:`TestCertificate.client_options`.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
)

__all__ = ["TestCertificate"]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True, slots=True)
class TestCertificate:
    """
    A CA certificate and a server certificate it signed, both PEM.

    :ivar ca_pem: the CA certificate, to trust.
    :ivar cert_pem: the server's certificate.
    :ivar key_pem: the server's private key (a test key: never reuse it).
    :ivar hostnames: the names the server certificate is valid for.
    """

    #: Not a test case, for pytest's collector.
    __test__ = False

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    hostnames: tuple[str, ...]

    @classmethod
    def generate(cls, *hostnames: str) -> TestCertificate:
        """
        A new CA and a server certificate for ``hostnames`` (default
        ``localhost`` and ``127.0.0.1``), valid from a day ago for a week.
        """
        names = hostnames or ("localhost", "127.0.0.1")
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("txsmtpclient.testing CA")
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        alternatives: list[x509.GeneralName] = []
        for name in names:
            try:
                alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alternatives.append(x509.DNSName(name))
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        return cls(
            ca.public_bytes(pem),
            cert.public_bytes(pem),
            key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            tuple(names),
        )

    def server_options(self) -> CertificateOptions:
        """
        The server side's TLS options; the chain it presents holds the CA
        certificate too, as a server sends its intermediates.
        """
        server = PrivateCertificate.loadPEM(self.cert_pem + self.key_pem)
        return CertificateOptions(
            privateKey=server.privateKey.original,
            certificate=server.original,
            extraCertChain=[Certificate.loadPEM(self.ca_pem).original],
        )

    def client_options(self, hostname: str | None = None) -> IOpenSSLClientConnectionCreator:
        """
        Client TLS options that trust only this CA and check ``hostname``
        (default: the certificate's first name); pass them as an ``SMTP``'s
        ``tls_options``.
        """
        return optionsForClientTLS(
            hostname or self.hostnames[0], trustRoot=Certificate.loadPEM(self.ca_pem)
        )
