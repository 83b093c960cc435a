"""POST /api/upload: the streaming multipart/form-data route."""
from __future__ import annotations

from flask import Blueprint, jsonify, request

from .. import idempotency
from ..auth import authenticate
from ..errors import LengthRequired
from ..lingering import drain_after_response
from ..services import services
from ..uploads import UploadRequest, UploadStats
from ..weblog import note
from .present import media_json

bp = Blueprint("upload", __name__)


@bp.after_request
def linger(response):
    if response.status_code >= 400 or response.headers.get("Idempotent-Replayed"):
        drain_after_response(response, request.environ)
    return response


@bp.post("/api/upload")
def upload():
    principal = authenticate()  # before a single body byte is read
    note(user=principal.subject, tenant=principal.tenant or None)
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if request.content_length is None and not chunked:
        raise LengthRequired()
    upload_request = UploadRequest(principal=principal, content_type=request.content_type,
                                   content_length=request.content_length,
                                   query_project_id=request.args.get("projectId"))
    svc = services()
    boundary = svc.uploads.precheck(upload_request)
    stats = UploadStats()

    def run() -> tuple[int, dict]:
        try:
            records = svc.uploads.ingest(request.stream, upload_request, boundary=boundary,
                                         stats=stats)
        finally:
            note(project=stats.project_id, files=stats.files, bytes=stats.bytes_received)
        note(outcome="stored")
        files = [media_json(record) for record in records]
        body = {"success": True, **(files[0] if len(files) == 1 else {}), "files": files}
        return 201, body

    key = request.headers.get("Idempotency-Key")
    if key is None:
        status, body = run()
        return jsonify(body), status
    outcome = idempotency.run_once(
        svc.records, f"{principal.tenant}#{principal.subject}", idempotency.check_key(key),
        ttl=svc.settings.idempotency_ttl, lock_timeout=svc.settings.idempotency_lock_timeout,
        produce=run)
    response = jsonify(outcome.body)
    response.status_code = outcome.status
    if outcome.replayed:
        response.headers["Idempotent-Replayed"] = "true"
        note(outcome="replayed")
    return response
