"""shopmesh tooling: the topology file, certificates, Envoy config rendering and the CLI."""
