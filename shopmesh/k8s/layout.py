"""The in-cluster `Layout`: where the manifests mount volumes and which ports they publish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.users.keys import JWKS_FILE
from shopmesh.layout import EdgeCertificate, Endpoint, Pod, Upstream
from shopmesh.topology import Topology


@dataclass(frozen=True)
class KubernetesLayout:
    """The in-cluster layout: the manifests mount volumes at these paths and publish these
    ports. Ports follow Istio's numbering where there is one (15443 mTLS, 15021 health,
    15090 Prometheus)."""

    topology: Topology
    cluster_domain: str = "cluster.local"
    socket_dir: Path = Path("/var/run/shopmesh")
    """The emptyDir shared by the app and sidecar containers."""
    admin_dir: Path = Path("/var/run/envoy-admin")
    """An emptyDir mounted in the Envoy container only: nothing else in the pod reaches admin."""
    tls_dir: Path = Path("/etc/shopmesh/tls")
    """The mounted Secret with the identity's certificate, key, trust bundle and SDS files."""
    config_dir: Path = Path("/etc/shopmesh/envoy")
    config_file: str = "envoy.yaml"
    data_dir: Path = Path("/var/lib/shopmesh")
    descriptor: Path = Path("/etc/shopmesh/descriptors/shop.pb")
    signing_keys_dir: Path = Path("/etc/shopmesh/signing-keys")
    """The mounted Secret with the access-token signing keys (in the issuer's pods only)."""
    signing_keys_secret: str = "signing-keys"
    jwks_dir: Path = Path("/etc/shopmesh/jwks")
    """The mounted ConfigMap with their JWKS (in the gateway's pods)."""
    jwks_config_map: str = "jwks"
    descriptor_in_image: Path = Path("/app/descriptors/shop.pb")
    """Where the Dockerfile puts the contracts' descriptor set, for the gateway's transcoder."""
    storefront_dir: Path = Path("/etc/shopmesh/storefront")
    """The gateway's emptyDir the storefront's files are copied into from the image."""
    storefront_in_image: Path = Path("/app/storefront")
    """Where the Dockerfile puts the storefront it builds (web/, `make web`)."""
    inbound_port: int = 15443
    health_port: int = 15021
    metrics_port: int = 15090
    gateway_port: int = 8080
    edge_tls: bool = False
    """Whether the gateway's listener serves TLS (the production overlay's config)."""
    edge_tls_dir: Path = Path("/etc/shopmesh/edge-tls")
    """The mounted kubernetes.io/tls Secret with the gateway's public certificate."""
    edge_tls_secret: str = "gateway-edge-tls"
    edge_sds_file: str = "edge-sds.yaml"
    """The SDS file, beside the config in the gateway's ConfigMap, naming the Secret's files."""
    postgres_port: int = 5432
    """Each service's Postgres (the postgres component, k8s/overlays/production)."""
    postgres_ca_secret: str = "postgres-ca"
    """The Secret with the certificate of the CA that signs the databases' server certificates
    (`shopmesh k8s issue-db-secrets`), mounted in the app containers on Postgres."""
    postgres_ca_dir: Path = Path("/etc/shopmesh/postgres-ca")
    postgres_ca_file: str = "ca.crt"
    postgres_tls_dir: Path = Path("/etc/shopmesh/postgres-tls")
    """Where a database pod mounts its Secret `postgres_tls_secret(service)`."""

    def pods(self) -> list[Pod]:
        return [Pod(name, name) for name in self.topology.services]

    def config_path(self) -> Path:
        return self.config_dir / self.config_file

    def config_map(self, identity: str) -> str:
        """The ConfigMap (before kustomize adds its hash suffix) with `identity`'s Envoy
        config."""
        return f"envoy-{identity}"

    def tls_secret(self, identity: str) -> str:
        """The Secret holding `identity`'s certificate files."""
        return f"tls-{identity}"

    def data_claim(self, service: str) -> str:
        return f"{service}-data"

    def postgres(self, service: str) -> str:
        """The name of `service`'s database: its StatefulSet, Service, Secret and ConfigMap,
        and its pods' app.kubernetes.io/name."""
        return f"{service}-postgres"

    def postgres_tls_secret(self, service: str) -> str:
        """The Secret with the server certificate and key of `service`'s database."""
        return f"{self.postgres(service)}-tls"

    def postgres_host(self, service: str) -> str:
        """The DNS name of `service`'s database: its headless Service, and the name its server
        certificate is issued for."""
        return f"{self.postgres(service)}.{self.topology.namespace}.svc.{self.cluster_domain}"

    def postgres_url(self, service: str) -> str:
        """`service`'s own database as its role, without the password (PGPASSWORD carries
        it, from the Secret `postgres(service)`), over TLS only: libpq checks the server's
        certificate against the databases' CA and its name against the host (verify-full),
        and binds the SCRAM exchange to that TLS session, so no one between the pods can
        stand in for the database or replay the login."""
        ca = self.postgres_ca_dir / self.postgres_ca_file
        tls = f"sslmode=verify-full&sslrootcert={ca}&channel_binding=require"
        return (
            f"postgresql://{service}@{self.postgres_host(service)}:{self.postgres_port}"
            f"/{service}?{tls}"
        )

    def service_host(self, service: str) -> str:
        return f"{service}.{self.topology.namespace}.svc.{self.cluster_domain}"

    def app_socket(self, pod: Pod) -> Path:
        return self.socket_dir / "app.sock"

    def egress_socket(self, pod: Pod) -> Path:
        return self.socket_dir / "egress.sock"

    def admin_socket(self, envoy: str) -> Path:
        return self.admin_dir / "admin.sock"

    def inbound(self, pod: Pod) -> Endpoint:
        return Endpoint("0.0.0.0", self.inbound_port)

    def health(self, pod: Pod) -> Endpoint:
        return Endpoint("0.0.0.0", self.health_port)

    def metrics(self, envoy: str) -> Endpoint:
        return Endpoint("0.0.0.0", self.metrics_port)

    def upstream(self, service: str) -> Upstream:
        return Upstream("STRICT_DNS", (Endpoint(self.service_host(service), self.inbound_port),))

    def identity_dir(self, identity: str) -> Path:
        return self.tls_dir

    def access_log(self, envoy: str) -> str:
        return "/dev/stdout"

    def gateway_listener(self) -> Endpoint:
        return Endpoint("0.0.0.0", self.gateway_port)

    def edge_certificate(self) -> EdgeCertificate | None:
        # The SDS file is in the ConfigMap; the Secret's files, swapped by one rename, are not.
        if not self.edge_tls:
            return None
        return EdgeCertificate(self.config_dir / self.edge_sds_file, self.edge_tls_dir)

    def gateway_health(self) -> Endpoint:
        return Endpoint("0.0.0.0", self.health_port)

    def descriptor_set(self) -> Path:
        return self.descriptor

    def reflection_socket(self) -> Path:
        # In the gateway's pod, the emptyDir its Envoy and reflection containers share.
        return self.socket_dir / "reflection.sock"

    def storefront(self) -> Path:
        return self.storefront_dir

    def database(self, service: str) -> Path:
        return self.data_dir / f"{service}.db"

    def signing_keys(self) -> Path:
        return self.signing_keys_dir

    def jwks(self) -> Path:
        return self.jwks_dir / JWKS_FILE
