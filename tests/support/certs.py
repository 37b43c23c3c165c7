"""Certificates and signed tokens the registry tests generate: a CA, server certificates for 127.0.0.1,
the ``certs.d`` layout clients read (``DIR/HOST:PORT/ca.crt``), and ES256 JWTs with an ``x5c`` header
(what a distribution token server issues).

Needs :mod:`cryptography` (the ``test`` extra); :func:`require_cryptography` skips without it.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        pytest.skip("the `cryptography` package is not installed (pip install '.[test]')")


@dataclass
class KeyPair:
    """A PEM certificate and its private key, written as ``cert`` / ``key`` files."""

    cert_pem: bytes
    key_pem: bytes
    cert: Path
    key: Path

    def cert_der(self) -> bytes:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        return x509.load_pem_x509_certificate(self.cert_pem).public_bytes(Encoding.DER)


def _write(directory: Path, name: str, cert_pem: bytes, key_pem: bytes) -> KeyPair:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.crt").write_bytes(cert_pem)
    (directory / f"{name}.key").write_bytes(key_pem)
    (directory / f"{name}.key").chmod(0o600)
    return KeyPair(cert_pem, key_pem, directory / f"{name}.crt", directory / f"{name}.key")


def _name(cn: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: Any, key: Any) -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization

    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )


def _builder(subject: str, issuer: Any, public_key: Any) -> Any:
    from cryptography import x509

    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
    )


def make_ca(directory: Path, name: str = "ca", cn: str = "ovlcore test CA") -> KeyPair:
    """A self-signed CA (EC P-256), as ``DIR/NAME.crt`` and ``DIR/NAME.key``."""
    require_cryptography()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(cn, _name(cn), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, *_pem(cert, key))


def issue(ca: KeyPair, directory: Path, name: str, *, cn: str = "127.0.0.1", ip: str | None = "127.0.0.1",
          server: bool = True) -> KeyPair:
    """A leaf certificate signed by ``ca``: a TLS server certificate with ``ip`` as its SAN, or (``server``
    false) a signing certificate (for tokens)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    key = ec.generate_private_key(ec.SECP256R1())
    b = _builder(cn, ca_cert.subject, key.public_key())
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    if server:
        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    return _write(directory, name, *_pem(cert, key))


def certs_d(directory: Path, host: str, ca: KeyPair) -> Path:
    """``DIRECTORY/HOST/ca.crt`` (the ``certs.d`` layout of Docker and containers/image); returns
    ``DIRECTORY`` (what ``RegistryConfig(ca_dirs=...)`` takes)."""
    d = directory / host
    d.mkdir(parents=True, exist_ok=True)
    (d / "ca.crt").write_bytes(ca.cert_pem)
    return directory


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_es256(signer: KeyPair, claims: dict[str, Any], chain: tuple[KeyPair, ...] = ()) -> str:
    """A compact JWT signed with ``signer``'s EC key (ES256: raw r||s), with ``x5c`` naming ``signer``'s
    certificate (then ``chain``), as distribution's token verifier expects."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    header = {"typ": "JWT", "alg": "ES256",
              "x5c": [base64.b64encode(k.cert_der()).decode() for k in [signer, *chain]]}
    signing_input = _b64(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        _b64(json.dumps(claims, separators=(",", ":")).encode())
    key = serialization.load_pem_private_key(signer.key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return signing_input + "." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def token_claims(*, issuer: str, subject: str, audience: str, access: list[dict[str, Any]],
                 lifetime: int = 300) -> dict[str, Any]:
    """The claim set of a distribution registry token."""
    now = int(time.time())
    return {"iss": issuer, "sub": subject, "aud": audience, "exp": now + lifetime, "nbf": now - 10, "iat": now,
            "jti": secrets.token_hex(8), "access": access}


def jwt_claims(token: str) -> dict[str, Any]:
    """The (unverified) claims of a compact JWT, for assertions."""
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]
