"""JWT authentication: the Authorization header only, exactly one algorithm, ``exp`` required.

``authenticate()`` turns the request's bearer token into a ``Principal`` or raises an
``Unauthorized`` error; it never touches the request body.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import jwt
from flask import Flask
from flask_jwt_extended import JWTManager, create_access_token, get_jwt, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException, NoAuthorizationError

from . import errors
from .config import Settings
from .principal import Principal

jwt_manager = JWTManager()


def init_app(app: Flask, settings: Settings) -> None:
    algorithm = settings.effective_jwt_algorithm
    app.config.update(
        JWT_TOKEN_LOCATION=["headers"],
        JWT_HEADER_NAME="Authorization",
        JWT_HEADER_TYPE="Bearer",
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


_REASONS = {
    "InvalidAudienceError": "The token's audience is not accepted.",
    "InvalidIssuerError": "The token's issuer is not accepted.",
    "ImmatureSignatureError": "The token is not valid yet.",
    "InvalidAlgorithmError": "The token's algorithm is not accepted.",
    "InvalidSignatureError": "The token's signature is not valid.",
    "DecodeError": "The token cannot be decoded.",
}


def authenticate() -> Principal:
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
    return Principal.from_claims(claims)


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
