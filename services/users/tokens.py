"""What a session is made of: a signed access token and an opaque refresh token.

The access token is a JWT (PyJWT) signed with ES256 by the current key of
services.users.keys, its `kid` in the header. ES256 because every verifier a shopper's token
meets can check it (Envoy's jwt_authn, Istio, any JWT library, a browser's WebCrypto), with
64-byte signatures and keys far smaller than RSA's. Claims: `iss` ISSUER, `aud` AUDIENCE,
`sub` the user id, `iat`, `exp` (ACCESS_TOKEN_LIFETIME later) and a unique `jti`. It is short
lived because nothing revokes it: it is checked by signature alone.

The refresh token is 32 random bytes (base64url), stored only as its SHA-256: a random 256-bit
secret needs no slow hash, as there is nothing to guess from it. It works once.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "users.shop.example"
AUDIENCE = "shop.example"
ALGORITHM = "ES256"
ACCESS_TOKEN_LIFETIME = timedelta(minutes=15)
REFRESH_TOKEN_LIFETIME = timedelta(days=30)


@dataclass(frozen=True)
class Session:
    """A signed-in customer's credentials, as SignIn and RenewToken return them."""

    user_id: str
    access_token: str
    access_token_expire_time: datetime
    refresh_token: str
    refresh_token_expire_time: datetime


def sign_access_token(
    key: ec.EllipticCurvePrivateKey, kid: str, user_id: str, now: datetime
) -> tuple[str, datetime]:
    """A JWT for `user_id` signed by `key`, and when it expires (whole seconds, as `exp`)."""
    expires = int((now + ACCESS_TOKEN_LIFETIME).timestamp())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "iat": int(now.timestamp()),
        "exp": expires,
        "jti": uuid.uuid4().hex,
    }
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": kid})
    return token, datetime.fromtimestamp(expires, UTC)


def new_refresh_token() -> str:
    """A fresh, unguessable refresh token."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """What is stored of a refresh token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()
