"""The orders service: orders, the checkout saga over users/inventory/payments, and a
transactional outbox of order events relayed to notifications."""
