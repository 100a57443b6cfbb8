"""Who a call is made for: the signed-in shopper, as the mesh passes it on.

The edge gateway verifies the shopper's access token (Envoy's jwt_authn) and sets CALLER_HEADER
to the token's subject, a user id, after removing any such header a caller sent from outside.
Inbound sidecars accept the header only from the identities allowed to set it (the gateway,
and orders, which calls on the shopper's behalf and passes it on). The apps read it here, once,
and hand the domain a plain user id.
"""

from __future__ import annotations

CALLER_HEADER = "x-shop-user"
"""Request metadata naming the signed-in user a call is made for (the access token's `sub`)."""
