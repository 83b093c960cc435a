"""JWT authentication: the Authorization header only, exactly one algorithm, ``exp`` required.

``authenticate()`` turns the request's bearer token into a ``Principal`` or raises
``Unauthorized``; it never touches the request body.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import jwt
from flask import Flask
from flask_jwt_extended import JWTManager, create_access_token, get_jwt, verify_jwt_in_request
from flask_jwt_extended.exceptions import JWTExtendedException

from .config import Settings
from .errors import Forbidden, Unauthorized
from .naming import PROJECT_ID_RE  # tenants follow the same rule: they become key segments

jwt_manager = JWTManager()


@dataclass(frozen=True)
class Principal:
    subject: str
    tenant: str  # "" when the token names none
    projects: frozenset[str] | None  # None: any project

    def check_project(self, project_id: str) -> None:
        if self.projects is not None and project_id not in self.projects:
            raise Forbidden(f"The token does not allow project {project_id!r}.",
                            code="project_forbidden")

    def may_see(self, tenant: str, project_id: str) -> bool:
        return tenant == self.tenant and (self.projects is None or project_id in self.projects)


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


def authenticate() -> Principal:
    try:
        verify_jwt_in_request()
        claims = get_jwt()
    except jwt.ExpiredSignatureError:
        raise Unauthorized("The token has expired.", code="token_expired") from None
    except (JWTExtendedException, jwt.PyJWTError) as exc:
        code = "missing_token" if type(exc).__name__ == "NoAuthorizationError" else "invalid_token"
        raise Unauthorized(_describe(exc), code=code) from None
    if "exp" not in claims:
        raise Unauthorized("The token must carry an expiry (exp).", code="invalid_token")
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("The token has no subject (sub).", code="invalid_token")
    tenant = claims.get("tenant") or ""
    if tenant and (not isinstance(tenant, str) or not PROJECT_ID_RE.match(tenant)):
        raise Unauthorized("The token's tenant claim is not valid.", code="invalid_token")
    projects = claims.get("projects")
    if projects is not None:
        if not isinstance(projects, list) or not all(isinstance(p, str) for p in projects):
            raise Unauthorized("The token's projects claim must be a list of strings.",
                               code="invalid_token")
        projects = frozenset(projects)
    return Principal(subject=subject, tenant=tenant, projects=projects)


_REASONS = {
    "NoAuthorizationError": "A bearer token is required in the Authorization header.",
    "InvalidAudienceError": "The token's audience is not accepted.",
    "InvalidIssuerError": "The token's issuer is not accepted.",
    "ImmatureSignatureError": "The token is not valid yet.",
    "InvalidAlgorithmError": "The token's algorithm is not accepted.",
    "InvalidSignatureError": "The token's signature is not valid.",
    "DecodeError": "The token cannot be decoded.",
}


def _describe(exc: Exception) -> str:
    return _REASONS.get(type(exc).__name__, "The token is not valid.")


def mint_token(subject: str, *, tenant: str = "", projects: list[str] | None = None,
               ttl: timedelta = timedelta(hours=1)) -> str:
    """A signed token for local use (needs an app context; RS256 needs the private key)."""
    claims: dict = {}
    if tenant:
        claims["tenant"] = tenant
    if projects is not None:
        claims["projects"] = projects
    return create_access_token(identity=subject, additional_claims=claims, expires_delta=ttl)
