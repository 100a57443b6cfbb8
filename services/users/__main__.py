"""`python -m services.users`: serve UsersService with configuration from the environment."""

from services.common.server import run
from services.users.app import build

run("users", build)
