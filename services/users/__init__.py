"""The users service: shop customer accounts with unique, normalised email addresses, and
signing in.

- domain.py: accounts (CreateUser, GetUser); a password is optional (see users.proto).
- passwords.py: Argon2id hashes off the event loop; a dummy check for unknown accounts.
- sessions.py: SignIn, RenewToken, GetJwks: what fails how, refresh-token families.
- tokens.py: the access token (ES256 JWT: issuer, audience, lifetime) and refresh tokens.
- keys.py: the signing keys, `jwks.json`, rotation (`python -m services.users.keys rotate`).
- throttle.py: the per-account and per-address backoff of SignIn, counted in the database.
- store.py: the SQLite file; servicer.py: the handlers (and the caller's source address);
  app.py: the wiring and SHOPMESH_USERS_KEYS_DIR.

Not here yet (the gateway's side of issue 13): verifying tokens at the edge (Envoy jwt_authn
reading `jwks.json`), passing the verified subject to services, ownership checks.
"""
