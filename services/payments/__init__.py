"""The payments service: idempotent card charges and full refunds against a simulated card
processor."""
