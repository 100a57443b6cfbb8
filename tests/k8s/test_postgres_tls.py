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
from shopmesh.k8s import postgres as component
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.local import postgres
from shopmesh.local.ports import free_ports
from tests.support.k8s import Rendered, app_of, env_of
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
    component.issue_secret_files(TOPOLOGY, LAYOUT, out, pki_dir)
    return out


def mount_as_the_kubelet_does(source: Path, target: Path) -> None:
    """`source`'s files in `target`, as a Secret volume with defaultMode 0440 and the pod's
    fsGroup: owned by root, group postgres (as root; otherwise the current user's own, 0600,
    which is what Postgres asks of a key its own user owns)."""
    target.mkdir(mode=0o750)
    for name in component.TLS_FILES:
        shutil.copyfile(source / name, target / name)
        if os.geteuid() == 0:
            shutil.chown(target / name, "root", "postgres")
            (target / name).chmod(0o440)
        else:
            (target / name).chmod(0o600)
    if os.geteuid() == 0:
        shutil.chown(target, "root", "postgres")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The orders database with its role, then served as its pod serves it."""
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
        mount_as_the_kubelet_does(issued / LAYOUT.postgres_tls_secret(SERVICE), tls)
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
    other = issue(tmp_path / "postgres", tmp_path / "postgres-ca")
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
    out, pki = tmp_path / "postgres", tmp_path / "postgres-ca"
    issue(out, pki)
    first = {s: certificate(out, s) for s in TOPOLOGY.services}
    for service, issued in first.items():
        names = issued.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == [LAYOUT.postgres_host(service)]
    issue(out, pki)
    assert {s: certificate(out, s) for s in TOPOLOGY.services} == first
    # Within RENEW_BEFORE of its expiry, each is issued again, by the same CA.
    monkeypatch.setattr(component, "RENEW_BEFORE", datetime.timedelta(days=400))
    issue(out, pki)
    again = {s: certificate(out, s) for s in TOPOLOGY.services}
    for service, renewed in again.items():
        assert renewed.serial_number != first[service].serial_number
        assert renewed.issuer == first[service].issuer


def test_a_certificate_of_a_replaced_ca_is_issued_again(tmp_path: Path) -> None:
    out = tmp_path / "postgres"
    issue(out, tmp_path / "old-ca")
    before = certificate(out, SERVICE)
    issue(out, tmp_path / "new-ca")
    after = certificate(out, SERVICE)
    ca_file = out / LAYOUT.postgres_ca_secret / LAYOUT.postgres_ca_file
    ca = x509.load_pem_x509_certificate(ca_file.read_bytes())
    assert after.serial_number != before.serial_number
    after.verify_directly_issued_by(ca)
