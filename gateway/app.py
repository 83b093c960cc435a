"""The Flask application: the factory that wires settings, auth, services and blueprints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask, request
from flask.sessions import SessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from gateway import errors
from gateway.config import Settings
from gateway.http import auth, cors, weblog
from gateway.services import Services


def create_app(
    config: Settings | Mapping[str, Any] | None = None, services: Services | None = None
) -> Flask:
    """Build the app. ``config``: a Settings, or overrides on top of the environment."""
    settings = config if isinstance(config, Settings) else Settings.from_env(**dict(config or {}))
    app = Flask(__name__)
    app.session_interface = NoSessions()
    app.config["GATEWAY"] = settings
    app.json.sort_keys = False  # type: ignore[attr-defined]

    auth.init_app(app, settings)
    svc = services or Services.from_settings(settings)
    app.extensions["gateway"] = svc
    weblog.init_app(app, settings)
    cors.init_app(app, settings)

    from gateway.http.api import (
        direct,
        health,
        media,
        openapi,
        pages,
        s3_events,
        session,
        stats,
        tickets,
        tus,
        upload,
    )

    app.register_blueprint(health.bp)
    app.register_blueprint(upload.bp)
    app.register_blueprint(direct.bp)
    app.register_blueprint(media.bp)
    app.register_blueprint(tus.bp)
    app.register_blueprint(stats.bp)
    app.register_blueprint(session.bp)
    app.register_blueprint(tickets.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(s3_events.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(openapi.docs_blueprint())
    if svc.storage.local is not None:
        app.register_blueprint(media.local_bp)
    if settings.metrics_port is not None:
        app.register_blueprint(health.metrics_bp)
        _serve_metrics_on_their_listener_only(app, settings.metrics_port)
    from gateway.cli import register

    register(app)
    if settings.trusted_proxies:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    return app


class NoSessions(SessionInterface):
    """Flask's cookie session is unused (the browser session is the JWT cookie,
    gateway/http/auth.py):
    without this, every request built a signing serializer and looked for its cookie (about 4% of
    a 1 MiB upload's CPU). There is no SECRET_KEY either, so nothing can be signed with one."""

    def open_session(self, app: Flask, request: Any) -> None:
        return None  # Flask then uses its null session, which refuses writes


def _serve_metrics_on_their_listener_only(app: Flask, port: int) -> None:
    """/metrics answers only on the metrics listener, and nothing else does (404 both ways).
    The listener is the connection's local port: unlike SERVER_PORT or Host, not client-chosen."""

    @app.before_request
    def by_listener() -> None:
        sock = request.environ.get("gunicorn.socket")
        local = sock.getsockname() if sock is not None else None
        on_metrics_listener = isinstance(local, tuple) and local[1] == port
        if on_metrics_listener != (request.endpoint == "metrics.scrape"):
            raise errors.NotFound()
