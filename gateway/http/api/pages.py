"""Browser pages: /upload (a plain form that works without JavaScript, enhanced by the bundle
in gateway/static), its result page, sign-in and sign-out; and how a browser's form post to
/api/upload is answered: a 303 (to its ``redirect`` field or the result page), errors as a
readable page or a redirect with the error code, never a raw JSON body in the user's face.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt
from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_jwt_extended import decode_token, set_access_cookies, unset_access_cookies
from flask_jwt_extended.exceptions import JWTExtendedException

from gateway import errors
from gateway.config import origin_of
from gateway.http.api import services
from gateway.http.api.present import media_json
from gateway.http.api.spec import Described, query_param
from gateway.http.auth import authenticate, session_cookie, session_csrf_token
from gateway.http.web_bundle import bundle, service_worker
from gateway.media.lifecycle import SETTLED
from gateway.media.naming import IDENTIFIER_RE
from gateway.media.principal import Principal
from gateway.uploads import csrf
from gateway.uploads.form import UploadStats
from gateway.uploads.redirects import with_outcome

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)
MAX_RESULT_ITEMS = 100
SIGN_IN_MAX_BYTES = 16 * 1024
REFRESH_SECONDS = 3  # the result page reloads itself while processing runs (no script needed)
SERVICE_WORKER_URL = "/upload/sw.js"


def wants_html() -> bool:
    """A browser's own form post or navigation (Accept prefers text/html over JSON); scripts
    (fetch: ``*/*``), curl and API clients get JSON."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


# -- answers to a browser's form post to /api/upload -----------------------------------------------
@dataclass(frozen=True)
class BrowserAnswer:
    """How this form post is answered: ``stats.redirect`` is its checked redirect field, once
    the body has reached it (an error before that gets the page)."""

    stats: UploadStats

    @property
    def redirect(self) -> str | None:
        return self.stats.redirect

    def stored(self, body: dict[str, Any]) -> Response:
        params: list[tuple[str, str]] = []
        for item in body.get("files", []):
            params += [("mediaId", item["mediaId"]), ("status", item["status"])]
            params.append(("url", item.get("url") or ""))
        if self.redirect is not None:
            return _see_other(with_outcome(self.redirect, params))
        ids = [("mediaId", item["mediaId"]) for item in body.get("files", [])]
        return _see_other(with_outcome(url_for("pages.result"), ids))

    def failed(self, exc: errors.GatewayError) -> Response:
        g.answered_error = True  # the body may still be arriving: drain it (lingering.py)
        if self.redirect is not None:
            return _see_other(with_outcome(self.redirect, [("error", exc.code)]))
        return error_page(exc, elsewhere=self.stats.by_ticket)


def answer_browser(answer: BrowserAnswer) -> None:
    """From here on, this request's errors are rendered for a browser (weblog.render)."""
    g.render_for_browser = answer.failed


def error_page(
    exc: errors.GatewayError, *, status: int | None = None, elsewhere: bool = False
) -> Response:
    """``elsewhere``: the form is another site's (an upload ticket's): back there, not sign-in."""
    html = render_template(
        "error.html",
        error=exc,
        request_id=g.get("request_id"),
        signed_in=bool(session_cookie()),
        elsewhere=elsewhere,
    )
    return _page(html, exc.status if status is None else status)


@bp.before_request
def pages_answer_with_pages() -> None:
    g.render_for_browser = error_page


# -- pages -----------------------------------------------------------------------------------------
@bp.get("/upload")
def upload_page() -> Response:
    principal = _session_principal()
    if principal is None:
        return _page(render_template("sign_in.html", failed=request.args.get("failed")))
    settings = services().settings
    project = request.args.get("projectId", "")
    if not IDENTIFIER_RE.fullmatch(project):
        project = sorted(principal.projects)[0] if principal.projects else ""
    token = session_csrf_token(session_cookie())
    direct = services().direct is not None
    config = {
        "csrfToken": token,
        "api": "/api",
        "tusEndpoint": "/api/tus/",
        "csrfCookie": csrf_cookie_name(),
        "serviceWorker": SERVICE_WORKER_URL,
        "direct": {
            "enabled": direct,
            "minBytes": settings.page_direct_min_bytes,
            "partSize": settings.direct_part_size,
        },
    }
    script = bundle()
    html = render_template(
        "upload.html",
        csrf_field=csrf.FORM_FIELD,
        csrf_token=token,
        project=project,
        principal=principal,
        config=json.dumps(config).replace("</", "<\\/"),
        script=script.url if script.fresh else None,
        max_files=settings.max_files,
        max_bytes=settings.max_upload_bytes,
    )
    return _page(html)


@bp.get("/upload/result")
def result() -> Response:
    """What a form post stored (``?mediaId=...``), or what failed (``?error=<code>``)."""
    code = request.args.get("error")
    if code is not None:  # this page itself is fine: 200, whatever the upload's error was
        known = errors.CATALOGUE.get(code)
        if known is None:
            return error_page(errors.RequestRejected("The upload failed."), status=200)
        return error_page(known(), status=200)
    principal = authenticate()
    ids = request.args.getlist("mediaId")[:MAX_RESULT_ITEMS]
    media, settling = [], False
    for media_id in ids:
        try:
            record = services().media.visible(principal, media_id)
        except errors.MediaNotFound:
            media.append({"mediaId": media_id, "missing": True})
            continue
        media.append(media_json(record))
        settling |= record.status not in SETTLED
    script = bundle()
    html = render_template(
        "result.html",
        media=media,
        refresh=REFRESH_SECONDS if settling else 0,
        script=script.url if script.fresh else None,
    )
    return _page(html)


@bp.get(SERVICE_WORKER_URL)
def upload_service_worker() -> Response:
    """The upload page's service worker (gateway/web/src/sw.js): its app shell and the outbox's
    Background Sync. Served under /upload so its scope may be /upload; revalidated on every
    registration check, so a deploy replaces it."""
    content = service_worker() if bundle().fresh else None
    if content is None:
        raise errors.NotFound()
    response = Response(content, mimetype="text/javascript")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Service-Worker-Allowed"] = "/upload"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.post("/upload/sign-in")
def sign_in() -> Response:
    """A token pasted into the sign-in form becomes the session cookie. Only from a page of
    this origin (a cross-site form must not sign a browser into someone else's session)."""
    _same_origin_only()
    request.max_content_length = SIGN_IN_MAX_BYTES
    token = request.form.get("token", "").strip()
    expires = _expiry_of(token)
    if expires is None:
        return _see_other(url_for("pages.upload_page", failed="1"))
    response = _see_other(url_for("pages.upload_page"))
    set_session(response, token, expires)
    return response


@bp.post("/upload/sign-out")
def sign_out() -> Response:
    _same_origin_only()
    response = _see_other(url_for("pages.upload_page"))
    clear_session(response)
    return response


# -- the session cookie ----------------------------------------------------------------------------
def csrf_cookie_name() -> str:
    return str(current_app.config["JWT_ACCESS_COOKIE_NAME"]) + "_csrf"


def set_session(response: Response, token: str, expires: datetime) -> None:
    """Set the session cookie (HttpOnly) and its readable CSRF cookie, until the token expires."""
    max_age = max(1, int((expires - datetime.now(UTC)).total_seconds()))
    set_access_cookies(response, token, max_age=max_age)
    response.set_cookie(
        csrf_cookie_name(),
        session_csrf_token(token),
        max_age=max_age,
        secure=current_app.config["JWT_COOKIE_SECURE"],
        httponly=False,  # double submit: the page's script reads it
        path="/",
        samesite=current_app.config["JWT_COOKIE_SAMESITE"],
    )


def clear_session(response: Response) -> None:
    unset_access_cookies(response)
    response.delete_cookie(
        csrf_cookie_name(),
        path="/",
        secure=current_app.config["JWT_COOKIE_SECURE"],
        samesite=current_app.config["JWT_COOKIE_SAMESITE"],
    )


def _expiry_of(token: str) -> datetime | None:
    """When a valid token expires (None: not a token this gateway accepts, or no exp)."""
    if not token:
        return None
    try:
        claims = decode_token(token)
        Principal.from_claims(claims)
    except (JWTExtendedException, jwt.PyJWTError, errors.GatewayError):
        return None
    exp = claims.get("exp")
    return datetime.fromtimestamp(exp, UTC) if isinstance(exp, int | float) else None


def _session_principal() -> Principal | None:
    if not session_cookie():
        return None
    try:
        return authenticate()
    except errors.GatewayError:
        return None


def _same_origin_only() -> None:
    origin = request.headers.get("Origin")
    if origin is not None and origin_of(origin) != origin_of(request.host_url):
        raise errors.CsrfInvalid("This form may only be sent from a page of the gateway.")


def _see_other(location: str) -> Response:
    return redirect(location, code=303)  # type: ignore[return-value]


def _page(html: str, status: int = 200) -> Response:
    response = Response(html, status=status, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Content-Security-Policy"] = _content_security_policy()
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _content_security_policy() -> str:
    """Scripts and styles only from the gateway; uploads to it and, for direct uploads, S3;
    images and audio (thumbnails, players) from wherever the media's URLs point."""
    settings = services().settings
    s3 = origin_of(settings.s3_endpoint_url) if settings.s3_endpoint_url else "https:"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' https: http: data: blob:",
            "media-src 'self' https: http: blob:",
            f"connect-src 'self' {s3}",
            "form-action 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        ]
    )


def api_description() -> Described:
    html_page = {
        "description": "A page.",
        "content": {"text/html": {"schema": {"type": "string"}}},
    }
    see_other = {
        "description": "Go on to the Location.",
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
    return Described(
        paths={
            "/upload": {
                "get": {
                    "summary": "The upload page (a sign-in form without a session)",
                    "responses": {"200": html_page},
                }
            },
            "/upload/result": {
                "get": {
                    "summary": "What a browser's form post stored, or the error it was sent",
                    "parameters": [
                        query_param("mediaId", {"type": "string"}, "A stored file (repeatable)."),
                        query_param("error", {"type": "string"}, "An error code to explain."),
                    ],
                    "responses": {"200": html_page, "default": html_page},
                }
            },
            "/upload/sign-in": {
                "post": {
                    "summary": "A pasted token becomes the session (from the gateway's own pages)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {
                                    "type": "object",
                                    "properties": {"token": {"type": "string"}},
                                }
                            }
                        },
                    },
                    "responses": {"303": see_other, "default": html_page},
                }
            },
            SERVICE_WORKER_URL: {
                "get": {
                    "summary": "The upload page's service worker (app shell, Background Sync)",
                    "responses": {
                        "200": {
                            "description": "The script.",
                            "content": {"text/javascript": {"schema": {"type": "string"}}},
                        },
                        "404": {"description": "The page's script is not built."},
                    },
                }
            },
            "/upload/sign-out": {
                "post": {
                    "summary": "Clear the session (from the gateway's own pages)",
                    "responses": {"303": see_other, "default": html_page},
                }
            },
        }
    )
