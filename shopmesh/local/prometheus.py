"""A Prometheus scrape configuration for the local mesh, which `shopmesh up` writes to
<state>/prometheus.yml once the ports are chosen: every Envoy's loopback metrics listener
(`/stats/prometheus`; admin itself is a Unix socket Prometheus cannot scrape), each target
labelled with its `service`, `pod` and `role` (sidecar or gateway); on Kubernetes
(shopmesh.k8s.prometheus) the job is the same, with `service` and `pod` from the pods'
labels.

    prometheus --config.file var/prometheus.yml
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from shopmesh.envoy.builders import PROMETHEUS_PATH
from shopmesh.layout import SIDECAR, LocalLayout
from shopmesh.topology import GATEWAY

SCRAPE_JOB = "shopmesh-envoy"
SCRAPE_INTERVAL = timedelta(seconds=5)
"""Often enough for a window of 30 s to hold several scrapes (Prometheus's default is 1 min)."""


def prometheus_duration(value: timedelta) -> str:
    """A duration as Prometheus writes it (`5s`, `500ms`)."""
    millis = value // timedelta(milliseconds=1)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def scrape_config(layout: LocalLayout, interval: timedelta = SCRAPE_INTERVAL) -> dict[str, Any]:
    """A whole Prometheus configuration: one job scraping every Envoy of `layout` every
    `interval`."""
    targets = [
        {
            "targets": [str(layout.metrics(pod.name))],
            "labels": {"service": pod.service, "pod": pod.name, "role": SIDECAR},
        }
        for pod in layout.pods()
    ]
    targets.append(
        {
            "targets": [str(layout.metrics(GATEWAY))],
            "labels": {"service": GATEWAY, "pod": GATEWAY, "role": GATEWAY},
        }
    )
    interval_text = prometheus_duration(interval)
    return {
        "global": {"scrape_interval": interval_text, "evaluation_interval": interval_text},
        "scrape_configs": [
            {"job_name": SCRAPE_JOB, "metrics_path": PROMETHEUS_PATH, "static_configs": targets}
        ],
    }


def write_scrape_config(layout: LocalLayout) -> Path:
    """Write `scrape_config(layout)` where the state directory keeps it; its path."""
    path = layout.state.prometheus_config
    path.write_text(yaml.safe_dump(scrape_config(layout), sort_keys=False), encoding="utf-8")
    return path
