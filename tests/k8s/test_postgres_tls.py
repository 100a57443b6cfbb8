"""The databases' TLS on a real Postgres 15, set up as the production overlay sets it up: the
files `shopmesh k8s issue-db-secrets` writes, laid out as the kubelet mounts a Secret (owned
by root, readable by the pod's fsGroup, the postgres group), the server settings and
pg_hba.conf the postgres component renders. The app connects with the URL its Deployment
carries; only the CA file's path and the address differ (the host name stays the in-cluster
one, resolved to loopback with libpq's hostaddr, so verify-full checks it as it would there).
Starts Postgres: run it under the shared test lock."""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from psycopg.conninfo import make_conninfo

from services.common.config import DATABASE_URL
from shopmesh.k8s import db_secrets
from shopmesh.k8s import postgres as component
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.local import postgres
from shopmesh.local.ports import free_ports
from tests.support.k8s import Json, Rendered, app_of, env_of, pod_spec
from tests.support.paths import TOPOLOGY

pytestmark = pytest.mark.postgres

LAYOUT = KubernetesLayout(TOPOLOGY)
SERVICE = "orders"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Server:
    cluster: postgres.Cluster
    port: int
    secrets: Path
    """What issue-db-secrets wrote: one directory per Secret."""

    @property
    def ca_file(self) -> Path:
        return self.secrets / LAYOUT.postgres_ca_secret / LAYOUT.postgres_ca_file


def issue(out: Path, pki_dir: Path) -> Path:
    db_secrets.issue_secret_files(TOPOLOGY, LAYOUT, out, pki_dir)
    return out


def tls_volume(production: Rendered) -> tuple[Json, int]:
    """The database pod's TLS Secret volume and the pod's fsGroup, as rendered."""
    database = production.named("StatefulSet", LAYOUT.postgres(SERVICE))
    [volume] = [v for v in pod_spec(database)["volumes"] if v["name"] == "tls"]
    group: int = pod_spec(database)["securityContext"]["fsGroup"]
    return volume["secret"], group


def mount_as_the_kubelet_does(production: Rendered, source: Path, target: Path) -> None:
    """`source`'s files in `target` as the kubelet mounts the rendered Secret volume: the
    items at its defaultMode, owned by root and the pod's fsGroup (the group postgres runs
    as here: the image's postgres user is the fsGroup there)."""
    secret, group = tls_volume(production)
    assert group == component.POSTGRES_UID
    target.mkdir(mode=0o750)
    for item in secret["items"]:
        path = target / item["path"]
        shutil.copyfile(source / item["key"], path)
        shutil.chown(path, "root", "postgres")
        path.chmod(secret["defaultMode"])
    shutil.chown(target, "root", "postgres")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, rendered: dict[str, Rendered]
) -> Iterator[Server]:
    """The orders database with its role, then served as its pod serves it."""
    if os.geteuid() != 0:
        pytest.skip("mounting files as the kubelet does (owned by root) needs root")
    issued = issue(tmp_path_factory.mktemp("k8s") / "postgres", tmp_path_factory.mktemp("pki"))
    root = Path(tempfile.mkdtemp(prefix="smpgtls-", dir="/tmp"))
    try:
        cluster = postgres.init(root)
        # The role and database first, over the socket as the local admin (the rendered
        # pg_hba.conf lets the superuser in as the OS user postgres only).
        postgres.start(cluster, durable=False)
        postgres.create_service_database(cluster, SERVICE)
        postgres.stop(cluster)
        tls = root / "tls"
        source = issued / LAYOUT.postgres_tls_secret(SERVICE)
        mount_as_the_kubelet_does(rendered["production"], source, tls)
        hba = root / component.HBA_FILE
        hba.write_text(component.hba(SERVICE))
        hba.chmod(0o644)
        [port] = free_ports(LOOPBACK, 1)
        settings = [
            *component.server_settings(hba, tls),
            *("-c", f"listen_addresses={LOOPBACK}", "-c", f"port={port}"),
        ]
        postgres.start(cluster, durable=False, settings=settings)
        yield Server(cluster, port, issued)
    finally:
        postgres.stop(postgres.Cluster(root))
        shutil.rmtree(root, ignore_errors=True)


def app_url(production: Rendered) -> str:
    url: str = env_of(app_of(production.named("Deployment", SERVICE)))[DATABASE_URL]
    return url


def connect(server: Server, url: str, **overrides: str) -> psycopg.Connection:
    """`url` as the app uses it, its host reached on loopback."""
    conninfo = make_conninfo(
        url,
        hostaddr=LOOPBACK,
        port=server.port,
        passfile=str(server.cluster.passfile(SERVICE)),
        connect_timeout=10,
        **{"sslrootcert": str(server.ca_file), **overrides},
    )
    return psycopg.connect(conninfo)


def test_the_app_connects_over_tls_13_with_its_deployments_url(
    server: Server, rendered: dict[str, Rendered]
) -> None:
    with connect(server, app_url(rendered["production"])) as connection:
        row = connection.execute(
            "SELECT s.ssl, s.version, current_user, current_database()"
            " FROM pg_stat_ssl s WHERE s.pid = pg_backend_pid()"
        ).fetchone()
    assert row == (True, "TLSv1.3", SERVICE, SERVICE)


def test_a_connection_without_tls_is_refused(server: Server, rendered: dict[str, Rendered]) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        connect(server, app_url(rendered["production"]), sslmode="disable").close()


def test_a_server_certificate_from_another_ca_is_not_trusted(
    server: Server, rendered: dict[str, Rendered], tmp_path: Path
) -> None:
    other = issue(tmp_path / "postgres", tmp_path / "postgres-pki")
    other_ca = other / LAYOUT.postgres_ca_secret / LAYOUT.postgres_ca_file
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(server, app_url(rendered["production"]), sslrootcert=str(other_ca)).close()


def test_another_databases_name_does_not_match_the_certificate(
    server: Server, rendered: dict[str, Rendered]
) -> None:
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        connect(server, app_url(rendered["production"]), host=LAYOUT.postgres_host("users")).close()


# --- issuing again --------------------------------------------------------------------------


def certificate(out: Path, service: str) -> x509.Certificate:
    path = out / LAYOUT.postgres_tls_secret(service) / component.TLS_CERTIFICATE
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_each_certificate_names_its_database_and_is_kept_until_it_nears_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, pki = tmp_path / "postgres", tmp_path / "postgres-pki"
    issue(out, pki)
    first = {s: certificate(out, s) for s in TOPOLOGY.services}
    for service, issued in first.items():
        names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [LAYOUT.postgres_host(service)]
    issue(out, pki)
    assert {s: certificate(out, s) for s in TOPOLOGY.services} == first
    # Within RENEW_BEFORE of its expiry, each is issued again, by the same CA.
    monkeypatch.setattr(db_secrets, "RENEW_BEFORE", datetime.timedelta(days=400))
    issue(out, pki)
    ca = x509.load_pem_x509_certificate(
        (out / LAYOUT.postgres_ca_secret / LAYOUT.postgres_ca_file).read_bytes()
    )
    for service in TOPOLOGY.services:
        renewed = certificate(out, service)
        assert renewed.serial_number != first[service].serial_number
        renewed.verify_directly_issued_by(ca)


def test_a_certificate_for_another_name_or_key_is_issued_again(tmp_path: Path) -> None:
    out, pki = tmp_path / "postgres", tmp_path / "postgres-pki"
    issue(out, pki)
    orders, users = (out / LAYOUT.postgres_tls_secret(s) for s in (SERVICE, "users"))
    # A namespace or cluster domain changed: the name on the certificate is no longer the host.
    shutil.copyfile(users / component.TLS_CERTIFICATE, orders / component.TLS_CERTIFICATE)
    shutil.copyfile(users / component.TLS_KEY, orders / component.TLS_KEY)
    issue(out, pki)
    names = certificate(out, SERVICE).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert names.value.get_values_for_type(x509.DNSName) == [LAYOUT.postgres_host(SERVICE)]
    # A key that is not the certificate's own (a run that stopped between the two writes).
    before = certificate(out, SERVICE)
    shutil.copyfile(users / component.TLS_KEY, orders / component.TLS_KEY)
    issue(out, pki)
    assert certificate(out, SERVICE).serial_number != before.serial_number


def test_in_the_cas_last_year_a_certificate_ends_with_the_ca(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_secrets, "DATABASE_CA_VALIDITY", datetime.timedelta(days=100))
    out = tmp_path / "postgres"
    issue(out, tmp_path / "postgres-pki")
    ca = x509.load_pem_x509_certificate(
        (out / LAYOUT.postgres_ca_secret / LAYOUT.postgres_ca_file).read_bytes()
    )
    assert certificate(out, SERVICE).not_valid_after_utc <= ca.not_valid_after_utc


def test_a_certificate_of_a_replaced_ca_is_issued_again(tmp_path: Path) -> None:
    out = tmp_path / "postgres"
    issue(out, tmp_path / "old-pki")
    before = certificate(out, SERVICE)
    issue(out, tmp_path / "new-pki")
    after = certificate(out, SERVICE)
    ca_file = out / LAYOUT.postgres_ca_secret / LAYOUT.postgres_ca_file
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    assert after.serial_number != before.serial_number
    after.verify_directly_issued_by(ca)
