"""Kubernetes manifests and certificates for the mesh, generated from the topology
(`shopmesh k8s render`, `shopmesh k8s issue-certs`)."""
