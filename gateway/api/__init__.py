"""The HTTP edge: thin blueprints over the Flask-free services."""

from __future__ import annotations

from typing import cast

from flask import current_app

from ..services import Services


def services() -> Services:
    return cast(Services, current_app.extensions["gateway"])
