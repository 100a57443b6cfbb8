"""The postgres component (k8s/components/postgres), checked offline as the production overlay
renders it: each service on a database of its own, reached with its own role's password from a
Secret and by no other pod; the databases locked down like the mesh's pods; the services at two
replicas with budgets; no password anywhere in the manifests. The overlays without it stay on
SQLite. (The init script itself runs on a real Postgres in test_postgres_init.py.)"""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from services.common.config import DATABASE_URL, load_config
from shopmesh.database_roles import init_script
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.manifests import stale_files
from shopmesh.k8s.postgres import (
    COMPONENT_DIR,
    CONFIG_DIR,
    FINGERPRINT_KEY_SECRET,
    HBA_FILE,
    INIT_DIR,
    INIT_FILE,
    PASSWORD_KEY,
    PGPASSWORD,
    POSTGRES_IMAGE,
    POSTGRES_UID,
    ROLE_PASSWORD_ENV,
    SUPERUSER_PASSWORD_KEY,
    TLS_CERTIFICATE,
    TLS_KEY,
    render_postgres_component,
)
from shopmesh.topology import GATEWAY
from tests.support.cli import shopmesh
from tests.support.k8s import (
    K8S,
    ON_POSTGRES,
    OVERLAYS,
    Json,
    Rendered,
    all_containers,
    app_of,
    env_of,
    is_database,
    kubectl,
    name_of,
    pod_labels,
    pod_spec,
    policies_for,
    selects,
)
from tests.support.paths import ROOT, TOPOLOGY

LAYOUT = KubernetesLayout(TOPOLOGY)
COMPONENT = K8S / COMPONENT_DIR
SERVICES = list(TOPOLOGY.services)


@pytest.fixture(scope="module")
def production(rendered: dict[str, Rendered]) -> Rendered:
    return rendered["production"]


def database_of(production: Rendered, service: str) -> Json:
    return production.named("StatefulSet", LAYOUT.postgres(service))


def postgres_container(database: Json) -> Json:
    containers: list[Json] = pod_spec(database)["containers"]
    assert len(containers) == 1, name_of(database)
    return containers[0]


def config_map_of(production: Rendered, database: Json, volume: str) -> Json:
    [source] = [v for v in pod_spec(database)["volumes"] if v["name"] == volume]
    name: str = source["configMap"]["name"]
    return production.named("ConfigMap", name)


def admits(peer: Json, workload: Json) -> bool:
    """Whether a NetworkPolicy peer is `workload`'s pods (a peer with a namespaceSelector is
    another namespace's: kube-dns)."""
    return "namespaceSelector" not in peer and selects(peer["podSelector"], pod_labels(workload))


def secret_env(container: Json) -> dict[str, tuple[str, str]]:
    """The container's variables from Secrets: name -> (Secret, key)."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


# --- the files ------------------------------------------------------------------------------


def test_the_component_files_are_what_the_renderer_writes_now() -> None:
    stale = stale_files(render_postgres_component(TOPOLOGY, LAYOUT), COMPONENT)
    assert not stale, (
        f"out of date in {COMPONENT.relative_to(ROOT)}: {stale}; "
        "run `.venv/bin/shopmesh k8s render` and commit the result"
    )


@pytest.mark.parametrize("overlay_name", OVERLAYS)
def test_only_the_production_overlay_is_on_postgres(
    rendered: dict[str, Rendered], overlay_name: str
) -> None:
    overlay = rendered[overlay_name]
    urls = [
        env_of(app_of(w)).get(DATABASE_URL) for w in overlay.workloads() if name_of(w) != GATEWAY
    ]
    if overlay_name in ON_POSTGRES:
        assert all(urls)
        assert overlay.databases()
    else:
        assert urls == [None] * len(SERVICES)
        assert not overlay.databases()


# --- the services on their databases --------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_reaches_its_own_database_as_its_own_role(
    production: Rendered, service: str
) -> None:
    app = app_of(production.named("Deployment", service))
    url = urlsplit(env_of(app)[DATABASE_URL])
    assert url.scheme == "postgresql"
    assert (url.username, url.password, url.path) == (service, None, f"/{service}")
    assert url.port == LAYOUT.postgres_port
    # The host is the headless Service of this service's database, and of no other pods.
    database = database_of(production, service)
    host = production.named("Service", LAYOUT.postgres(service))
    assert url.hostname == f"{name_of(host)}.{TOPOLOGY.namespace}.svc.{LAYOUT.cluster_domain}"
    assert host["spec"]["clusterIP"] == "None"
    assert selects({"matchLabels": host["spec"]["selector"]}, pod_labels(database))
    assert [p["port"] for p in host["spec"]["ports"]] == [LAYOUT.postgres_port]
    assert database["spec"]["serviceName"] == name_of(host)
    # What the app's own reader makes of its environment (the writer is shopmesh.appenv).
    config = load_config(service, tuple(TOPOLOGY.services[service].calls), env_of(app))
    assert config.database == env_of(app)[DATABASE_URL]


@pytest.mark.parametrize("service", SERVICES)
def test_the_app_and_the_init_step_read_the_same_password_from_the_secret(
    production: Rendered, service: str
) -> None:
    secret = LAYOUT.postgres(service)
    app = secret_env(app_of(production.named("Deployment", service)))
    assert app == {PGPASSWORD: (secret, PASSWORD_KEY)}
    database = secret_env(postgres_container(database_of(production, service)))
    assert database == {
        "POSTGRES_PASSWORD": (secret, SUPERUSER_PASSWORD_KEY),
        ROLE_PASSWORD_ENV: (secret, PASSWORD_KEY),
    }


def test_no_password_is_in_the_manifests(production: Rendered) -> None:
    assert not production.of_kind("Secret"), "the operator creates the Secrets"
    for workload in [*production.workloads(), *production.databases()]:
        for container in all_containers(workload):
            for variable in container.get("env", []):
                if re.search("PASSWORD|SECRET", variable["name"]):
                    assert "value" not in variable, f"{name_of(workload)}: {variable['name']}"
    for config_map in production.of_kind("ConfigMap"):
        for key, content in config_map.get("data", {}).items():
            # The init script names a psql variable, never a literal password.
            assert not re.search(r"PASSWORD\s+'", content, re.IGNORECASE), key


@pytest.mark.parametrize("service", SERVICES)
def test_services_on_postgres_run_two_replicas_without_a_volume_claim(
    production: Rendered, service: str
) -> None:
    deployment = production.named("Deployment", service)
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert not [v for v in volumes.values() if "persistentVolumeClaim" in v]
    claims = [name_of(c) for c in production.of_kind("PersistentVolumeClaim")]
    assert LAYOUT.data_claim(service) not in claims
    if service == "payments":
        # Every replica fingerprints cards with the one key, from the operator's Secret.
        assert volumes["data"]["secret"]["secretName"] == FINGERPRINT_KEY_SECRET
    else:
        assert "data" not in volumes


@pytest.mark.parametrize("service", SERVICES)
def test_multi_replica_services_keep_one_pod_through_disruptions(
    production: Rendered, service: str
) -> None:
    deployment = production.named("Deployment", service)
    [budget] = [
        b
        for b in production.of_kind("PodDisruptionBudget")
        if selects(b["spec"]["selector"], pod_labels(deployment))
    ]
    assert deployment["spec"]["replicas"] >= 2
    assert budget["spec"]["minAvailable"] == 1
    assert "maxUnavailable" not in budget["spec"]


# --- the databases --------------------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_only_the_owning_service_reaches_its_database(production: Rendered, service: str) -> None:
    database = database_of(production, service)
    ingress = policies_for(production, database, "Ingress")
    rules = [rule for policy in ingress for rule in policy["spec"].get("ingress", [])]
    assert rules, "nothing admits the service"
    for rule in rules:
        assert rule["ports"] == [{"protocol": "TCP", "port": LAYOUT.postgres_port}]
        assert rule["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": service}}}
        ]
    # Which pods those rules admit: the service's, and no other workload's.
    admitted = [
        name_of(w)
        for w in [*production.workloads(), *production.databases()]
        if any(admits(peer, w) for rule in rules for peer in rule["from"])
    ]
    assert admitted == [service]


@pytest.mark.parametrize("service", SERVICES)
def test_database_pods_reach_nothing(production: Rendered, service: str) -> None:
    egress = policies_for(production, database_of(production, service), "Egress")
    assert egress, "no policy limits the database's egress"
    # Not even DNS: the base's allow-dns leaves the database pods out.
    assert [p["spec"].get("egress", []) for p in egress] == [[]] * len(egress)


@pytest.mark.parametrize("service", SERVICES)
def test_the_service_pods_may_open_their_database_port(production: Rendered, service: str) -> None:
    deployment = production.named("Deployment", service)
    database = database_of(production, service)
    allowed = [
        rule["ports"]
        for policy in policies_for(production, deployment, "Egress")
        for rule in policy["spec"].get("egress", [])
        if any(admits(peer, database) for peer in rule["to"])
    ]
    assert allowed == [[{"protocol": "TCP", "port": LAYOUT.postgres_port}]]


def test_databases_run_a_pinned_postgres_locked_down(production: Rendered) -> None:
    assert re.fullmatch(r"postgres:15\.\d+-bookworm", POSTGRES_IMAGE)
    for database in production.databases():
        assert is_database(database)
        assert database["spec"]["replicas"] == 1
        spec = pod_spec(database)
        assert spec["securityContext"]["runAsUser"] == POSTGRES_UID != 0
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        container = postgres_container(database)
        assert container["image"] == POSTGRES_IMAGE
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"] == {"drop": ["ALL"]}
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][bound])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"][0] == "pg_isready"
        [claim] = database["spec"]["volumeClaimTemplates"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert PurePosixPath(env_of(container)["PGDATA"]).parent == PurePosixPath(
            mounts[claim["metadata"]["name"]]
        )


@pytest.mark.parametrize("service", SERVICES)
def test_the_init_step_makes_the_private_database_and_pg_hba_admits_only_its_role(
    production: Rendered, service: str
) -> None:
    database = database_of(production, service)
    container = postgres_container(database)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["init"] == str(INIT_DIR)
    init = config_map_of(production, database, "init")["data"][INIT_FILE]
    assert init.endswith(init_script(service, ROLE_PASSWORD_ENV))
    assert mounts["config"] == str(CONFIG_DIR)
    assert f"hba_file={CONFIG_DIR / HBA_FILE}" in container["args"]
    hba = config_map_of(production, database, "config")["data"][HBA_FILE]
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert rules == [
        ["local", "all", "postgres", "peer"],
        ["hostnossl", "all", "all", "all", "reject"],
        ["hostssl", service, service, "all", "scram-sha-256"],
        ["host", "all", "all", "all", "reject"],
    ]


@pytest.mark.parametrize("service", SERVICES)
def test_the_app_reaches_its_database_over_verified_tls_only(
    production: Rendered, service: str
) -> None:
    """The app's URL asks for TLS checked against a CA file mounted from the operator's
    Secret, and the database serves the certificate and key mounted from its own Secret
    (that the two fit, on a real Postgres: test_postgres_tls.py)."""
    deployment = production.named("Deployment", service)
    app = app_of(deployment)
    query = parse_qs(urlsplit(env_of(app)[DATABASE_URL]).query)
    assert {k: v for k, v in query.items() if k != "sslrootcert"} == {
        "sslmode": ["verify-full"],
        "channel_binding": ["require"],
    }
    [root_certificate] = query["sslrootcert"]
    assert mounted_from(deployment, app, PurePosixPath(root_certificate)) == (
        LAYOUT.postgres_ca_secret,
        LAYOUT.postgres_ca_file,
    )
    database = database_of(production, service)
    container = postgres_container(database)
    settings = dict(a.split("=", 1) for a in container["args"][2::2])
    assert settings["ssl"] == "on"
    assert settings["ssl_min_protocol_version"] == "TLSv1.3"
    for setting, key in (("ssl_cert_file", TLS_CERTIFICATE), ("ssl_key_file", TLS_KEY)):
        path = PurePosixPath(settings[setting])
        assert mounted_from(database, container, path) == (LAYOUT.postgres_tls_secret(service), key)


def mounted_from(workload: Json, container: Json, path: PurePosixPath) -> tuple[str, str]:
    """(Secret, key) of the file at `path` in `container`, which mounts it read-only."""
    [(volume, mount)] = [
        (v, m)
        for m in container["volumeMounts"]
        for v in pod_spec(workload)["volumes"]
        if v["name"] == m["name"] and path.parent == PurePosixPath(m["mountPath"])
    ]
    assert mount.get("readOnly") is True
    [key] = [i["key"] for i in volume["secret"]["items"] if i["path"] == path.name]
    return volume["secret"]["secretName"], key


# --- the Secrets the operator creates -------------------------------------------------------


def referenced_secrets(production: Rendered) -> dict[str, set[str]]:
    """Secret -> the keys of it that the services' and databases' pods read (the mesh's
    certificates and signing keys come from other commands: tests/k8s/test_kind_scripts.py)."""
    wanted: dict[str, set[str]] = {}
    for workload in [*production.workloads(), *production.databases()]:
        for container in all_containers(workload):
            for secret, key in secret_env(container).values():
                wanted.setdefault(secret, set()).add(key)
        for volume in pod_spec(workload)["volumes"]:
            secret_volume = volume.get("secret", {})
            if "items" in secret_volume:
                keys = {item["key"] for item in secret_volume["items"]}
                wanted.setdefault(secret_volume["secretName"], set()).update(keys)
    return wanted


def created_secret(directory: Path) -> Json:
    """What the README's `kubectl create secret generic` makes of one directory (offline)."""
    command = [kubectl(), "--namespace", TOPOLOGY.namespace, "create", "secret", "generic"]
    done = subprocess.run(
        [*command, directory.name, "--from-file", str(directory), "--dry-run=client", "-o", "yaml"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    secret: Json = yaml.safe_load(done.stdout)
    return secret


def test_issue_db_secrets_makes_every_secret_the_pods_read(
    production: Rendered, tmp_path: Path
) -> None:
    out = tmp_path / "postgres"
    result = shopmesh("k8s", "issue-db-secrets", "--out", str(out))
    assert result.returncode == 0, result.stderr
    made = {d.name: set(created_secret(d)["data"]) for d in out.iterdir()}
    assert made == referenced_secrets(production)
    for path in out.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path


def test_issue_db_secrets_keeps_what_it_made_before(tmp_path: Path) -> None:
    out = tmp_path / "postgres"
    assert shopmesh("k8s", "issue-db-secrets", "--out", str(out)).returncode == 0
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert shopmesh("k8s", "issue-db-secrets", "--out", str(out)).returncode == 0
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    passwords = [v for p, v in before.items() if p.name == PASSWORD_KEY]
    assert len(set(passwords)) == len(SERVICES), "every role has a password of its own"


def test_the_readme_creates_the_secrets_with_issue_db_secrets() -> None:
    readme = (K8S / "README.md").read_text()
    assert "shopmesh k8s issue-db-secrets --out var/k8s/postgres" in readme
    assert 'create secret generic "$(basename "$secret")" --from-file "$secret"' in readme
