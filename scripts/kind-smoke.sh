#!/usr/bin/env bash
# A checkout through the kind cluster's gateway with grpcurl (server reflection, no proto files):
# sign up, sign in, place an order for a mug paid with a test card, and check it is CONFIRMED.
# Usage: scripts/kind-smoke.sh   (make kind-smoke, after make kind-up)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/kind-lib.sh
source scripts/kind-lib.sh

require_venv
[ -x "$GRPCURL" ] || die "$GRPCURL not found: run 'make venv' first (or set GRPCURL)."

run_id="smoke-$(date +%s)-$RANDOM"

# field FILE PATH...: one field of a grpcurl JSON reply (grpcurl prints proto field names).
field() {
    "$PYTHON" - "$@" <<'PY'
import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2:]:
    value = value[key]
print(value)
PY
}

reply="$(mktemp)"
trap 'rm -f "$reply"' EXIT

echo "==> CreateUser through $GATEWAY"
"$GRPCURL" -plaintext -authority users \
    -d "{\"request_id\": \"$run_id\", \"email\": \"$run_id@example.com\", \"display_name\": \"Smoke\", \"password\": \"$run_id\"}" \
    "$GATEWAY" shop.users.v1.UsersService/CreateUser >"$reply" ||
    die "CreateUser through the gateway at $GATEWAY failed: is the cluster up (make kind-up)?"
user_id="$(field "$reply" user user_id)"
echo "    user $user_id"

echo "==> SignIn"
"$GRPCURL" -plaintext -authority users \
    -d "{\"email\": \"$run_id@example.com\", \"password\": \"$run_id\"}" \
    "$GATEWAY" shop.users.v1.UsersService/SignIn >"$reply" || die "SignIn failed"
token="$(field "$reply" session access_token)"

echo "==> PlaceOrder"
order="{\"idempotency_key\": \"$run_id\", \"user_id\": \"$user_id\", \
\"items\": [{\"sku\": \"MUG-01\", \"quantity\": 1}], \"payment_token\": \"tok_visa\"}"
# A dependency still starting answers UNAVAILABLE (ORDER_PENDING); the same key is safe to retry.
for attempt in 1 2 3 4 5; do
    if "$GRPCURL" -plaintext -authority orders -max-time 15 -H "authorization: Bearer $token" -d "$order" \
        "$GATEWAY" shop.orders.v1.OrdersService/PlaceOrder >"$reply"; then
        break
    fi
    [ "$attempt" -lt 5 ] || die "PlaceOrder failed $attempt times"
    sleep 2
done
status="$(field "$reply" order status)"
echo "    order $(field "$reply" order order_id): $status"
[ "$status" = "ORDER_STATUS_CONFIRMED" ] || die "expected ORDER_STATUS_CONFIRMED, got $status"
echo "kind-smoke: OK, a checkout through the gateway was confirmed"
