"""Double-submit CSRF tokens for cookie sessions, bound to the session's JWT. No Flask in here.

A session's token is HMAC-SHA256(key, its JWT), base64url. A page learns it only from the
gateway (the session answer, the server-rendered page, the readable CSRF cookie of its own
origin); a form on another site can read none of those, nor the HttpOnly JWT cookie. Bound to
the JWT, one session's token is worthless with another, and any valid JWT can be a session
(also one an identity provider signed, which carries no ``csrf`` claim of flask-jwt-extended's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from gateway.config import Settings

HEADER = "X-CSRF-TOKEN"
FORM_FIELD = "csrf_token"
# A plain form must send its csrf_token before any file part, and within this many body bytes:
# nothing is stored, reserved or sent to S3 before it has been checked.
FORM_WINDOW_BYTES = 16 * 1024


def key_of(settings: Settings) -> bytes:
    """GATEWAY_CSRF_SECRET, or else a key derived from the JWT verification key."""
    if settings.csrf_secret:
        return settings.csrf_secret.encode()
    material = settings.jwt_secret or settings.jwt_public_key_pem
    return hmac.new(material.encode(), b"upload-gateway csrf", hashlib.sha256).digest()


def token_for(session_jwt: str, key: bytes) -> str:
    digest = hmac.new(key, session_jwt.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def matches(expected: str, given: str) -> bool:
    return hmac.compare_digest(expected.encode(), given.encode(errors="surrogateescape"))
