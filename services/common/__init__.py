"""Plumbing shared by every shopmesh service: config, server bootstrap, the database, errors,
paging, telemetry."""
