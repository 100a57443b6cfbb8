"""Envoy: config builders per role (sidecar, gateway), the command line, and an admin client."""
