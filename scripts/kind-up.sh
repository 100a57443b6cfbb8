#!/usr/bin/env bash
# Create (or update) a kind cluster running the shopmesh mesh: build the service image and load
# it into the cluster, issue the mesh certificates with the local CA as Secrets, apply the kind
# overlay, wait for every rollout, and print how to reach the gateway. Run again to redeploy
# after a change, or to re-issue the certificates (they last 24 hours).
# Usage: scripts/kind-up.sh   (make kind-up)   Env: SHOPMESH_KIND_CLUSTER (default shopmesh),
# OBSERVABILITY=1 to add the trace collector and trace every call (make kind-up OBSERVABILITY=1)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/kind-lib.sh
source scripts/kind-lib.sh

require_docker
require_kind
require_kubectl
require_venv

existed=false
if cluster_exists; then
    existed=true
    echo "==> kind cluster '$CLUSTER' exists; updating it"
else
    echo "==> creating kind cluster '$CLUSTER'"
    kind create cluster --name "$CLUSTER" --config k8s/kind/cluster.yaml --wait 120s
fi

echo "==> building $IMAGE"
docker build --tag "$IMAGE" --file Dockerfile .
kind load docker-image "$IMAGE" --name "$CLUSTER"

echo "==> namespace and certificates (local CA in $STATE_DIR/pki)"
kubectl --context "$CONTEXT" apply --filename k8s/base/namespace.yaml
"$SHOPMESH" k8s issue-certs --pki-dir "$STATE_DIR/pki" --out "$STATE_DIR/tls"
for dir in "$STATE_DIR"/tls/*/; do
    identity="$(basename "$dir")"
    kubectl --context "$CONTEXT" create secret generic "tls-${identity}" \
        --namespace "$NAMESPACE" --from-file "$dir" --dry-run=client --output yaml |
        kubectl --context "$CONTEXT" apply --filename -
done

echo "==> access-token signing keys (kept in $STATE_DIR/signing-keys)"
"$SHOPMESH" k8s issue-keys --out "$STATE_DIR/signing-keys"
keys="$STATE_DIR/signing-keys"
# The JWKS first: a gateway must know a key before users signs with it.
kubectl --context "$CONTEXT" create configmap jwks --namespace "$NAMESPACE" \
    --from-file "jwks.json=$keys/jwks.json" --dry-run=client --output yaml |
    kubectl --context "$CONTEXT" apply --filename -
kubectl --context "$CONTEXT" create secret generic signing-keys --namespace "$NAMESPACE" \
    --from-file "signing-keys.json=$keys/signing-keys.json" --from-file "jwks.json=$keys/jwks.json" \
    --dry-run=client --output yaml |
    kubectl --context "$CONTEXT" apply --filename -

overlay="$KIND_OVERLAY"
if [ "$OBSERVABILITY" = 1 ]; then
    overlay="$OBSERVABILITY_OVERLAY"
fi
echo "==> applying $overlay"
kubectl --context "$CONTEXT" apply --kustomize "$overlay"
if [ "$existed" = true ]; then
    # Same image tag, new image: restart so every pod runs what was just loaded.
    kubectl --context "$CONTEXT" rollout restart deployment --namespace "$NAMESPACE"
fi

echo "==> waiting for the rollouts"
for deployment in $(kubectl --context "$CONTEXT" get deployments --namespace "$NAMESPACE" --output name); do
    kubectl --context "$CONTEXT" rollout status "$deployment" --namespace "$NAMESPACE" --timeout 300s
done

# The gateway's part of what `make up` prints (shopmesh/connection_help.py: gateway_help), for this gateway:
# tests/k8s/test_kind_scripts.py holds the two to the same lines.
cat <<EOT

The mesh runs in kind cluster '$CLUSTER', namespace '$NAMESPACE'; the gateway is at $GATEWAY.

gRPC with server reflection (no proto files):
  $GRPCURL -plaintext $GATEWAY list
  $GRPCURL -plaintext $GATEWAY describe shop.orders.v1.OrdersService
  $GRPCURL -plaintext -d '{"request_id": "ada-1", "email": "ada@example.com", "password": "correct horse battery", "display_name": "Ada"}' \\
      $GATEWAY shop.users.v1.UsersService/CreateUser
Sign in; every call but browsing, sign-up and sign-in sends the access token:
  TOKEN=\$($GRPCURL -plaintext -d '{"email": "ada@example.com", "password": "correct horse battery"}' \\
      $GATEWAY shop.users.v1.UsersService/SignIn | python3 -c 'import json,sys; print(json.load(sys.stdin)["session"]["access_token"])')
  $GRPCURL -plaintext -H "authorization: Bearer \$TOKEN" \\
      -d '{"idempotency_key": "order-1", "items": [{"sku": "MUG-01", "quantity": 2}], "payment_token": "tok_visa"}' \\
      $GATEWAY shop.orders.v1.OrdersService/PlaceOrder

JSON over HTTP/1.1 (gRPC-JSON transcoding):
  curl -s -X POST -H 'content-type: application/json' -d '{"page_size": 3}' \\
      http://$GATEWAY/shop.inventory.v1.InventoryService/ListProducts
  curl -s -X POST -H 'content-type: application/json' -H "authorization: Bearer \$TOKEN" -d '{}' \\
      http://$GATEWAY/shop.orders.v1.OrdersService/ListOrders

The storefront (gRPC-Web), in a browser:
  http://$GATEWAY/

The Node client (TypeScript on the same contracts, clients/node/README.md):
  $NODE clients/node/shop.ts $GATEWAY
  (it runs on gen/ts and node_modules: make ts first)

  make kind-smoke    # what a new user does through the gateway, ending in a checkout
  kubectl --context $CONTEXT --namespace $NAMESPACE get pods
  make kind-down     # delete the cluster
EOT
if [ "$OBSERVABILITY" = 1 ]; then
    cat <<EOT

The gateway traces a share of the calls from outside (the rate rendered into
k8s/components/observability: shopmesh k8s render --sampling); every Envoy and app of a traced
call sends its spans to the collector (Jaeger v2). Its UI:

  kubectl --context $CONTEXT --namespace $NAMESPACE port-forward service/otel-collector ${TRACES_UI##*:}
  # then open http://$TRACES_UI and pick the service "gateway"
EOT
fi
