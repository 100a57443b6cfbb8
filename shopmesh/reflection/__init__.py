"""The gateway's reflection service: server reflection for the whole API the gateway exposes.

Envoy cannot merge its backends' reflection (a reflection stream names services inside its
messages, so it cannot be routed by service), so the gateway routes every reflection stream,
whatever its :authority, to this one process beside it. It answers from the contracts'
descriptor set (gen/shop.pb, with source info, so `grpcurl describe` shows their comments),
rewritten to `gateway.exposes`: a service's descriptor lists only its exposed methods, and a
service with none is not there at all. It speaks grpc.reflection.v1alpha and v1 (the same
messages on the wire) and serves grpc.health.v1 on its socket for the supervisor.

`list` shows exactly the exposed services: not grpc.health.v1.Health, which the gateway routes
only per service (`-authority users`), so it would be UNIMPLEMENTED where `list` is typed, and
not the reflection services, which are how grpcurl asks, not part of the API.
"""
