"""`python -m services.payments`: serve PaymentsService with configuration from the
environment."""

from services.common.server import run
from services.payments.app import build

run("payments", build)
