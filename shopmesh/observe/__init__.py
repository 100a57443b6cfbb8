"""Watching the mesh: shopper traffic to watch it by (`shopmesh load`), and what it shows."""
