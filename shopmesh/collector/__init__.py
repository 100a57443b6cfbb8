"""The mesh's own trace collector: an OTLP/gRPC receiver that keeps the last traces in SQLite.

Neither Jaeger nor the OpenTelemetry Collector is in the registries these machines reach
(PyPI, Debian, npm), so the local mesh runs this small one (`shopmesh up` starts it like any
other process); `shopmesh up --otlp-endpoint` sends the spans to a real one instead."""
