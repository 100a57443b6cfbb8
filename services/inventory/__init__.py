"""The inventory service: product catalog, prices, stock and the reservations of orders."""
