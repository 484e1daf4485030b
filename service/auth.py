"""API keys (stored hashed) and session tokens (128+ random bits, constant-time checks)."""

from __future__ import annotations

import hashlib
import hmac
import secrets


def hash_secret(secret: str) -> str:
    """SHA-256 hex digest of a key or token; only digests are stored."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A URL-safe session token with 256 random bits."""
    return secrets.token_urlsafe(32)


def new_id() -> str:
    """A session or job id (128 random bits, hex)."""
    return secrets.token_hex(16)


def token_matches(presented: str | None, stored_hash: str) -> bool:
    """Constant-time comparison of a presented token with a stored digest."""
    if not presented:
        return False
    return hmac.compare_digest(hash_secret(presented), stored_hash)


def parse_api_keys(raw: str | None) -> frozenset[str]:
    """Digests of the configured API keys.

    ``raw`` is a comma-separated list; an entry ``sha256:<hex>`` is taken as an existing
    digest (so a deployment never needs the plain key in its environment), any other entry
    is hashed here.
    """
    digests = set()
    for item in (raw or "").split(","):
        item = item.strip()
        if not item:
            continue
        digests.add(item[7:].lower() if item.startswith("sha256:") else hash_secret(item))
    return frozenset(digests)


def api_key_allowed(authorization: str | None, digests: frozenset[str]) -> bool:
    """True when no keys are configured or ``Authorization: Bearer <key>`` matches one."""
    if not digests:
        return True
    if not authorization or not authorization.lower().startswith("bearer "):
        return False
    presented = hash_secret(authorization[7:].strip())
    return any(hmac.compare_digest(presented, d) for d in digests)
