"""JWT authentication: exactly one algorithm, ``exp`` required; from the Authorization header,
or from the browser session cookie together with its CSRF token (gateway/uploads/csrf.py).

``authenticate()`` turns the request's token into a ``Principal`` or raises an ``Unauthorized``
(or CSRF) error; it never touches the request body. ``authenticate_form()`` lets a plain form's
CSRF token come later, in its body: the upload checks it before the first file.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt
from cachetools import TLRUCache
from flask import Flask, current_app, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    get_jwt,
    get_jwt_request_location,
    verify_jwt_in_request,
)
from flask_jwt_extended.exceptions import JWTExtendedException, NoAuthorizationError

from gateway import errors
from gateway.config import TICKET_AUDIENCE, Settings
from gateway.media.principal import Principal
from gateway.uploads import csrf

VERIFIED_TOKENS_KEPT = 1024


class _VerifiedTokens:
    """The claims of tokens this process verified, each until its ``exp`` (plus the leeway):
    a client sends the same bearer token with every request, and verifying it (three decodes
    and an HMAC or RSA check) was about 0.1 ms of each. Keyed by the whole token, so only a
    byte-identical token is taken as verified; anything that fails is checked afresh each
    time. Per app: tests and embedders run apps with different keys in one process."""

    def __init__(self, leeway: float, clock: Callable[[], float] = time.time) -> None:
        self._claims: TLRUCache[str, dict[str, Any]] = TLRUCache(
            maxsize=VERIFIED_TOKENS_KEPT,
            # PyJWT takes a token as expired once now >= int(exp) + leeway: the same instant
            ttu=lambda _token, claims, _now: int(claims["exp"]) + leeway,
            timer=clock,
        )
        self._lock = threading.Lock()  # cachetools' caches are not thread-safe (gthread)

    def get(self, token: str) -> dict[str, Any] | None:
        with self._lock:
            claims = self._claims.get(token)
        return None if claims is None else copy.deepcopy(claims)

    def keep(self, token: str, claims: dict[str, Any]) -> None:
        if isinstance(claims.get("exp"), int | float):  # one without is refused later anyway
            with self._lock:
                self._claims[token] = copy.deepcopy(claims)


class _JWTManager(JWTManager):
    """flask-jwt-extended's manager, verifying each distinct token once (``_VerifiedTokens``),
    and never taking an upload ticket for a bearer token: flask-jwt-extended checks no audience
    unless GATEWAY_JWT_AUDIENCE is set, so a ticket signed with the JWT key would otherwise pass.
    Its decoding of every token, from any location (and the sign-in page's), goes through here."""

    def _decode_jwt_from_config(
        self, encoded_token: str, csrf_value: Any = None, allow_expired: bool = False
    ) -> dict[str, Any]:
        verified: _VerifiedTokens = current_app.extensions["gateway.verified_tokens"]
        plain = csrf_value is None and not allow_expired  # the only way the gateway decodes
        claims = verified.get(encoded_token) if plain else None
        if claims is None:
            claims = super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
            audience = claims.get("aud")
            if audience == TICKET_AUDIENCE or (
                isinstance(audience, list) and TICKET_AUDIENCE in audience
            ):
                raise jwt.InvalidAudienceError("An upload ticket is not a bearer token.")
            if plain:
                verified.keep(encoded_token, claims)
        return claims


jwt_manager = _JWTManager()


def init_app(app: Flask, settings: Settings) -> None:
    algorithm = settings.effective_jwt_algorithm
    app.config.update(
        # The header first: a request that carries both is a bearer request (no CSRF needed).
        JWT_TOKEN_LOCATION=["headers", "cookies"],
        JWT_HEADER_NAME="Authorization",
        JWT_HEADER_TYPE="Bearer",
        JWT_ACCESS_COOKIE_NAME=settings.session_cookie,
        JWT_ACCESS_COOKIE_PATH="/",
        JWT_COOKIE_SECURE=settings.session_cookie_secure,
        JWT_COOKIE_SAMESITE=settings.session_cookie_samesite,
        # CSRF is checked here (gateway/uploads/csrf.py): flask-jwt-extended's own check reads form
        # fields through request.form, which would buffer a whole upload before the check.
        JWT_COOKIE_CSRF_PROTECT=False,
        JWT_ALGORITHM=algorithm,
        JWT_DECODE_ALGORITHMS=[algorithm],
        JWT_IDENTITY_CLAIM="sub",
        JWT_DECODE_LEEWAY=settings.jwt_leeway,
        JWT_DECODE_AUDIENCE=settings.jwt_audience or None,
        JWT_ENCODE_AUDIENCE=settings.jwt_audience or None,
        JWT_DECODE_ISSUER=settings.jwt_issuer or None,
        JWT_ENCODE_ISSUER=settings.jwt_issuer or None,
        JWT_ERROR_MESSAGE_KEY="message",
    )
    if algorithm == "HS256":
        app.config["JWT_SECRET_KEY"] = settings.jwt_secret
    else:
        app.config["JWT_PUBLIC_KEY"] = settings.jwt_public_key_pem
        app.config["JWT_PRIVATE_KEY"] = settings.jwt_private_key_pem or None
        # Never let a token be checked against Flask's SECRET_KEY.
        app.config["JWT_SECRET_KEY"] = None
    jwt_manager.init_app(app)
    app.extensions["gateway.verified_tokens"] = _VerifiedTokens(settings.jwt_leeway)
    app.extensions["gateway.csrf_key"] = csrf.key_of(settings)


_REASONS = {
    "InvalidAudienceError": "The token's audience is not accepted.",
    "InvalidIssuerError": "The token's issuer is not accepted.",
    "ImmatureSignatureError": "The token is not valid yet.",
    "InvalidAlgorithmError": "The token's algorithm is not accepted.",
    "InvalidSignatureError": "The token's signature is not valid.",
    "DecodeError": "The token cannot be decoded.",
}


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate() -> Principal:
    """The caller; a cookie session's unsafe request must carry the CSRF header."""
    principal, pending = _authenticate(form_may_carry_csrf=False)
    assert pending is None
    return principal


def authenticate_form() -> tuple[Principal, str | None]:
    """The caller, and the CSRF token a cookie session's form must still send in its
    ``csrf_token`` field (None: a bearer token, or the header carried the token)."""
    return _authenticate(form_may_carry_csrf=True)


def session_csrf_token(session_jwt: str) -> str:
    """The CSRF token of the session whose cookie holds ``session_jwt``."""
    return csrf.token_for(session_jwt, current_app.extensions["gateway.csrf_key"])


def _authenticate(*, form_may_carry_csrf: bool) -> tuple[Principal, str | None]:
    claims = _verified_claims()
    principal = Principal.from_claims(claims)
    if get_jwt_request_location() != "cookies" or request.method in SAFE_METHODS:
        return principal, None
    expected = session_csrf_token(session_cookie())
    given = request.headers.get(csrf.HEADER)
    if given is not None:
        if not csrf.matches(expected, given):
            raise errors.CsrfInvalid()
        return principal, None
    if not form_may_carry_csrf:
        raise errors.CsrfMissing()
    return principal, expected


def session_cookie() -> str:
    """The raw JWT in this request's session cookie ("" when there is none)."""
    return request.cookies.get(current_app.config["JWT_ACCESS_COOKIE_NAME"], "")


def _verified_claims() -> dict[str, Any]:
    try:
        verify_jwt_in_request()
        claims = get_jwt()
    except jwt.ExpiredSignatureError:
        raise errors.TokenExpired() from None
    except NoAuthorizationError:
        raise errors.MissingToken() from None
    except (JWTExtendedException, jwt.PyJWTError) as exc:
        raise errors.InvalidToken(_REASONS.get(type(exc).__name__)) from None
    if "exp" not in claims:
        raise errors.InvalidToken("The token must carry an expiry (exp).")
    return dict(claims)


def mint_token(
    subject: str,
    *,
    tenant: str = "",
    projects: list[str] | None = None,
    admin: bool = False,
    ttl: timedelta = timedelta(hours=1),
) -> str:
    """A signed token for local use (needs an app context; RS256 needs the private key)."""
    claims: dict[str, Any] = {}
    if tenant:
        claims["tenant"] = tenant
    if projects is not None:
        claims["projects"] = projects
    if admin:
        claims["admin"] = True
    return str(create_access_token(identity=subject, additional_claims=claims, expires_delta=ttl))
