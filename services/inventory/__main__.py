"""`python -m services.inventory`: serve InventoryService until SIGTERM (config from SHOPMESH_*)."""

from services.common.server import run
from services.inventory.app import build

if __name__ == "__main__":
    run("inventory", build)
