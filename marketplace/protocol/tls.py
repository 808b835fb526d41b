"""Worker endpoints with a pinned TLS key: how an on-chain offer says which certificate to expect.

An offer's endpoint string is ``host:port`` (plaintext, loopback only) or
``host:port#tls-spki=<64 hex>``: TLS, and the server's certificate must carry a public key whose
SubjectPublicKeyInfo (DER) hashes to that sha256. No certificate authority is involved: the
provider's worker makes a self-signed certificate on first start (:func:`ensure_certificate`) and
registers its pin; requesters, verifiers and pool members connect only to that key
(:func:`worker_channel`). This module is the one place the format is parsed
(:func:`parse_endpoint`) and written (:meth:`Endpoint.__str__`).
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from marketplace.errors import ConfigError, WorkerError

__all__ = [
    "PIN_PREFIX",
    "SERVER_NAME",
    "Endpoint",
    "ensure_certificate",
    "fetch_pinned_certificate",
    "is_loopback",
    "parse_endpoint",
    "spki_sha256",
    "worker_channel",
]

PIN_PREFIX = "tls-spki="
SERVER_NAME = "flopex-worker"
"""The DNS name in certificates the worker makes; clients check it (the pin is what matters)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A worker's address and, when it serves TLS, the sha256 of its certificate's public key."""

    host: str
    port: int
    spki_sha256: bytes | None = None

    @property
    def target(self) -> str:
        """``host:port`` as gRPC takes it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        if self.spki_sha256 is None:
            return self.target
        return f"{self.target}#{PIN_PREFIX}{self.spki_sha256.hex()}"


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``host:port[#tls-spki=<hex>]``; raise :class:`ConfigError` when it is malformed."""
    address, _, fragment = text.strip().partition("#")
    pin: bytes | None = None
    if fragment:
        if not fragment.startswith(PIN_PREFIX):
            raise ConfigError(f"endpoint {text!r}: unknown fragment {fragment!r} (expected {PIN_PREFIX}<hex>)")
        try:
            pin = bytes.fromhex(fragment[len(PIN_PREFIX) :])
        except ValueError:
            pin = b""
        if len(pin) != 32:
            raise ConfigError(f"endpoint {text!r}: the TLS pin must be 64 hex digits (a sha256)")
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"endpoint {text!r}: expected host:port")
    return Endpoint(host.strip("[]"), int(port_text), pin)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (``localhost``, 127/8, ::1)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def spki_sha256(certificate_pem: bytes) -> bytes:
    """sha256 of the certificate's SubjectPublicKeyInfo (DER): what a pin names."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(certificate_pem)
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def _dns_name(certificate_pem: bytes) -> str:
    """The name a client checks the certificate for: its first DNS name, else its common name."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(certificate_pem)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
    except x509.ExtensionNotFound:
        names = []
    if names:
        return str(names[0])
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common[0].value) if common else SERVER_NAME


def ensure_certificate(cert_path: Path, key_path: Path, *, days: int = 3650) -> bytes:
    """Make a self-signed certificate and key (mode 0600) unless both exist; return the SPKI pin."""
    if cert_path.exists() and key_path.exists():
        return spki_sha256(cert_path.read_bytes())
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    return spki_sha256(pem)


def fetch_pinned_certificate(endpoint: Endpoint, *, timeout_s: float = 10.0) -> bytes:
    """The worker's certificate (PEM) after checking its key against the endpoint's pin.

    Raises :class:`WorkerError` (``UNAVAILABLE``) when the worker cannot be reached and
    (``PERMISSION_DENIED``) when its key is not the pinned one.
    """
    if endpoint.spki_sha256 is None:
        raise ConfigError(f"endpoint {endpoint} has no TLS pin")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin below is the check
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout_s) as sock:
            with context.wrap_socket(sock, server_hostname=SERVER_NAME) as tls:
                der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise WorkerError(f"cannot reach the worker at {endpoint.target} over TLS: {exc}", code="UNAVAILABLE") from None
    if der is None:
        raise WorkerError(f"the worker at {endpoint.target} sent no certificate", code="PERMISSION_DENIED")
    pem = ssl.DER_cert_to_PEM_cert(der).encode()
    got = spki_sha256(pem)
    if got != endpoint.spki_sha256:
        raise WorkerError(
            f"the worker at {endpoint.target} presents TLS key {got.hex()}, not the pinned "
            f"{endpoint.spki_sha256.hex()}: refusing to connect (an impostor, or the provider changed its key "
            "without updating its offer)",
            code="PERMISSION_DENIED",
        )
    return pem


def worker_channel(
    endpoint: str | Endpoint,
    *,
    options: list[tuple[str, Any]] | None = None,
    allow_plaintext: bool = False,
    timeout_s: float = 10.0,
) -> grpc.Channel:
    """A gRPC channel to a worker: TLS to the pinned key, or plaintext to a loopback address.

    An endpoint without a pin is refused unless it is loopback, or ``allow_plaintext`` is given.
    """
    ep = parse_endpoint(endpoint) if isinstance(endpoint, str) else endpoint
    opts = list(options or [])
    if ep.spki_sha256 is None:
        if not is_loopback(ep.host) and not allow_plaintext:
            raise WorkerError(
                f"the endpoint {ep} has no TLS pin and is not on loopback: refusing plaintext "
                f"(a worker's offer carries #{PIN_PREFIX}<sha256 of its key>)",
                code="FAILED_PRECONDITION",
            )
        return grpc.insecure_channel(ep.target, options=opts)
    pem = fetch_pinned_certificate(ep, timeout_s=timeout_s)
    opts.append(("grpc.ssl_target_name_override", _dns_name(pem)))
    return grpc.secure_channel(ep.target, grpc.ssl_channel_credentials(root_certificates=pem), options=opts)
