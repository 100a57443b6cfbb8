"""The local mesh: every app with its Envoy sidecar, and the gateway, as processes on this
machine (`shopmesh up`)."""
