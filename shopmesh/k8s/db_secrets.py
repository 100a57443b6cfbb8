"""The files of the Secrets the postgres component reads (`shopmesh k8s issue-db-secrets`):
the operator creates the Secrets from them (k8s/README.md), so no password or key is in a
manifest. Made once and then kept, except a database's server certificate, which is issued
again from the databases' CA when it nears its end, names another host or lost its key."""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from services.common.files import write_atomically
from services.payments import fingerprint_key
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.postgres import (
    FINGERPRINT_KEY_SECRET,
    FINGERPRINTING,
    PASSWORD_KEY,
    SUPERUSER_PASSWORD_KEY,
    TLS_CERTIFICATE,
    TLS_KEY,
    fingerprint_key_file,
)
from shopmesh.pki import CertificateAuthority, LocalPki
from shopmesh.topology import Topology

DATABASE_CA_VALIDITY = datetime.timedelta(days=10 * 365)
SERVER_CERTIFICATE_TTL = datetime.timedelta(days=365)
"""A database's certificate lives a year, or until the CA ends if that is sooner."""
RENEW_BEFORE = datetime.timedelta(days=30)
"""`issue_secret_files` issues a database's certificate again when it has less left than
this (k8s/README.md: then replace the Secret and reload the database)."""
PRIVATE = 0o700
SECRET_FILE = 0o600


def issue_secret_files(
    topology: Topology, layout: KubernetesLayout, out: Path, pki_dir: Path
) -> list[Path]:
    """The files of every Secret the component reads, a directory each, named after its Secret
    (`kubectl create secret generic <name> --from-file <directory>`): each service's role and
    superuser passwords, each database's server certificate and key, the certificate of the
    CA in `pki_dir` that signs them (created on first use; its key stays there, outside
    `out`), and payments' fingerprint key. What is already there is kept: a database made its
    role with the password it found on its first start, and the cards fingerprinted so far
    need the key they were fingerprinted with. A server certificate is issued again only when
    it no longer serves (`_still_serves`)."""
    out.mkdir(mode=PRIVATE, parents=True, exist_ok=True)
    ca = LocalPki(pki_dir).ensure_ca(DATABASE_CA_VALIDITY, common_name="shopmesh database CA")
    trust = out / layout.postgres_ca_secret
    trust.mkdir(mode=PRIVATE, exist_ok=True)
    write_atomically(trust / layout.postgres_ca_file, ca.credential.certificate_pem(), SECRET_FILE)
    directories = [trust]
    for service in topology.services:
        directory = out / layout.postgres(service)
        directory.mkdir(mode=PRIVATE, exist_ok=True)
        for key in (PASSWORD_KEY, SUPERUSER_PASSWORD_KEY):
            _write_once(directory / key, secrets.token_urlsafe(32))
        tls = out / layout.postgres_tls_secret(service)
        tls.mkdir(mode=PRIVATE, exist_ok=True)
        _issue_server_certificate(ca, layout.postgres_host(service), tls)
        directories += [directory, tls]
    if FINGERPRINTING in topology.services:
        key_file = out / FINGERPRINT_KEY_SECRET / fingerprint_key_file(layout)
        fingerprint_key.load_or_create(key_file)
        directories.append(key_file.parent)
    return directories


def _issue_server_certificate(ca: CertificateAuthority, host: str, directory: Path) -> None:
    """A server certificate for `host` and its key in `directory`, unless the pair there
    still serves."""
    if not _still_serves(ca, host, directory):
        now = datetime.datetime.now(datetime.UTC)
        # Never past the CA's end (pki refuses that): in the CA's last year, until its end.
        ttl = min(SERVER_CERTIFICATE_TTL, ca.certificate.not_valid_after_utc - now)
        credential = ca.issue_server([host], ttl, now)
        # The key first: if the certificate is not written, the old one no longer fits the
        # key, and the next run issues again.
        write_atomically(directory / TLS_KEY, credential.key_pem(), SECRET_FILE)
        write_atomically(directory / TLS_CERTIFICATE, credential.certificate_pem(), SECRET_FILE)


def _still_serves(ca: CertificateAuthority, host: str, directory: Path) -> bool:
    """Whether `directory` holds `ca`'s certificate for `host` alone, with its own key and
    RENEW_BEFORE or more left."""
    try:
        certificate = x509.load_pem_x509_certificate((directory / TLS_CERTIFICATE).read_bytes())
        key = serialization.load_pem_private_key((directory / TLS_KEY).read_bytes(), None)
        certificate.verify_directly_issued_by(ca.certificate)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False  # missing, unreadable, or another CA's (the CA directory was replaced)
    left = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return (
        names.value.get_values_for_type(x509.DNSName) == [host]
        and key.public_key() == certificate.public_key()
        and left > RENEW_BEFORE
    )


def _write_once(path: Path, content: str) -> None:
    """`content` in a new 0600 file `path`; an existing one is left as it is."""
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            # No newline: the whole file is the password (kubectl takes it byte for byte).
            file.write(content)
