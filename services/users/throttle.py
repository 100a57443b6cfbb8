"""How SignIn slows down guessing: failure counts per account and per source address, and the
backoff they impose; and how CreateUser slows down testing emails (refused sign-ups per source
address, under the same rule). Pure rules here; the counts live in the users database
(store.py).

Every attempt counts as a failure from the moment it starts (checked and counted in one
transaction), and a success takes it back: a burst of parallel guesses gets no more
attempts than a sequence would. The first `free_failures` failures of a key cost nothing;
from then on the next attempt waits `base_delay` after the last failure, and each further
failure doubles that wait (at most `max_delay`). A throttled attempt is refused without
checking the password and is not counted, so waiting out the delay is all it takes. Counts
are forgotten `forget_after` the last failure; a successful sign-in clears its account's
count and takes its own attempt off the address's.

Accounts are keyed by the normalised email whether or not it has an account, so throttling
tells nothing about existence either. Addresses are keyed by IP, IPv6 by its /64 (what one
subscriber usually gets). A caller without an address (a local Unix socket with no
address header) is throttled per account only: keyed together, every such caller would
share one budget that any of them could exhaust for the rest.

Why the database and not memory: the counts survive a restart (an attacker cannot reset them
by crashing or waiting for a deploy) and every replica on the same file sees the same counts;
the price is two small writes per attempt, next to a ~0.1 s password hash.

Sign-up: CreateUser's EMAIL_TAKEN tells that an email has an account (an accepted trade-off:
users.proto says why), so refused sign-ups count per source address ("sign-up:<ip>") with the
same backoff, and a created account (or a retried request) takes its attempt back: whoever
tries many emails that have accounts soon waits, a shop full of new customers behind one
address does not. Without an address, sign-ups are not throttled.

Why throttling can lock out the account's owner: someone who knows an email can keep its
sign-ins waiting. The cap (`max_delay`) bounds that, and the per-address count limits what
one source can do to many accounts.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class ThrottlePolicy:
    """The backoff rule for one kind of key (see module docstring)."""

    free_failures: int
    base_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(minutes=15)
    forget_after: timedelta = timedelta(hours=1)

    def wait(self, failures: int, last_failure: datetime, now: datetime) -> timedelta:
        """How long an attempt at `now` must still wait; zero (or less) means go ahead."""
        if failures < self.free_failures or now - last_failure >= self.forget_after:
            return timedelta(0)
        doublings = min(failures - self.free_failures, 30)
        delay = min(self.base_delay * (1 << doublings), self.max_delay)
        return last_failure + delay - now


@dataclass(frozen=True)
class SignInLimits:
    """The policies SignIn applies, one per account and one per source address, and the one
    CreateUser applies per source address (`sign_up`)."""

    account: ThrottlePolicy = ThrottlePolicy(free_failures=5)
    # Higher: one address may be a whole office behind NAT.
    address: ThrottlePolicy = ThrottlePolicy(free_failures=20)
    sign_up: ThrottlePolicy = ThrottlePolicy(free_failures=20)


DEFAULT_LIMITS = SignInLimits()


@dataclass(frozen=True)
class ThrottleKey:
    """One count to check and bump: `key` is "account:<email>", "address:<ip>" or
    "sign-up:<ip>". `clear_on_success`: a successful attempt clears the count (the account's)
    instead of only taking its own attempt back (the addresses': one shopper signing in must
    not wipe out another caller's failures from the same address)."""

    key: str
    policy: ThrottlePolicy
    clear_on_success: bool


def throttle_keys(limits: SignInLimits, email: str, address: str | None) -> list[ThrottleKey]:
    """The counts a sign-in attempt for `email` from `address` is checked against."""
    keys = [ThrottleKey(f"account:{email}", limits.account, clear_on_success=True)]
    if address:
        keys.append(ThrottleKey(f"address:{address}", limits.address, clear_on_success=False))
    return keys


def sign_up_keys(limits: SignInLimits, address: str | None) -> list[ThrottleKey]:
    """The counts a sign-up from `address` is checked against (none without an address)."""
    if not address:
        return []
    return [ThrottleKey(f"sign-up:{address}", limits.sign_up, clear_on_success=False)]


class AttemptStore(Protocol):
    """Where the counts live (implemented by services.users.store)."""

    async def begin_attempt(self, keys: Sequence[ThrottleKey], now: datetime) -> timedelta:
        """Atomically: the longest wait any of `keys` imposes at `now`; if there is none,
        count one failure on each. `keys` is not empty."""
        ...

    async def attempt_succeeded(self, keys: Sequence[ThrottleKey]) -> None:
        """Take back the failure `begin_attempt` counted (and clear the keys that say so)."""
        ...


def address_key(address: str) -> str | None:
    """The part of an IP address that is throttled (IPv6: its /64); None if not an IP."""
    try:
        ip = ipaddress.ip_address(address.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
