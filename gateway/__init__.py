"""upload-gateway: a streaming multipart/form-data to S3 gateway.

Importing the package (or any of its domain modules) does not import Flask: only the app
factory (``gateway.app``) and the HTTP edge (``gateway.http.api``, ``auth``, ``weblog``) do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(*args: Any, **kwargs: Any) -> Flask:
    """``gateway.app.create_app``, imported on first use."""
    from gateway.app import create_app as factory

    return factory(*args, **kwargs)
