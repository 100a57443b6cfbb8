"""The notifications service: turns order events into per-user notifications, keeps them, and
streams new ones to watching clients."""
