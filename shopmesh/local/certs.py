"""Certificates of a local mesh: `up` makes sure every identity (and, with edge TLS, the
gateway's public server certificate) has a valid one; `certs rotate` re-issues them all and
waits until every Envoy serves its new certificate (file-based SDS: no restart)."""

from __future__ import annotations

import datetime
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cryptography import x509

from shopmesh.envoy.admin import AdminClient
from shopmesh.local.errors import MeshError
from shopmesh.local.mesh import RunningMesh
from shopmesh.local.wait import until
from shopmesh.pki import (
    CA_VALIDITY,
    EDGE_DIRECTORY,
    LEAF_TTL,
    IdentityFiles,
    LocalPki,
    PkiError,
)
from shopmesh.topology import GATEWAY

RENEW_FRACTION = 1 / 3
"""`ensure_certificates` re-issues a certificate once less than this share of its life is left."""

Covers = Callable[[x509.SubjectAlternativeName], bool]
"""Whether a certificate's SANs are the ones it must carry."""


def _names_its(spiffe_id: str) -> Covers:
    return lambda sans: spiffe_id in sans.get_values_for_type(x509.UniformResourceIdentifier)


def _names_exactly(names: Sequence[str]) -> Covers:
    def covers(sans: x509.SubjectAlternativeName) -> bool:
        present = [*sans.get_values_for_type(x509.DNSName)]
        present += [str(a) for a in sans.get_values_for_type(x509.IPAddress)]
        return sorted(present) == sorted(names)

    return covers


def _needs_renewal(files: IdentityFiles, covers: Covers, ca_pem: bytes) -> bool:
    try:
        certificate_path, key_path = files.current()
        certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
        if not key_path.is_file() or files.trust_bundle.read_bytes() != ca_pem:
            return True
    except (PkiError, OSError, ValueError):
        return True
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return True
    if not covers(sans.value):
        return True
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    remaining = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    return remaining < lifetime * RENEW_FRACTION


def ensure_certificates(
    root: Path,
    identities: Mapping[str, str],
    ttl: datetime.timedelta = LEAF_TTL,
    edge_names: Sequence[str] = (),
) -> list[str]:
    """The CA under `root` and a valid certificate for every identity (-> its SPIFFE ID), and
    for the edge's public `edge_names` when there are any; issues only what is missing, names
    other SANs, or has less than a third of its life left. Returns what was issued (identity
    names, EDGE_DIRECTORY for the edge)."""
    pki = LocalPki(root)
    ca = pki.ensure_ca(CA_VALIDITY)
    ca_pem = ca.credential.certificate_pem()
    issued = []
    for identity, spiffe_id in identities.items():
        if _needs_renewal(pki.files(identity), _names_its(spiffe_id), ca_pem):
            pki.issue(ca, identity, spiffe_id, ttl, [identity])
            issued.append(identity)
    edge = pki.files(EDGE_DIRECTORY)
    if edge_names and _needs_renewal(edge, _names_exactly(edge_names), ca_pem):
        pki.issue_edge(ca, edge_names, ttl)
        issued.append(EDGE_DIRECTORY)
    return issued


def rotate_certificates(
    root: Path,
    identities: Mapping[str, str],
    ttl: datetime.timedelta = LEAF_TTL,
    edge_names: Sequence[str] = (),
) -> dict[str, int]:
    """Re-issue the certificate of every identity (-> its SPIFFE ID), and the edge's for
    `edge_names` when there are any, now (running Envoys reload them through SDS). Returns
    identity (EDGE_DIRECTORY for the edge) -> the new certificate's serial number."""
    pki = LocalPki(root)
    ca = pki.ensure_ca(CA_VALIDITY)
    serials = {
        identity: pki.issue(ca, identity, spiffe_id, ttl, [identity]).serial
        for identity, spiffe_id in identities.items()
    }
    if edge_names:
        serials[EDGE_DIRECTORY] = pki.issue_edge(ca, edge_names, ttl).serial
    return serials


async def _serves(admin: AdminClient, serial: int) -> bool:
    return serial in await admin.served_serials()


async def rotate(mesh: RunningMesh, within: float = 10.0) -> dict[str, int]:
    """Re-issue every identity's certificate (and the edge's, with edge TLS) in place and wait
    until every running Envoy serves its new ones. Returns identity -> new serial."""
    try:
        serials = rotate_certificates(
            mesh.paths.certs, mesh.topology.spiffe_ids, edge_names=mesh.layout.edge_names
        )
    except PkiError as error:
        raise MeshError(str(error)) from None
    envoys = [(pod.admin, pod.service) for pod in mesh.pods.values()]
    envoys.append((mesh.gateway.admin, GATEWAY))
    if EDGE_DIRECTORY in serials:
        envoys.append((mesh.gateway.admin, EDGE_DIRECTORY))
    deadline = time.monotonic() + within
    for admin, identity in envoys:
        await until(
            functools.partial(_serves, admin, serials[identity]),
            f"{admin.name} to load {identity}'s new certificate",
            deadline,
        )
    return serials
