"""Plumbing shared by every shopmesh service: config, server bootstrap, errors, telemetry."""
