"""The HTTP edge: thin blueprints over the Flask-free services."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, cast

from flask import current_app, request

from gateway import metrics
from gateway.http.bodies import BodyLimits, GuardedBody, guarded_body
from gateway.services import Services


def services() -> Services:
    return cast(Services, current_app.extensions["gateway"])


@contextmanager
def upload_body(protocol: Literal["form", "tus"]) -> Iterator[GuardedBody]:
    """This request's body for an upload route: counted in flight, read within the deadlines."""
    with (
        metrics.upload_in_flight(protocol),
        guarded_body(request.environ, request.stream, BodyLimits.of(services().settings)) as body,
    ):
        yield body
