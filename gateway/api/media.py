"""Media records: read, list and delete, scoped to what the token may see."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, send_file

from .. import errors
from ..auth import authenticate
from ..events import EventType
from ..lifecycle import VISIBLE, Status
from ..naming import MEDIA_ID_RE, check_project_id
from ..principal import Principal
from ..records import MediaRecord
from . import services
from .present import media_json

bp = Blueprint("media", __name__)
local_bp = Blueprint("local_media", __name__)  # registered only for the local store
MAX_PAGE = 100


def _visible_record(principal: Principal, media_id: str) -> MediaRecord:
    if not MEDIA_ID_RE.fullmatch(media_id):
        raise errors.MediaNotFound()
    record = services().records.get(media_id)
    if record.status not in VISIBLE or not principal.may_see(record.tenant, record.project_id):
        raise errors.MediaNotFound()  # not 403: do not reveal that it exists
    return record


@bp.get("/api/media/<media_id>")
def get_media(media_id: str) -> Response:
    return jsonify(success=True, **media_json(_visible_record(authenticate(), media_id)))


@bp.delete("/api/media/<media_id>")
def delete_media(media_id: str) -> tuple[str, int]:
    principal = authenticate()
    record = _visible_record(principal, media_id)
    if not principal.may_modify(
        tenant=record.tenant, project_id=record.project_id, owner=record.owner
    ):
        raise errors.DeleteForbidden()
    svc = services()
    # Record first: once it is gone the media is gone for every reader. An object left behind
    # has no record, which the sweeper deletes; the journal makes that quick.
    svc.records.delete(record.media_id)
    try:
        svc.store.delete(record.s3_key)
    except errors.GatewayError:
        svc.journal.add(record.s3_key, "media delete: object delete failed")
    svc.announcer.announce(EventType.DELETED, [record])
    return "", 204


@bp.get("/api/media")
def list_media() -> Response:
    principal = authenticate()
    project_id = request.args.get("projectId")
    if not project_id:
        raise errors.MissingProjectId()
    principal.check_project(check_project_id(project_id))
    try:
        limit = int(request.args.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise errors.InvalidLimit()
    status = request.args.get("status")
    if status is not None and status not in {s.value for s in VISIBLE}:
        raise errors.InvalidStatusFilter(
            f"status must be one of {', '.join(sorted(s.value for s in VISIBLE))}."
        )
    page = services().records.list_media(
        tenant=principal.tenant,
        project_id=project_id,
        limit=limit,
        cursor=request.args.get("cursor") or None,
        status=Status(status) if status is not None else None,
    )
    return jsonify(
        success=True, items=[media_json(r) for r in page.items], nextCursor=page.next_cursor
    )


@local_bp.get("/media/<path:key>")
def serve_local(key: str) -> Response:
    """Embedded mode only: stored files at the URL the upload returned (nginx may serve these)."""
    local = services().storage.local
    if local is None or not local.is_servable(key):
        raise errors.NotFound()  # only the gateway's own committed keys, never other files
    response = send_file(local.path_of(key), conditional=True, max_age=3600)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
