"""The Prometheus scrape configuration `shopmesh up` writes: every Envoy's metrics listener,
labelled with its service, pod and role (tests/mesh/test_prometheus.py scrapes a real mesh
with it)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml

from shopmesh.layout import GatewayPorts, LocalLayout, PodPorts, StateDir, local_pods
from shopmesh.local.prometheus import scrape_config, write_scrape_config
from tests.support.paths import TOPOLOGY


def layout(root: Path) -> LocalLayout:
    ports = {
        pod.name: PodPorts(inbound=20000 + i, health=21000 + i, metrics=22000 + i)
        for i, pod in enumerate(local_pods(TOPOLOGY))
    }
    gateway = GatewayPorts(listener=8080, health=8081, metrics=8082)
    return LocalLayout(StateDir(root), TOPOLOGY, "127.0.0.1", ports, gateway, root / "shop.pb")


def test_every_envoy_is_a_target_labelled_with_its_service_pod_and_role(tmp_path: Path) -> None:
    config = scrape_config(layout(tmp_path))

    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/stats/prometheus"
    targets = {group["targets"][0]: group["labels"] for group in job["static_configs"]}
    pods = local_pods(TOPOLOGY)
    assert len(targets) == len(pods) + 1
    assert targets["127.0.0.1:22001"] == {
        "service": pods[1].service,
        "pod": pods[1].name,
        "role": "sidecar",
    }
    assert targets["127.0.0.1:8082"] == {"service": "gateway", "pod": "gateway", "role": "gateway"}


def test_the_scrape_interval_is_written_as_prometheus_reads_it(tmp_path: Path) -> None:
    assert scrape_config(layout(tmp_path))["global"]["scrape_interval"] == "5s"
    fast = scrape_config(layout(tmp_path), timedelta(milliseconds=500))
    assert fast["global"]["scrape_interval"] == "500ms"


def test_up_writes_it_into_the_state_directory(tmp_path: Path) -> None:
    path = write_scrape_config(layout(tmp_path))

    assert path == tmp_path / "prometheus.yml"
    assert yaml.safe_load(path.read_text()) == scrape_config(layout(tmp_path))
