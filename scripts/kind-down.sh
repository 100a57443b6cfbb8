#!/usr/bin/env bash
# Delete the kind cluster of scripts/kind-up.sh, with the CA and certificates it issued for it.
# Usage: scripts/kind-down.sh   (make kind-down)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/kind-lib.sh
source scripts/kind-lib.sh

require_kind
if cluster_exists; then
    kind delete cluster --name "$CLUSTER"
else
    echo "no kind cluster named '$CLUSTER'"
fi
rm -rf "$STATE_DIR"
