"""`python -m services.notifications`: serve NotificationsService with configuration from the
environment."""

from services.common.server import run
from services.notifications.app import build

run("notifications", build)
