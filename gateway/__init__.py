"""upload-gateway: a streaming multipart/form-data to S3 gateway."""
from __future__ import annotations

import secrets
from typing import Any, Mapping

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auth, weblog
from .config import Settings
from .services import Services


def create_app(config: Settings | Mapping[str, Any] | None = None,
               services: Services | None = None) -> Flask:
    """Build the app. ``config``: a Settings, or overrides on top of the environment."""
    if isinstance(config, Settings):
        settings = config
    else:
        settings = Settings.from_env(**dict(config or {}))
    app = Flask(__name__)
    app.config["SECRET_KEY"] = secrets.token_hex(32)  # sessions are unused; never the JWT key
    app.config["GATEWAY"] = settings
    app.json.sort_keys = False

    auth.init_app(app, settings)
    app.extensions["gateway"] = services or Services.from_settings(settings)
    weblog.init_app(app, settings)

    from .api import direct, health, media, upload

    app.register_blueprint(health.bp)
    app.register_blueprint(upload.bp)
    app.register_blueprint(direct.bp)
    app.register_blueprint(media.bp)
    from .cli import register

    register(app)
    if settings.trusted_proxies:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops,
                                x_port=hops, x_prefix=hops)
    return app
