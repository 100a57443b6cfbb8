"""Certificates for Kubernetes: every identity's certificate issued by the local CA
(shopmesh.pki) in the layout of a Secret mounted where the sidecars read it;
scripts/kind-up.sh turns each directory into a Secret."""

from __future__ import annotations

import datetime
from pathlib import Path

from services.common.files import write_atomically
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.pki import (
    CA_VALIDITY,
    CERTIFICATE_SDS_FILE,
    LEAF_TTL,
    TRUST_BUNDLE_FILE,
    VALIDATION_SDS_FILE,
    CertificateAuthority,
    Credential,
    LocalPki,
    sds_certificate_document,
    sds_file,
    sds_validation_document,
)


def mounted_identity(
    ca: CertificateAuthority, credential: Credential, mount_dir: Path
) -> dict[str, bytes]:
    """File name -> content of one identity for a directory that is replaced as a whole, such
    as a Kubernetes Secret volume mounted at `mount_dir` (the kubelet swaps every file at once,
    so fixed names are safe there). The SDS files name the files at `mount_dir`."""
    certificate = mount_dir / "cert.pem"
    key = mount_dir / "key.pem"
    trust_bundle = mount_dir / TRUST_BUNDLE_FILE
    return {
        certificate.name: credential.certificate_pem(),
        key.name: credential.key_pem(),
        trust_bundle.name: ca.credential.certificate_pem(),
        CERTIFICATE_SDS_FILE: sds_file(sds_certificate_document(certificate, key)),
        VALIDATION_SDS_FILE: sds_file(sds_validation_document(trust_bundle)),
    }


def issue_certificates(
    layout: KubernetesLayout,
    pki_dir: Path,
    out: Path,
    ttl: datetime.timedelta = LEAF_TTL,
) -> dict[str, datetime.datetime]:
    """Issue every identity a certificate from the CA in `pki_dir` (created on first use, then
    reused, so re-issuing is a rotation under the same trust), written to `out/<identity>/` as
    the files of its Secret. Returns identity -> expiry."""
    ca = LocalPki(pki_dir).ensure_ca(CA_VALIDITY, common_name="shopmesh kubernetes CA")
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)
    issued: dict[str, datetime.datetime] = {}
    for identity, spiffe_id in layout.topology.spiffe_ids.items():
        credential = ca.issue(spiffe_id, ttl)
        directory = out / identity
        directory.mkdir(exist_ok=True)
        directory.chmod(0o700)
        for name, content in mounted_identity(ca, credential, layout.tls_dir).items():
            write_atomically(directory / name, content, 0o600)
        issued[identity] = credential.certificate.not_valid_after_utc
    return issued
