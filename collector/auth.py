"""Bearer tokens for the collector.

A token is ``mtk_<key_id>_<secret>``: ``key_id`` (12 random hex characters) names the stored
record, ``secret`` is 32 random bytes (256 bits, URL-safe base64). The collector keeps only
``sha256(secret)``, shows the token once, and compares digests with ``hmac.compare_digest``.

Why a plain SHA-256 and not bcrypt/scrypt/argon2: those slow hashes exist to make guessing a
low-entropy *password* from its hash expensive. A 256-bit random secret cannot be guessed from
its hash at any speed, so a slow hash would only slow down every request. Why a ``key_id``:
the record is found by an indexed lookup on a value that is not secret, and the one secret
comparison is in constant time, so response timing tells an attacker nothing about the secret.

Scopes: a ``node`` token (``meter collector token create NODE``) may send events whose
``source`` is that node and may read that node's windows and usage; a ``read`` token
(``meter collector token create --read NAME``) may read everything and send nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from meterd.collector.store import CollectorStore, TokenRecord

PREFIX = "mtk_"
_TOKEN = re.compile(r"^mtk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True)
class Principal:
    """Who a request comes from."""

    scope: str  # "node" or "read"
    name: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(store: CollectorStore, name: str, *, scope: str = "node", now: float | None = None) -> str:
    """Create and store a token for a node (``scope="node"``) or a reader (``scope="read"``);
    returns the token, which is not stored and cannot be shown again."""
    if scope not in ("node", "read"):
        raise ValueError(f"scope must be 'node' or 'read', not {scope!r}")
    if not name or name != name.strip():
        raise ValueError("a token needs a name without leading or trailing blanks")
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    store.add_token(TokenRecord(key_id, scope, name, _digest(secret),
                                time.time() if now is None else now))
    return f"{PREFIX}{key_id}_{secret}"


def authenticate(store: CollectorStore, authorization: str | None) -> Principal | None:
    """The principal behind an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    m = _TOKEN.match(token.strip())
    if not m:
        return None
    record = store.get_token(m.group(1))
    if record is None:
        return None
    if not hmac.compare_digest(_digest(m.group(2)), record.secret_sha256):
        return None
    return Principal(record.scope, record.name)


# -- the web report's session cookie ---------------------------------------------------------------
#
# ``<key_id>.<expires>.<mac>``, mac = HMAC-SHA256(key = the token's stored sha256, key_id.expires).
# Nothing is kept per session: the cookie is signed with what the collector already stores of the
# read token (never the token itself), so every replica on a shared database accepts it, and
# revoking the token (``meter collector token revoke``) ends its sessions at once. The secret never
# leaves the login request; a node token cannot log in.

SESSION_COOKIE = "meterd_session"
SESSION_S = 8 * 3600
_SESSION = re.compile(r"^([0-9a-f]{12})\.([0-9]{1,12})\.([0-9a-f]{64})$")


def _session_mac(record: TokenRecord, payload: str) -> str:
    return hmac.new(record.secret_sha256.encode(), b"meterd-session\0" + payload.encode(),
                    hashlib.sha256).hexdigest()


def open_session(store: CollectorStore, token: str, *, now: float | None = None) -> tuple[Principal | None, str]:
    """A session cookie's value for a read token: (principal, value); (None, why) otherwise."""
    who = authenticate(store, f"Bearer {token.strip()}")
    if who is None:
        return None, "unknown token"
    if who.scope != "read":
        return None, f"a {who.scope} token may not read reports: use a read token (meter collector token create --read NAME)"
    key_id = _TOKEN.match(token.strip()).group(1)  # type: ignore[union-attr]
    record = store.get_token(key_id)
    assert record is not None
    payload = f"{key_id}.{int((time.time() if now is None else now) + SESSION_S)}"
    return who, f"{payload}.{_session_mac(record, payload)}"


def session_principal(store: CollectorStore, value: str | None, *, now: float | None = None) -> Principal | None:
    """The read principal behind a session cookie's value, or None (unknown, forged, expired,
    revoked, or not a read token's)."""
    m = _SESSION.match(value or "")
    if not m or int(m.group(2)) <= (time.time() if now is None else now):
        return None
    record = store.get_token(m.group(1))
    if record is None or record.scope != "read":
        return None
    if not hmac.compare_digest(_session_mac(record, f"{m.group(1)}.{m.group(2)}"), m.group(3)):
        return None
    return Principal(record.scope, record.name)
