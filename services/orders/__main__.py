"""`python -m services.orders`: serve OrdersService with configuration from the environment."""

from services.common.server import run
from services.orders.app import UPSTREAM_NAMES, build

run("orders", build, upstream_names=UPSTREAM_NAMES)
