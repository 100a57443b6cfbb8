#!/usr/bin/env bash
# What a new user does through the kind cluster's gateway, with grpcurl (server reflection, no
# proto files, no -authority) and curl: list the public API, load the storefront, call over
# gRPC-Web as the storefront does, then sign up, sign in and, with the access token, place an
# order for a mug paid with a test card, and check it is CONFIRMED.
# Usage: scripts/kind-smoke.sh   (make kind-smoke, after make kind-up)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/kind-lib.sh
source scripts/kind-lib.sh

require_venv
[ -x "$GRPCURL" ] || die "$GRPCURL not found: run 'make venv' first (or set GRPCURL)."
command -v curl >/dev/null 2>&1 || die "curl not found: install it (Debian/Ubuntu: apt-get install curl)."

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

# grpc_web HEADERS BODY: "<grpc-status> <messages>" of a gRPC-Web answer (curl -D HEADERS -o
# BODY): the status from the trailer frame (flag 0x80) after the messages, or from the headers
# of a trailers-only answer (a refusal).
grpc_web() {
    "$PYTHON" - "$@" <<'PY'
import sys
headers = open(sys.argv[1], encoding="latin-1").read().lower().splitlines()
body = open(sys.argv[2], "rb").read()
status = next((h.split(":", 1)[1].strip() for h in headers if h.startswith("grpc-status:")), "")
messages, at = 0, 0
while at + 5 <= len(body):
    flag, size = body[at], int.from_bytes(body[at + 1 : at + 5], "big")
    block, at = body[at + 5 : at + 5 + size], at + 5 + size
    if flag & 0x80:
        for line in block.decode("latin-1").lower().split("\r\n"):
            if line.startswith("grpc-status:"):
                status = line.split(":", 1)[1].strip()
    else:
        messages += 1
print(status or "none", messages)
PY
}

# exposed_services: the gRPC services of gateway.exposes in the topology the manifests are
# rendered from (envoy/mesh.yaml), one a line.
exposed_services() {
    "$PYTHON" - <<'PY'
from pathlib import Path
from shopmesh.topology import load_topology
topology = load_topology(Path("envoy/mesh.yaml"))
for name in topology.gateway.exposes:
    print(topology.services[name].grpc_service)
PY
}

reply="$(mktemp)"
headers="$(mktemp)"
trap 'rm -f "$reply" "$headers"' EXIT

echo "==> grpcurl list through $GATEWAY (the gateway's reflection for the whole public API)"
"$GRPCURL" -plaintext "$GATEWAY" list >"$reply" ||
    die "grpcurl list through the gateway at $GATEWAY failed: is the cluster up (make kind-up)?"
exposed="$(exposed_services)"
for service in $exposed; do
    grep -qx "$service" "$reply" || die "grpcurl list does not show $service: $(tr '\n' ' ' <"$reply")"
done
echo "    $(wc -l <"$reply") services"

echo "==> the storefront: GET http://$GATEWAY/"
answer="$(curl -s -o /dev/null -w '%{http_code} %{content_type}' "http://$GATEWAY/")" ||
    die "GET http://$GATEWAY/ failed"
[[ "$answer" == "200 text/html"* ]] || die "GET / answered '$answer', expected 200 text/html"
echo "    $answer"

echo "==> ListProducts over gRPC-Web, as the storefront calls it"
# One empty request message: a gRPC-Web frame is a flag byte and a 4-byte length.
printf '\0\0\0\0\0' |
    curl -s --data-binary @- -H 'content-type: application/grpc-web+proto' -H 'x-grpc-web: 1' \
        -D "$headers" -o "$reply" "http://$GATEWAY/shop.inventory.v1.InventoryService/ListProducts" ||
    die "ListProducts over gRPC-Web failed"
read -r status messages <<<"$(grpc_web "$headers" "$reply")"
[[ "$status" == 0 && "$messages" == 1 ]] ||
    die "ListProducts over gRPC-Web: grpc-status $status with $messages messages, expected 0 with 1"
echo "    grpc-status 0, $(wc -c <"$reply") bytes"

echo "==> CreateUser"
"$GRPCURL" -plaintext \
    -d "{\"request_id\": \"$run_id\", \"email\": \"$run_id@example.com\", \"display_name\": \"Smoke\", \"password\": \"$run_id\"}" \
    "$GATEWAY" shop.users.v1.UsersService/CreateUser >"$reply" || die "CreateUser failed"
user_id="$(field "$reply" user user_id)"
echo "    user $user_id"

# Everything but browsing, sign-up and sign-in needs a signed-in shopper: sign in first, then
# send the access token with every call.
echo "==> SignIn"
"$GRPCURL" -plaintext \
    -d "{\"email\": \"$run_id@example.com\", \"password\": \"$run_id\"}" \
    "$GATEWAY" shop.users.v1.UsersService/SignIn >"$reply" || die "SignIn failed"
token="$(field "$reply" session access_token)"

echo "==> PlaceOrder"
order="{\"idempotency_key\": \"$run_id\", \"user_id\": \"$user_id\", \
\"items\": [{\"sku\": \"MUG-01\", \"quantity\": 1}], \"payment_token\": \"tok_visa\"}"
# A dependency still starting answers UNAVAILABLE (ORDER_PENDING); the same key is safe to retry.
for attempt in 1 2 3 4 5; do
    if "$GRPCURL" -plaintext -max-time 15 -H "authorization: Bearer $token" -d "$order" \
        "$GATEWAY" shop.orders.v1.OrdersService/PlaceOrder >"$reply"; then
        break
    fi
    [ "$attempt" -lt 5 ] || die "PlaceOrder failed $attempt times"
    sleep 2
done
status="$(field "$reply" order status)"
echo "    order $(field "$reply" order order_id): $status"
[ "$status" = "ORDER_STATUS_CONFIRMED" ] || die "expected ORDER_STATUS_CONFIRMED, got $status"
echo "kind-smoke: OK, the API listed, the storefront served, gRPC-Web answered, and a checkout by a signed-in shopper was confirmed"
