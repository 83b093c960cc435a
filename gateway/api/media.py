"""Media records: read, list and delete, scoped to what the token may see."""
from __future__ import annotations

from flask import Blueprint, jsonify, request, send_file

from ..auth import authenticate
from ..errors import BadRequest, GatewayError, NotFound, RecordNotFound
from ..naming import check_project_id, media_id_of_key
from ..records import MediaRecord
from ..services import services
from ..storage.local import TEMP_PREFIX, LocalObjectStore
from .present import media_json

bp = Blueprint("media", __name__)


def _visible_record(media_id: str) -> MediaRecord:
    principal = authenticate()
    record = services().records.get(media_id)
    if record.status != "stored" or not principal.may_see(record.tenant, record.project_id):
        raise RecordNotFound()  # not 403: do not reveal that it exists
    return record


@bp.get("/api/media/<media_id>")
def get_media(media_id: str):
    return jsonify(success=True, **media_json(_visible_record(media_id)))


@bp.delete("/api/media/<media_id>")
def delete_media(media_id: str):
    record = _visible_record(media_id)
    svc = services()
    # Record first: once it is gone the media is gone for every reader. An object left behind
    # has no record, which the sweeper deletes; the journal makes that quick.
    svc.records.delete(record.media_id)
    try:
        svc.store.delete(record.s3_key)
    except GatewayError:
        svc.journal.add(record.s3_key, "media delete: object delete failed")
    return "", 204


@bp.get("/api/media")
def list_media():
    principal = authenticate()
    project_id = request.args.get("projectId")
    if not project_id:
        raise BadRequest("projectId is required.", code="missing_project_id")
    principal.check_project(check_project_id(project_id))
    try:
        limit = int(request.args.get("limit", 20))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise BadRequest("limit must be between 1 and 100.", code="invalid_limit")
    page = services().records.list(tenant=principal.tenant, project_id=project_id,
                                   cursor=request.args.get("cursor") or None, limit=limit)
    return jsonify(success=True, items=[media_json(r) for r in page.items],
                   nextCursor=page.next_cursor)


@bp.get("/media/<path:key>")
def serve_local(key: str):
    """Embedded mode only: stored files at the URL the upload returned (nginx may serve these)."""
    store = services().store
    if not isinstance(store, LocalObjectStore) or TEMP_PREFIX in key or not media_id_of_key(key):
        raise NotFound()  # only the gateway's own keys, never other files under the root
    try:
        path = store.path_of(key)
    except ValueError:
        raise NotFound() from None
    if not path.is_file():
        raise NotFound()
    response = send_file(path, conditional=True, max_age=3600)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
