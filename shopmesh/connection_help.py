"""What `shopmesh up` prints once the mesh is up: how to reach its gateway (grpcurl, curl, the
storefront, the Node client) and the mesh's own commands. The kind scripts print the gateway's
part too (scripts/kind-up.sh), held to the same lines by tests/k8s/test_kind_scripts.py."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from shopmesh import options
from shopmesh.gatewayclient import GatewayTarget
from shopmesh.terminal import tool


def connection_help(target: GatewayTarget, state_dir: Path) -> str:
    """What `up` prints after the mesh started: the gateway's commands (gateway_help) and the
    mesh's own (status, logs, faults, traces) for the mesh in `state_dir`."""
    s = tool("shopmesh")
    state = (
        ""
        if state_dir == options.DEFAULT_STATE_DIR
        else f" --state-dir {shlex.quote(str(state_dir))}"
    )
    return "\n".join(
        [
            "",
            *gateway_help(target),
            "",
            "The mesh:",
            f"  {s} status{state}",
            f"  {s} logs orders-0 -f{state}",
            f"  {s} fault payments --abort-percent 30 --status UNAVAILABLE{state}",
            f"  {s} fault payments --clear{state}",
            f"  {s} down{state}",
            "",
            "Watch it:",
            f"  {s} load{state}",
            f"  {s} tap payments{state}",
            f"  {s} traces{state}",
            f"  {s} trace --last{state}",
            f"  {s} dashboard{state}   (prints the dashboard's link again)",
        ]
    )


def gateway_help(target: GatewayTarget) -> list[str]:
    """Ready-to-paste grpcurl, curl and Node client commands for the gateway at `target`, and
    the storefront's address: with TLS they trust the mesh's CA (grpcurl -cacert, curl
    --cacert, https URLs), and the Node client, which speaks plaintext only, is left out.
    scripts/kind-up.sh prints the same lines for the kind cluster's gateway (tested)."""
    gateway = target.address
    if target.ca is None:
        grpcurl_tls, curl_tls, browser_note = "-plaintext", "", ""
    else:
        ca = shlex.quote(str(target.ca))
        grpcurl_tls, curl_tls = f"-cacert {ca}", f" --cacert {ca}"
        browser_note = f"   (once the browser trusts {ca})"
    g = f"{tool('grpcurl')} {grpcurl_tls}"
    credentials = {"email": "ada@example.com", "password": "correct horse battery"}
    user = json.dumps({"request_id": "ada-1", **credentials, "display_name": "Ada"})
    order = json.dumps(
        {
            "idempotency_key": "order-1",
            "items": [{"sku": "MUG-01", "quantity": 2}],
            "payment_token": "tok_visa",
        }
    )
    # The access token out of SignIn's answer, with the Python every machine here has.
    token = 'python3 -c \'import json,sys; print(json.load(sys.stdin)["session"]["access_token"])\''
    url = target.url
    json_post = f"curl -s{curl_tls} -X POST -H 'content-type: application/json'"
    lines = [
        "gRPC with server reflection (no proto files):",
        f"  {g} {gateway} list",
        f"  {g} {gateway} describe shop.orders.v1.OrdersService",
        f"  {g} -d {shlex.quote(user)} \\\n      {gateway} shop.users.v1.UsersService/CreateUser",
        "Sign in; every call but browsing, sign-up and sign-in sends the access token:",
        f"  TOKEN=$({g} -d {shlex.quote(json.dumps(credentials))} \\\n"
        f"      {gateway} shop.users.v1.UsersService/SignIn | {token})",
        f'  {g} -H "authorization: Bearer $TOKEN" \\\n'
        f"      -d {shlex.quote(order)} \\\n"
        f"      {gateway} shop.orders.v1.OrdersService/PlaceOrder",
        "",
        "JSON over HTTP/1.1 (gRPC-JSON transcoding):",
        f"  {json_post} -d '{{\"page_size\": 3}}' \\\n"
        f"      {url}/shop.inventory.v1.InventoryService/ListProducts",
        f"  {json_post} -H \"authorization: Bearer $TOKEN\" -d '{{}}' \\\n"
        f"      {url}/shop.orders.v1.OrdersService/ListOrders",
        "",
        "The storefront (gRPC-Web), in a browser:",
        f"  {url}/{browser_note}",
    ]
    if target.ca is None:
        lines += [
            "",
            "The Node client (TypeScript on the same contracts, clients/node/README.md):",
            f"  {tool('node')} clients/node/shop.ts {gateway}",
        ]
    return lines
