"""A local certificate authority for the mesh, made with `cryptography`.

The CA (EC P-256) issues each identity (every service, and the gateway) a short-lived leaf
certificate whose only SAN is its SPIFFE ID, `spiffe://<trust domain>/ns/<ns>/sa/<identity>`.
Everything is written owner-only (0600: nothing but this user's Envoys reads these files) and
with atomic renames, because the Envoy sidecars read these files live through file-based SDS:

    <root>/ca/ca.pem, ca-key.pem             the CA
    <root>/<identity>/cert-<serial>.pem      leaf certificate (chain: the leaf; the CA is the root)
    <root>/<identity>/key-<serial>.pem       its key
    <root>/<identity>/ca.pem                 the trust bundle
    <root>/<identity>/tls_certificate.yaml   SDS resource "identity" naming the current pair
    <root>/<identity>/validation_context.yaml  SDS resource "mesh_ca" naming the bundle

Envoy watches `<root>/<identity>/` (SDS `watched_directory`) and reloads the SDS files when an
entry is moved into it. A rotation therefore writes the new certificate and key under new
names first and only then swaps `tls_certificate.yaml` to point at them: Envoy never sees a
certificate paired with the wrong key. The previous pair is kept (Envoy may still be reading
it), older ones are removed.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.files import write_atomically

CERTIFICATE_SECRET = "identity"
"""SDS resource name of an identity's certificate and key."""
VALIDATION_SECRET = "mesh_ca"
"""SDS resource name of the trust bundle that peer certificates must chain to."""
CERTIFICATE_SDS_FILE = "tls_certificate.yaml"
VALIDATION_SDS_FILE = "validation_context.yaml"
TRUST_BUNDLE_FILE = "ca.pem"
EDGE_SECRET = "edge"
"""SDS resource name of the gateway's public server certificate (`up --edge-tls`)."""
EDGE_DIRECTORY = "edge"
"""The directory under the PKI root holding that certificate, beside the identities'."""

LEAF_TTL = datetime.timedelta(hours=24)
"""How long an identity's certificate lives: short, because rotation is cheap and automatic."""
CA_VALIDITY = datetime.timedelta(days=365)
"""How long the local CA lives; leaves can never outlive it."""

_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
# Tolerates small clock differences between the machines that issue and check a certificate.
_CLOCK_SKEW = datetime.timedelta(minutes=5)
_KEY_MODE = 0o600
# Certificates are no secret, but only the Envoys of this user read them (as part of a private
# state directory, shopmesh.local.private).
_FILE_MODE = 0o600


class PkiError(RuntimeError):
    """The CA or an identity's files are missing or unusable."""


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_usage(authority: bool) -> x509.KeyUsage:
    """A CA signs certificates; a leaf signs (ECDSA) and agrees keys (ECDHE) in TLS."""
    return x509.KeyUsage(
        digital_signature=not authority,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not authority,
        key_cert_sign=authority,
        crl_sign=authority,
        encipher_only=False,
        decipher_only=False,
    )


class CertificateAuthority:
    """A self-signed EC P-256 CA that issues SPIFFE leaf certificates."""

    def __init__(self, credential: Credential) -> None:
        self.credential = credential

    @property
    def certificate(self) -> x509.Certificate:
        return self.credential.certificate

    @classmethod
    def create(
        cls, common_name: str, validity: datetime.timedelta, now: datetime.datetime | None = None
    ) -> CertificateAuthority:
        """A new CA whose certificate is valid for `validity` from `now`."""
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        public_key = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(authority=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(Credential(certificate, key))

    @classmethod
    def load(cls, directory: Path) -> CertificateAuthority:
        """The CA saved in `directory` by `save`."""
        try:
            certificate = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
            key = serialization.load_pem_private_key(
                (directory / "ca-key.pem").read_bytes(), password=None
            )
        except OSError as error:
            raise PkiError(f"cannot read the CA in {directory}: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{directory / 'ca-key.pem'} is not an EC private key")
        return cls(Credential(certificate, key))

    def save(self, directory: Path) -> None:
        """Write ca.pem and ca-key.pem (0600) into `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / "ca-key.pem", self.credential.key_pem(), _KEY_MODE)
        write_atomically(directory / "ca.pem", self.credential.certificate_pem(), _FILE_MODE)

    def issue(
        self,
        spiffe_id: str,
        ttl: datetime.timedelta,
        dns_names: Sequence[str] = (),
        now: datetime.datetime | None = None,
    ) -> Credential:
        """A new key and a certificate for `spiffe_id`, valid for `ttl`, usable by both ends of
        an mTLS connection. Refuses a lifetime that outlives the CA.

        Envoy authenticates peers by the SPIFFE URI SAN alone; `dns_names` are for plain gRPC
        or TLS clients (tests, grpcurl) that check the server's host name."""
        return self._leaf(
            spiffe_id,
            [x509.UniformResourceIdentifier(spiffe_id), *(x509.DNSName(n) for n in dns_names)],
            [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
            ttl,
            now,
        )

    def issue_server(
        self,
        names: Sequence[str],
        ttl: datetime.timedelta,
        now: datetime.datetime | None = None,
    ) -> Credential:
        """A TLS server certificate for the public `names` (host names and IP addresses) of
        an edge listener, valid for `ttl`. It carries no SPIFFE ID and serves no client
        authentication: it can never pass for a mesh identity."""
        if not names:
            raise PkiError("a server certificate needs at least one name")
        return self._leaf(
            names[0], [_general_name(n) for n in names], [ExtendedKeyUsageOID.SERVER_AUTH], ttl, now
        )

    def _leaf(
        self,
        subject: str,
        sans: Sequence[x509.GeneralName],
        usages: Sequence[x509.ObjectIdentifier],
        ttl: datetime.timedelta,
        now: datetime.datetime | None,
    ) -> Credential:
        now = now or _now()
        not_after = now + ttl
        if not_after > self.certificate.not_valid_after_utc:
            raise PkiError(
                f"a certificate for {subject} valid until {not_after:%Y-%m-%d %H:%M} UTC would "
                f"outlive the CA ({self.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC)"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        public_key = key.public_key()
        issuer_key_id = self.certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        certificate = (
            x509.CertificateBuilder()
            # The SANs are what peers check; the subject only helps people reading it.
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(authority=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_key_id),
                critical=False,
            )
            .sign(self.credential.key, hashes.SHA256())
        )
        return Credential(certificate, key)


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for an address, a DNS SAN for anything else."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def sds_certificate_document(
    certificate: Path, key: Path, name: str = CERTIFICATE_SECRET, watched: Path | None = None
) -> dict[str, object]:
    """The SDS file (a DiscoveryResponse) that points Envoy at a certificate and key on disk,
    as the secret `name`; with `watched`, Envoy reads both again, together, when an entry is
    moved into that directory (a Secret volume the kubelet swaps, the SDS file elsewhere)."""
    files: dict[str, object] = {
        "certificate_chain": {"filename": str(certificate)},
        "private_key": {"filename": str(key)},
    }
    if watched is not None:
        files["watched_directory"] = {"path": str(watched)}
    return _discovery_response({"@type": _SECRET_TYPE, "name": name, "tls_certificate": files})


def sds_validation_document(trust_bundle: Path) -> dict[str, object]:
    """The SDS file that points Envoy at the trust bundle peers must chain to."""
    return _discovery_response(
        {
            "@type": _SECRET_TYPE,
            "name": VALIDATION_SECRET,
            "validation_context": {"trusted_ca": {"filename": str(trust_bundle)}},
        }
    )


def _discovery_response(resource: Mapping[str, object]) -> dict[str, object]:
    return {"resources": [dict(resource)]}


def sds_file(document: Mapping[str, object]) -> bytes:
    """An SDS document as the file Envoy reads."""
    return yaml.safe_dump(dict(document), sort_keys=False).encode()


@dataclass(frozen=True)
class IdentityFiles:
    """Where one identity's files live; the SDS files are what Envoy configs reference."""

    directory: Path

    @property
    def certificate_sds(self) -> Path:
        return self.directory / CERTIFICATE_SDS_FILE

    @property
    def validation_sds(self) -> Path:
        return self.directory / VALIDATION_SDS_FILE

    @property
    def trust_bundle(self) -> Path:
        return self.directory / TRUST_BUNDLE_FILE

    def current(self) -> tuple[Path, Path]:
        """The certificate and key files the SDS file names now."""
        try:
            document = yaml.safe_load(self.certificate_sds.read_text(encoding="utf-8"))
            certificate = document["resources"][0]["tls_certificate"]
            return (
                Path(certificate["certificate_chain"]["filename"]),
                Path(certificate["private_key"]["filename"]),
            )
        except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError) as error:
            raise PkiError(f"{self.certificate_sds} does not name a certificate: {error}") from None


@dataclass(frozen=True)
class Issued:
    """The outcome of issuing one identity."""

    identity: str
    files: IdentityFiles
    certificate: Path
    key: Path
    serial: int
    not_after: datetime.datetime


class LocalPki:
    """The on-disk CA and identities under `root` (e.g. var/certs)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def ca_directory(self) -> Path:
        return self.root / "ca"

    def files(self, identity: str) -> IdentityFiles:
        return IdentityFiles(self.root / identity)

    def ensure_ca(
        self, validity: datetime.timedelta, common_name: str = "shopmesh local CA"
    ) -> CertificateAuthority:
        """Load the CA, or create it if there is none yet. A CA that has expired is an error:
        replacing it silently would break trust with every certificate already issued."""
        if (self.ca_directory / "ca.pem").exists():
            ca = CertificateAuthority.load(self.ca_directory)
            if ca.certificate.not_valid_after_utc <= _now():
                raise PkiError(
                    f"the CA in {self.ca_directory} has expired; remove {self.root} to start over"
                )
            return ca
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        ca = CertificateAuthority.create(common_name, validity)
        ca.save(self.ca_directory)
        return ca

    def issue(
        self,
        ca: CertificateAuthority,
        identity: str,
        spiffe_id: str,
        ttl: datetime.timedelta,
        dns_names: Sequence[str] = (),
    ) -> Issued:
        """Issue (or re-issue: this is also the rotation) `identity`'s certificate and switch
        its SDS file to it. Safe while Envoy is running with the previous one."""
        return self.install(ca, identity, ca.issue(spiffe_id, ttl, dns_names))

    def issue_edge(
        self, ca: CertificateAuthority, names: Sequence[str], ttl: datetime.timedelta
    ) -> Issued:
        """Issue (or re-issue) the gateway's public server certificate for `names` into
        EDGE_DIRECTORY, named by the SDS secret EDGE_SECRET."""
        return self.install(ca, EDGE_DIRECTORY, ca.issue_server(names, ttl), EDGE_SECRET)

    def install(
        self,
        ca: CertificateAuthority,
        identity: str,
        credential: Credential,
        secret: str = CERTIFICATE_SECRET,
    ) -> Issued:
        """Write `credential` into `identity`'s directory and switch its SDS file (secret
        `secret`) to it, in the order that keeps a running Envoy consistent."""
        files = self.files(identity)
        files.directory.mkdir(parents=True, exist_ok=True)
        serial = f"{credential.certificate.serial_number:x}"
        certificate = files.directory / f"cert-{serial}.pem"
        key = files.directory / f"key-{serial}.pem"
        previous = files.current() if files.certificate_sds.exists() else None

        write_atomically(key, credential.key_pem(), _KEY_MODE)
        write_atomically(certificate, credential.certificate_pem(), _FILE_MODE)
        write_atomically(files.trust_bundle, ca.credential.certificate_pem(), _FILE_MODE)
        if not files.validation_sds.exists():
            write_atomically(
                files.validation_sds,
                sds_file(sds_validation_document(files.trust_bundle.resolve())),
                _FILE_MODE,
            )
        # Last: the switch Envoy acts on, once the files it names are complete.
        write_atomically(
            files.certificate_sds,
            sds_file(sds_certificate_document(certificate.resolve(), key.resolve(), secret)),
            _FILE_MODE,
        )
        self._remove_stale(files, keep={certificate.name, key.name, *_names(previous)})
        return Issued(
            identity=identity,
            files=files,
            certificate=certificate,
            key=key,
            serial=credential.certificate.serial_number,
            not_after=credential.certificate.not_valid_after_utc,
        )

    @staticmethod
    def _remove_stale(files: IdentityFiles, keep: set[str]) -> None:
        for path in files.directory.iterdir():
            if path.name.startswith(("cert-", "key-")) and path.name not in keep:
                path.unlink()


def _names(pair: tuple[Path, Path] | None) -> tuple[str, ...]:
    return () if pair is None else (pair[0].name, pair[1].name)
