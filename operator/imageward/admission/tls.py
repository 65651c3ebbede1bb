"""The webhook server's TLS: a CA and a serving certificate the operator makes, keeps in
a Secret (shared by replicas), renews before expiry, and writes to files for Kopf.

Renewal keeps the CA, so the caBundle in the webhook configurations stays valid and the
apiserver keeps reaching the webhook while Kopf reloads the new certificate files
(`file_check_interval`). A new CA is made only when the CA itself nears its end; the
caBundle then carries old and new CAs until every replica serves the new certificate.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import pathlib
from collections.abc import Sequence

from cryptography import x509

from imageward.admission import pki

SERVING_VALIDITY = datetime.timedelta(days=90)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True, slots=True)
class Material:
    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def not_after(self) -> datetime.datetime:
        return x509.load_pem_x509_certificate(self.cert_pem).not_valid_after_utc

    def needs_renewal(self, *, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        return self.not_after - now < RENEW_BEFORE

    def write(self, directory: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
        """Write tls.crt, tls.key and ca.crt atomically (rename), for Kopf's file watcher."""
        directory.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, data in (
            ("tls.crt", self.cert_pem),
            ("tls.key", self.key_pem),
            ("ca.crt", self.ca_cert_pem),
        ):
            target = directory / name
            temporary = directory / f".{name}.tmp"
            temporary.write_bytes(data)
            temporary.chmod(0o600)
            temporary.replace(target)
            paths.append(target)
        return paths[0], paths[1], paths[2]

    def to_secret_data(self) -> dict[str, str]:
        return {
            key: base64.b64encode(value).decode()
            for key, value in (
                ("ca.crt", self.ca_cert_pem),
                ("ca.key", self.ca_key_pem),
                ("tls.crt", self.cert_pem),
                ("tls.key", self.key_pem),
            )
        }

    @classmethod
    def from_secret_data(cls, data: dict[str, str]) -> Material | None:
        try:
            return cls(
                ca_cert_pem=base64.b64decode(data["ca.crt"]),
                ca_key_pem=base64.b64decode(data["ca.key"]),
                cert_pem=base64.b64decode(data["tls.crt"]),
                key_pem=base64.b64decode(data["tls.key"]),
            )
        except (KeyError, ValueError):
            return None


def build_material(
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    *,
    ca: pki.CertificateAuthority | None = None,
    validity: datetime.timedelta = SERVING_VALIDITY,
) -> Material:
    """A serving certificate for the webhook; signed by `ca`, or by a new CA."""
    ca = ca or pki.CertificateAuthority.create("imageward-webhook-ca")
    pair = ca.issue(
        dns_names[0] if dns_names else (ip_addresses[0] if ip_addresses else "imageward"),
        dns_names=dns_names,
        ip_addresses=ip_addresses,
        server=True,
        validity=validity,
    )
    return Material(
        ca_cert_pem=ca.cert_pem, ca_key_pem=ca.key_pem, cert_pem=pair.cert_pem, key_pem=pair.key_pem
    )


def build_renewed(
    material: Material, dns_names: Sequence[str], ip_addresses: Sequence[str] = ()
) -> Material:
    """A new serving certificate from the same CA (caBundle unchanged)."""
    ca = pki.CertificateAuthority.load(material.ca_cert_pem, material.ca_key_pem)
    return build_material(dns_names, ip_addresses, ca=ca)


def build_service_dns_names(service: str, namespace: str) -> list[str]:
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    ]
