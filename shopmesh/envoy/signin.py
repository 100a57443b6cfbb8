"""Who is calling, at the edge: the gateway verifies each shopper's access token and passes the
shopper on to the services as the caller (CALLER_HEADER).

- `caller_removal_filter` runs first on every request from outside: whatever CALLER_HEADER a
  caller sent is removed, so only what the gateway verified ever reaches a service. (Envoy
  1.40's jwt_authn also removes the headers its claim_to_headers names from every request; the
  explicit filter keeps that true whatever becomes of the jwt_authn configuration.)
- `jwt_filter` (Envoy's jwt_authn) checks the `authorization: Bearer <token>` of every route
  that needs a signed-in caller: an ES256 signature by a key in the issuer's JWKS (`alg: none`
  and keys outside the JWKS fail), the issuer, the audience and the expiry; then it sets
  CALLER_HEADER to the token's `sub` and removes the token itself (services never see it).
  Its rules name the paths of the methods that need one; public methods need none.
- Inbound sidecars accept CALLER_HEADER only from the gateway and `sign_in.passed_on_by`
  (`caller_permission`, in the RBAC of shopmesh.envoy.sidecar).

Envoy reads the JWKS file when it loads its configuration: a key rotation publishes the new
key, restarts the gateway, and only then signs with it (`shopmesh keys rotate`), and the JWKS
keeps the previous key, so tokens signed before the rotation stay valid until they expire.
"""

from __future__ import annotations

from google.rpc import code_pb2

from services.common.caller import CALLER_HEADER
from services.users.tokens import ACCESS_TOKEN_LIFETIME, AUDIENCE, ISSUER
from shopmesh.envoy.builders import Json, duration, typed
from shopmesh.envoy.replies import Refusal
from shopmesh.layout import Layout
from shopmesh.topology import GATEWAY, Topology

JWT_AUTHN = "envoy.filters.http.jwt_authn"
REFUSED_TOKEN = "jwt_authn_access_denied"
"""What Envoy's response code details of a refused token start with (then `{Jwt_is_missing}`,
`{Jwt_is_expired}`, `{Jwt_verification_fails}`, ...)."""
AUTHORIZATION = "authorization"
BEARER = "Bearer "


def bearer_metadata(access_token: str) -> tuple[tuple[str, str]]:
    """The request metadata of a call made as the shopper `access_token` signs in."""
    return ((AUTHORIZATION, f"{BEARER}{access_token}"),)


def sign_in_paths(topology: Topology) -> set[str]:
    """The gRPC paths of the exposed methods that need a signed-in caller."""
    sign_in = topology.gateway.sign_in
    return {
        f"/{topology.services[service].grpc_service}/{method}"
        for service, methods in topology.gateway.exposes.items()
        for method in methods
        if not sign_in.is_public(service, method)
    }


def caller_removal_filter() -> Json:
    return {
        "name": "envoy.filters.http.header_mutation.caller",
        "typed_config": typed(
            "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            mutations={"request_mutations": [{"remove": CALLER_HEADER}]},
        ),
    }


def jwt_filter(topology: Topology, layout: Layout) -> Json:
    issuer = topology.gateway.sign_in.issuer
    provider = {
        "issuer": ISSUER,
        "audiences": [AUDIENCE],
        "local_jwks": {"filename": str(layout.jwks())},
        "from_headers": [{"name": AUTHORIZATION, "value_prefix": BEARER}],
        "forward": False,
        "require_expiration": True,
        # The longest an access token may live, whatever its claims say.
        "max_lifetime": duration(ACCESS_TOKEN_LIFETIME),
        "claim_to_headers": [{"header_name": CALLER_HEADER, "claim_name": "sub"}],
    }
    return {
        "name": JWT_AUTHN,
        "typed_config": typed(
            "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            providers={issuer: provider},
            # By path, not per route: a JSON call is matched to its route only once the
            # transcoder (after this filter) has made it gRPC, and a path no rule names (a
            # public method, reflection, health, or one no route serves) needs no token.
            rules=[
                {"match": {"path": path}, "requires": {"provider_name": issuer}}
                for path in sorted(sign_in_paths(topology))
            ],
        ),
    }


def token_refusals() -> list[Refusal]:
    """The refusals of a call that needs a signed-in caller and has no valid token."""
    how = "sign in (users.SignIn) and send `authorization: Bearer <access_token>`"
    return [
        Refusal(
            "TOKEN_MISSING",
            code_pb2.UNAUTHENTICATED,
            401,
            f"this method needs a signed-in caller: {how}",
        ),
        Refusal(
            "TOKEN_EXPIRED",
            code_pb2.UNAUTHENTICATED,
            401,
            f"the access token has expired: renew it (users.RenewToken) or {how}",
        ),
        Refusal(
            "TOKEN_INVALID",
            code_pb2.UNAUTHENTICATED,
            401,
            f"the access token is not valid here: {how}",
        ),
    ]


def caller_permission(topology: Topology, caller: str, permission: Json) -> Json:
    """`permission` for `caller` at an inbound sidecar: as it is for the gateway and the
    services that pass a shopper on; for any other caller, only without CALLER_HEADER."""
    if caller in topology.gateway.sign_in.passed_on_by or caller == GATEWAY:
        return permission
    names_no_caller = {"not_rule": {"header": {"name": CALLER_HEADER, "present_match": True}}}
    return {"and_rules": {"rules": [permission, names_no_caller]}}
