"""API tokens: ``bkt_<id>_<secret>``, stored as the SHA-256 of the secret.

Why not Argon2 as for passwords: a slow hash protects *low-entropy* secrets (human passwords)
against offline guessing after the database file leaks. A token's secret is 32 random bytes
(256 bits) from ``secrets``: nobody can enumerate that space, however fast the hash, so a fast
hash loses nothing. It gains a lot: checking a token costs microseconds on the event loop instead
of tens of milliseconds in a thread, so a fleet of producers reconnecting at once costs nothing.

The ``id`` in the token lets the server find the one row to compare with; the comparison of the
digests is constant-time (``hmac.compare_digest``), and an unknown id is compared against a dummy
digest, so a wrong token costs the same whatever part of it is wrong.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

__all__ = [
    "MAX_TOKEN_LENGTH",
    "TOKEN_PREFIX",
    "TOKEN_SECRET_BYTES",
    "hash_token_secret",
    "new_token_secret",
    "parse_token",
    "token_string",
    "verify_token_secret",
]

TOKEN_PREFIX = "bkt"
#: Random bytes in a token's secret: 256 bits, beyond any guessing.
TOKEN_SECRET_BYTES = 32
#: Longer strings cannot be tokens; they are refused before any work.
MAX_TOKEN_LENGTH = 128

_DUMMY_DIGEST = hashlib.sha256(b"bucketly-no-such-token").digest()


def new_token_secret() -> str:
    """A new secret: 43 URL-safe characters."""
    return secrets.token_urlsafe(TOKEN_SECRET_BYTES)


def token_string(token_id: int, secret: str) -> str:
    return f"{TOKEN_PREFIX}_{token_id}_{secret}"


def hash_token_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def parse_token(token: str) -> tuple[int, str] | None:
    """``(id, secret)`` of a well-formed token, else ``None``."""
    if len(token) > MAX_TOKEN_LENGTH:
        return None
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1].isascii():
        return None
    if not parts[1].isdigit() or len(parts[1]) > 18:
        return None
    return int(parts[1]), parts[2]


def verify_token_secret(digest: bytes | None, secret: str) -> bool:
    """True if ``secret`` hashes to ``digest``; with ``digest`` None, the same work, False."""
    candidate = hash_token_secret(secret)
    return hmac.compare_digest(candidate, digest or _DUMMY_DIGEST) and digest is not None
