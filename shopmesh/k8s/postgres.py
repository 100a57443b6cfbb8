"""k8s/components/postgres/, rendered from the topology: a kustomize Component that moves every
service from its SQLite file to a Postgres of its own; the production overlay applies it.

For each service (`layout.postgres(service)` names the database's objects):
- a StatefulSet of one pod running the official postgres image, its data on a volume claim
  template, and a headless Service for its DNS name;
- the init step: on an empty data directory the image runs the *.sql files of
  /docker-entrypoint-initdb.d once; the component puts there the psql script of
  shopmesh.database_roles (the service's role with a SCRAM password, its database, CONNECT
  revoked from PUBLIC), which reads the password from the Secret through a variable;
- pg_hba.conf: the service's role may reach the service's database over TLS with SCRAM, the
  superuser only the pod's own socket as the container's OS user (peer), nothing else;
- TLS: the server's certificate for its DNS name, from the databases' own CA (not the mesh's:
  a database is no mesh identity), TLS 1.3 only; the app checks both (`verify-full`) and binds
  its SCRAM login to the session (`channel_binding=require`);
- NetworkPolicies: only the service's pods may open the database port; the database pods may
  open nothing (default-deny, and the base's allow-dns leaves them out);
- the service's Deployment rendered again with `postgres_storage` (a strategic-merge patch
  that replaces its spec): SHOPMESH_DATABASE_URL and PGPASSWORD (from the Secret), replicas()
  pods rolling one at a time, no PVC (deleted), and its PodDisruptionBudget at minAvailable 1.

No Secret is rendered: the operator creates them (k8s/README.md, shopmesh.k8s.db_secrets), so no
password or key is in a manifest, and the app's role never sees the superuser's password.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from services.payments import fingerprint_key
from shopmesh.appenv import AppSettings
from shopmesh.database_roles import init_script
from shopmesh.k8s.layout import KubernetesLayout
from shopmesh.k8s.manifests import HEADER, documents
from shopmesh.k8s.objects import (
    NAME_LABEL,
    Json,
    ReadOnlyVolume,
    Storage,
    container_security,
    egress_policy,
    labels,
    metadata,
    mount,
    resources,
    secret_source,
    secret_volume,
    service_deployment,
)
from shopmesh.topology import Topology

COMPONENT_DIR = Path("components/postgres")
"""Where the component's files go, under k8s/."""
DATABASE = "database"
"""The app.kubernetes.io/component of the database pods and their objects."""
POSTGRES_IMAGE = "postgres:15.17-bookworm"
"""The official image (docker-library/postgres 15/bookworm: Debian, the newest 15 release its
repository held when this was written), whose entrypoint runs the init step; the tests run
the init script with Debian's psql 15. Pin it by digest where you deploy (k8s/README.md)."""
POSTGRES_UID = 999
"""The `postgres` user of the official image: the owner of its data directory, and the OS
user the superuser's peer authentication maps from."""
SUPERUSER = "postgres"
PASSWORD_KEY = "password"
"""The key of the service role's password in the Secret `layout.postgres(service)`."""
SUPERUSER_PASSWORD_KEY = "superuser-password"
ROLE_PASSWORD_ENV = "SHOPMESH_ROLE_PASSWORD"
"""What the init script reads the role's password from, in the database container."""
PGPASSWORD = "PGPASSWORD"
"""libpq's variable: the app's password, from the Secret (a mounted passfile would not do:
with the pod's fsGroup the kubelet makes Secret files group-readable, and libpq ignores a
passfile anyone but its owner may read)."""
MIN_REPLICAS = 2
"""Pods per service at least: on Postgres replicas share one database, so none needs to be a
single point of failure; the topology's `replicas_on_postgres` may ask for more."""
DATA_DIR = Path("/var/lib/postgresql/data")
INIT_DIR = Path("/docker-entrypoint-initdb.d")
CONFIG_DIR = Path("/etc/shopmesh/postgres")
INIT_FILE = "init.sql"
HBA_FILE = "pg_hba.conf"
STORAGE = "10Gi"
FINGERPRINTING = "payments"
FINGERPRINT_KEY_SECRET = "payments-fingerprint-key"
"""Payments fingerprints cards with a key kept beside its database (services.payments.
fingerprint_key); on Postgres its pods have no volume to keep it on, and every replica needs
the same one, so the operator creates it as this Secret."""
TLS_CERTIFICATE = "tls.crt"
TLS_KEY = "tls.key"
"""The server certificate and key in the Secret `layout.postgres_tls_secret(service)`; the
kubelet mounts them owned by root, readable by the pod's fsGroup (the postgres group), which
Postgres accepts for a key (root-owned, no group write, nothing for others)."""
TLS_FILES = (TLS_CERTIFICATE, TLS_KEY)


def fingerprint_key_file(layout: KubernetesLayout) -> str:
    """The key's file name in its Secret: where payments looks for it, beside its database."""
    return fingerprint_key.key_path(layout.database(FINGERPRINTING)).name


def secret_ref(secret: str, key: str) -> Json:
    return {"secretKeyRef": {"name": secret, "key": key}}


def postgres_storage(layout: KubernetesLayout, service: str) -> Storage:
    """`service`'s pods on its own database: replicas() of them, the URL in the app environment,
    the password from the Secret, and no data volume (payments: its fingerprint key's)."""
    password = {"name": PGPASSWORD, "valueFrom": secret_ref(layout.postgres(service), PASSWORD_KEY)}
    data = None
    if service == FINGERPRINTING:
        data = secret_source(FINGERPRINT_KEY_SECRET, [fingerprint_key_file(layout)])
    settings = AppSettings(database_urls={service: layout.postgres_url(service)})
    trust = secret_volume("postgres-ca", layout.postgres_ca_secret, [layout.postgres_ca_file])
    return Storage(
        replicas(layout, service),
        settings,
        data,
        (password,),
        (ReadOnlyVolume(trust, layout.postgres_ca_dir),),
    )


def replicas(layout: KubernetesLayout, service: str) -> int:
    """How many pods `service` runs on Postgres: the topology's count, at least MIN_REPLICAS."""
    return max(MIN_REPLICAS, layout.topology.on_postgres().services[service].replicas)


def hba(service: str) -> str:
    """Who may connect to `service`'s database, and how (first matching line wins)."""
    return (
        "# TYPE  DATABASE  USER  ADDRESS  METHOD\n"
        f"local   all       {SUPERUSER}  peer\n"
        # The last line refuses plaintext too; this one says so to the reader.
        "hostnossl  all  all  all  reject\n"
        f"hostssl  {service}  {service}  all  scram-sha-256\n"
        # Postgres rejects what no line matches; said here for the reader.
        "host    all  all  all  reject\n"
    )


def ready_check(layout: KubernetesLayout, service: str) -> list[str]:
    # Over TCP, as the service's role: ready once the server that takes connections runs (the
    # init step's temporary server listens on the socket only). No password is sent.
    return [
        "pg_isready",
        "--host=127.0.0.1",
        f"--port={layout.postgres_port}",
        f"--username={service}",
        f"--dbname={service}",
    ]


def exec_probe(command: list[str], period: int, failures: int) -> Json:
    return {
        "exec": {"command": command},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def postgres_container(layout: KubernetesLayout, service: str) -> Json:
    secret = layout.postgres(service)
    return {
        "name": "postgres",
        "image": POSTGRES_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "args": ["postgres", *server_settings(CONFIG_DIR / HBA_FILE, layout.postgres_tls_dir)],
        "env": [
            # A directory below the volume's root, which may hold lost+found.
            {"name": "PGDATA", "value": str(DATA_DIR / "pgdata")},
            {"name": "POSTGRES_PASSWORD", "valueFrom": secret_ref(secret, SUPERUSER_PASSWORD_KEY)},
            {"name": ROLE_PASSWORD_ENV, "valueFrom": secret_ref(secret, PASSWORD_KEY)},
        ],
        "ports": [{"name": "postgres", "containerPort": layout.postgres_port, "protocol": "TCP"}],
        # initdb, or crash recovery after an unclean stop, may take minutes.
        "startupProbe": exec_probe(ready_check(layout, service), period=5, failures=60),
        "readinessProbe": exec_probe(ready_check(layout, service), period=5, failures=3),
        "livenessProbe": exec_probe(ready_check(layout, service), period=10, failures=6),
        "resources": resources("100m", "256Mi", "2", "1Gi"),
        "securityContext": container_security(),
        "volumeMounts": [
            mount("data", DATA_DIR),
            # The read-only root filesystem's writable places: the socket, temporary files,
            # and the shared memory of parallel queries (a container's /dev/shm is 64 MiB).
            mount("run", Path("/var/run/postgresql")),
            mount("tmp", Path("/tmp")),
            mount("shm", Path("/dev/shm")),
            mount("init", INIT_DIR, read_only=True),
            mount("config", CONFIG_DIR, read_only=True),
            mount("tls", layout.postgres_tls_dir, read_only=True),
        ],
    }


def server_settings(hba_path: Path, tls_dir: Path) -> list[str]:
    """The server's command-line settings: who may connect (pg_hba.conf), and TLS 1.3 with
    the certificate and key in `tls_dir`. The image's entrypoint passes them to its init
    step's temporary server too: it listens on the socket only, but loads the key all the
    same, so a key Postgres refuses fails the init step."""
    settings = {
        "hba_file": hba_path,
        "ssl": "on",
        "ssl_cert_file": tls_dir / TLS_CERTIFICATE,
        "ssl_key_file": tls_dir / TLS_KEY,
        "ssl_min_protocol_version": "TLSv1.3",
    }
    return [part for name, value in settings.items() for part in ("-c", f"{name}={value}")]


def stateful_set(topology: Topology, layout: KubernetesLayout, service: str) -> Json:
    name = layout.postgres(service)
    config_map = {"name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(name, topology.namespace, DATABASE),
        "spec": {
            "serviceName": name,
            "replicas": 1,
            "selector": {"matchLabels": {NAME_LABEL: name}},
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": "Retain",
                "whenScaled": "Retain",
            },
            "template": {
                "metadata": {"labels": labels(name, DATABASE)},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 60,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": POSTGRES_UID,
                        "runAsGroup": POSTGRES_UID,
                        "fsGroup": POSTGRES_UID,
                        "fsGroupChangePolicy": "OnRootMismatch",
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [postgres_container(layout, service)],
                    "volumes": [
                        {"name": "run", "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "256Mi"}},
                        {
                            "name": "init",
                            "configMap": {
                                **config_map,
                                "items": [{"key": INIT_FILE, "path": INIT_FILE}],
                            },
                        },
                        {
                            "name": "config",
                            "configMap": {
                                **config_map,
                                "items": [{"key": HBA_FILE, "path": HBA_FILE}],
                            },
                        },
                        secret_volume("tls", layout.postgres_tls_secret(service), TLS_FILES),
                    ],
                },
            },
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "data", "labels": labels(name, DATABASE)},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": STORAGE}},
                    },
                }
            ],
        },
    }


def headless_service(topology: Topology, layout: KubernetesLayout, service: str) -> Json:
    name = layout.postgres(service)
    number = layout.postgres_port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(name, topology.namespace, DATABASE),
        "spec": {
            "clusterIP": "None",
            "selector": {NAME_LABEL: name},
            "ports": [
                {"name": "postgres", "port": number, "targetPort": number, "protocol": "TCP"}
            ],
        },
    }


def database_policy(topology: Topology, layout: KubernetesLayout, service: str) -> Json:
    """Only `service`'s pods may open its database's port; the database opens nothing."""
    name = layout.postgres(service)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(name, topology.namespace, DATABASE),
        "spec": {
            "podSelector": {"matchLabels": {NAME_LABEL: name}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {NAME_LABEL: service}}}],
                    "ports": [{"protocol": "TCP", "port": layout.postgres_port}],
                }
            ],
            "egress": [],
        },
    }


def client_policy(topology: Topology, layout: KubernetesLayout, service: str) -> Json:
    """`service`'s pods may open its database's port. The app connects itself, not through
    its sidecar: the database is no mesh service (no SPIFFE identity, no gRPC)."""
    return egress_policy(
        topology.namespace,
        service,
        [layout.postgres(service)],
        layout.postgres_port,
        name=f"{service}-database",
    )


def service_patches(topology: Topology, layout: KubernetesLayout, service: str) -> list[Json]:
    """The base's objects of `service` as they are on Postgres: its Deployment's spec replaced
    by one rendered with `postgres_storage`, its SQLite volume claim deleted, and its budget
    keeping one pod up (with MIN_REPLICAS pods or more, a drain still proceeds, one pod at a
    time)."""
    namespace = topology.namespace
    pod = next(p for p in layout.pods() if p.service == service)
    deployment = service_deployment(topology, layout, pod, postgres_storage(layout, service))
    spread = {
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {NAME_LABEL: service}},
    }
    deployment["spec"]["template"]["spec"]["topologySpreadConstraints"] = [spread]
    reference = {"name": service, "namespace": namespace}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": reference,
            "spec": {"$patch": "replace", **deployment["spec"]},
        },
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": reference,
            "spec": {"maxUnavailable": None, "minAvailable": 1},
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": layout.data_claim(service), "namespace": namespace},
            "$patch": "delete",
        },
    ]


def init_file(layout: KubernetesLayout, service: str) -> str:
    return f"{layout.postgres(service)}.{INIT_FILE}"


def hba_file(layout: KubernetesLayout, service: str) -> str:
    return f"{layout.postgres(service)}.{HBA_FILE}"


def kustomization(topology: Topology, layout: KubernetesLayout) -> Json:
    services = list(topology.services)
    return {
        "apiVersion": "kustomize.config.k8s.io/v1alpha1",
        "kind": "Component",
        "resources": [f"{layout.postgres(s)}.yaml" for s in services],
        "configMapGenerator": [
            {
                "name": layout.postgres(s),
                "namespace": topology.namespace,
                "files": [
                    f"{INIT_FILE}={init_file(layout, s)}",
                    f"{HBA_FILE}={hba_file(layout, s)}",
                ],
                "options": {"labels": labels(layout.postgres(s), DATABASE)},
            }
            for s in services
        ],
        "patches": [{"path": f"patch-{s}.yaml"} for s in services],
    }


def render_postgres_component(topology: Topology, layout: KubernetesLayout) -> dict[str, str]:
    """File name -> content of every file in k8s/components/postgres/."""
    files = {
        "kustomization.yaml": HEADER
        + yaml.safe_dump(kustomization(topology, layout), sort_keys=False)
    }
    comment = HEADER.replace("# ", "-- ").replace("#\n", "--\n")
    for service in topology.services:
        objects = [
            headless_service(topology, layout, service),
            stateful_set(topology, layout, service),
            database_policy(topology, layout, service),
            client_policy(topology, layout, service),
        ]
        files[f"{layout.postgres(service)}.yaml"] = HEADER + documents(objects)
        files[init_file(layout, service)] = comment + init_script(service, ROLE_PASSWORD_ENV)
        files[hba_file(layout, service)] = HEADER + hba(service)
        files[f"patch-{service}.yaml"] = HEADER + documents(
            service_patches(topology, layout, service)
        )
    return files
