"""The local CA: SPIFFE identities, private files, short lifetimes, a chain that verifies, and
rotations that switch the SDS file only once the new files are complete."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from shopmesh.k8s.certs import mounted_identity
from shopmesh.pki import CertificateAuthority, LocalPki, PkiError

SPIFFE_ID = "spiffe://shop.local/ns/shop/sa/orders"
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def certificate_at(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> LocalPki:
    return LocalPki(tmp_path / "certs")


def test_leaf_carries_exactly_the_spiffe_id_as_uri_san() -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    leaf = ca.issue(SPIFFE_ID, HOUR).certificate
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [SPIFFE_ID]
    assert names.get_values_for_type(x509.DNSName) == []


def test_leaf_may_add_dns_names_for_plain_tls_clients() -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    leaf = ca.issue(SPIFFE_ID, HOUR, dns_names=["orders"]).certificate
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["orders"]


def test_an_edge_server_certificate_names_hosts_and_addresses_and_no_identity() -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    leaf = ca.issue_server(["localhost", "127.0.0.1", "users"], HOUR).certificate
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value

    assert names.get_values_for_type(x509.DNSName) == ["localhost", "users"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    # Never a mesh identity: no SPIFFE ID, and no client authentication.
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == []
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_leaf_serves_both_ends_of_mtls_and_is_not_a_ca() -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    leaf = ca.issue(SPIFFE_ID, HOUR).certificate
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_leaf_expires_after_its_ttl() -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    leaf = ca.issue(SPIFFE_ID, HOUR, now=now).certificate
    assert leaf.not_valid_after_utc == now + HOUR
    assert leaf.not_valid_before_utc <= now


def test_leaf_chain_verifies_against_the_ca() -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    leaf = ca.issue(SPIFFE_ID, HOUR).certificate
    leaf.verify_directly_issued_by(ca.certificate)


def test_leaf_from_another_ca_does_not_verify() -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    other = CertificateAuthority.create("other CA", DAY)
    leaf = other.issue(SPIFFE_ID, HOUR).certificate
    with pytest.raises((ValueError, TypeError)):
        leaf.verify_directly_issued_by(ca.certificate)


def test_ca_is_ec_p256_and_may_only_sign_leaves() -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    assert ca.credential.key.curve.name == "secp256r1"


def test_leaf_may_not_outlive_the_ca() -> None:
    ca = CertificateAuthority.create("test CA", HOUR)
    with pytest.raises(PkiError, match="would outlive the CA"):
        ca.issue(SPIFFE_ID, DAY)


def test_keys_are_written_owner_only(pki: LocalPki) -> None:
    ca = pki.ensure_ca(DAY)
    issued = pki.issue(ca, "orders", SPIFFE_ID, HOUR)
    assert mode(pki.ca_directory / "ca-key.pem") == 0o600
    assert mode(issued.key) == 0o600
    assert mode(pki.root) == 0o700


def test_ensure_ca_reuses_the_existing_ca(pki: LocalPki) -> None:
    first = pki.ensure_ca(DAY)
    again = pki.ensure_ca(DAY)
    assert again.certificate.serial_number == first.certificate.serial_number


def test_issued_files_verify_against_the_trust_bundle(pki: LocalPki) -> None:
    ca = pki.ensure_ca(DAY)
    issued = pki.issue(ca, "orders", SPIFFE_ID, HOUR)
    bundle = certificate_at(issued.files.trust_bundle)
    certificate_at(issued.certificate).verify_directly_issued_by(bundle)


def test_sds_files_name_the_current_pair_and_the_bundle(pki: LocalPki) -> None:
    ca = pki.ensure_ca(DAY)
    issued = pki.issue(ca, "orders", SPIFFE_ID, HOUR)
    certificate_sds = yaml.safe_load(issued.files.certificate_sds.read_text())
    secret = certificate_sds["resources"][0]
    assert secret["@type"].endswith("envoy.extensions.transport_sockets.tls.v3.Secret")
    assert secret["name"] == "identity"
    assert secret["tls_certificate"]["certificate_chain"]["filename"] == str(
        issued.certificate.resolve()
    )
    assert secret["tls_certificate"]["private_key"]["filename"] == str(issued.key.resolve())
    validation = yaml.safe_load(issued.files.validation_sds.read_text())["resources"][0]
    assert validation["name"] == "mesh_ca"
    assert validation["validation_context"]["trusted_ca"]["filename"] == str(
        issued.files.trust_bundle.resolve()
    )


def test_rotation_switches_to_a_new_pair_and_keeps_only_the_previous_one(pki: LocalPki) -> None:
    ca = pki.ensure_ca(DAY)
    first = pki.issue(ca, "orders", SPIFFE_ID, HOUR)
    second = pki.issue(ca, "orders", SPIFFE_ID, HOUR)
    assert second.certificate != first.certificate
    assert second.files.current() == (second.certificate.resolve(), second.key.resolve())
    # The previous pair stays for an Envoy that may be reading it right now...
    assert first.certificate.exists()
    assert first.key.exists()
    third = pki.issue(ca, "orders", SPIFFE_ID, HOUR)
    # ...but no longer than one rotation.
    assert not first.certificate.exists()
    assert not first.key.exists()
    pairs = sorted(p.name for p in third.files.directory.glob("cert-*.pem"))
    assert pairs == sorted([second.certificate.name, third.certificate.name])


def test_no_temporary_files_are_left_behind(pki: LocalPki) -> None:
    ca = pki.ensure_ca(DAY)
    issued = pki.issue(ca, "orders", SPIFFE_ID, HOUR)
    assert not [p for p in issued.files.directory.iterdir() if p.name.startswith(".")]


def test_mounted_identity_uses_fixed_names_under_the_mount(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("test CA", DAY)
    files = mounted_identity(ca, ca.issue(SPIFFE_ID, HOUR), Path("/etc/shopmesh/tls"))
    assert sorted(files) == [
        "ca.pem",
        "cert.pem",
        "key.pem",
        "tls_certificate.yaml",
        "validation_context.yaml",
    ]
    secret = yaml.safe_load(files["tls_certificate.yaml"])["resources"][0]
    assert secret["tls_certificate"]["private_key"]["filename"] == "/etc/shopmesh/tls/key.pem"
