"""CORS for the API that web apps on other origins call (GATEWAY_CORS_ORIGINS): uploads (form,
tus, direct), media, tickets and stats. One hook for all of them, after every answer (errors
too: a page must be able to read a 4xx's JSON).

- An origin that is not listed gets no Access-Control-* header at all; with a list, every answer
  varies by Origin (``Vary: Origin``) so that a cache never hands one origin's answer to another.
- ``*`` answers ``Access-Control-Allow-Origin: *``. ``Access-Control-Allow-Credentials`` is never
  sent: other origins call with a bearer token in ``Authorization``, which is a header the
  preflight allows, not a credential in CORS's sense (cookies, HTTP auth, client certificates).
  A browser therefore never sends the session cookie cross-origin on a preflighted request, and
  never lets a page read an answer to one that carried it.
- A preflight (OPTIONS with ``Access-Control-Request-Method``) is answered with the methods of
  that path (as the URL map has them), the request headers the API reads, and a max age; the
  route's own OPTIONS answer stays (tus's protocol headers, Flask's ``Allow``).
- Not for /api/session (the cookie sign-in of the gateway's own page) nor /api/s3-events (S3's
  notifications, no browser).
"""

from __future__ import annotations

from flask import Flask, Response, current_app, request

from gateway.config import Settings

BLUEPRINTS = frozenset({"upload", "tus", "direct", "media", "tickets", "stats"})
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Idempotency-Key, X-Request-ID, Tus-Resumable, Upload-Offset, "
    "Upload-Length, Upload-Defer-Length, Upload-Metadata, Upload-Concat, Upload-Checksum, "
    "X-HTTP-Method-Override"
)
EXPOSED_HEADERS = (
    "Location, Retry-After, Idempotent-Replayed, X-Request-ID, Upload-Offset, Upload-Length, "
    "Upload-Defer-Length, Upload-Metadata, Upload-Concat, Upload-Expires, Tus-Version, "
    "Tus-Resumable, Tus-Max-Size, Tus-Extension, Tus-Checksum-Algorithm"
)
MAX_AGE = "7200"  # seconds (Chromium's ceiling)


class CorsPolicy:
    """Which origins may read the API's answers: GATEWAY_CORS_ORIGINS ("*": any)."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.lower() for o in origins if o != "*")

    @property
    def enabled(self) -> bool:
        return self.any or bool(self.origins)

    def allow_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin answer for ``origin``; None: none at all."""
        if not origin:
            return None
        if self.any:
            return "*"
        return origin if origin.lower() in self.origins else None

    def apply(
        self, response: Response, *, origin: str | None, preflight_methods: list[str] | None
    ) -> None:
        """Add this policy's headers to ``response``. ``preflight_methods``: the path's methods
        when the request is a preflight, else None."""
        if not self.any:
            response.vary.add("Origin")
        allowed = self.allow_origin(origin)
        if allowed is None:
            return
        response.headers["Access-Control-Allow-Origin"] = allowed
        if preflight_methods is None:
            response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
            return
        response.headers["Access-Control-Allow-Methods"] = ", ".join(preflight_methods)
        response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = MAX_AGE


def init_app(app: Flask, settings: Settings) -> None:
    policy = CorsPolicy(settings.cors_origins)
    if not policy.enabled:
        return

    @app.after_request
    def cors_headers(response: Response) -> Response:
        if request.blueprint in BLUEPRINTS:
            policy.apply(
                response, origin=request.headers.get("Origin"), preflight_methods=_preflight()
            )
        return response


def _preflight() -> list[str] | None:
    """The methods of the requested path when this request is a CORS preflight, else None."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    adapter = current_app.create_url_adapter(request)
    assert adapter is not None  # inside a request
    methods = adapter.allowed_methods()
    order = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    return [m for m in order if m in methods]
