"""GET /api/stats on every backend pair: the counters follow uploads and deletes exactly, are
scoped to the caller's tenant and project, and concurrent uploads are all counted."""

from __future__ import annotations

import threading

import pytest

from gateway import create_app
from gateway.http.auth import mint_token

from conftest import init_stores, make_settings
from support import form_body, mp4_bytes, png_bytes


def upload(client, auth, files, project="p1"):
    body, content_type = form_body([("projectId", project)], files)
    answer = client.post("/api/upload", data=body, headers={"Content-Type": content_type, **auth})
    assert answer.status_code == 201, answer.get_json()
    return answer.get_json()["files"]


def stats(client, auth, project="p1"):
    answer = client.get(f"/api/stats?projectId={project}", headers=auth)
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


def test_stats_count_what_the_project_holds_by_type_and_status(client, auth):
    assert stats(client, auth) == {
        "success": True, "projectId": "p1", "tenant": None, "files": 0, "bytes": 0,
        "byType": {}, "byStatus": {}, "counts": [],
    }  # fmt: skip
    stored = upload(client, auth, [("files", "a.png", png_bytes(30_000)),
                                   ("files", "b.png", png_bytes(20_000, seed=2)),
                                   ("files", "c.mp4", mp4_bytes(70_000))])  # fmt: skip
    upload(client, auth, [("file", "other.png", png_bytes(5_000))], project="p2")
    body = stats(client, auth)
    assert (body["files"], body["bytes"]) == (3, 120_000)
    assert body["byType"] == {"image": {"files": 2, "bytes": 50_000},
                              "video": {"files": 1, "bytes": 70_000}}  # fmt: skip
    assert body["byStatus"] == {"stored": {"files": 3, "bytes": 120_000}}
    assert body["counts"] == [
        {"fileType": "image", "status": "stored", "files": 2, "bytes": 50_000},
        {"fileType": "video", "status": "stored", "files": 1, "bytes": 70_000},
    ]
    assert client.delete(f"/api/media/{stored[0]['mediaId']}", headers=auth).status_code == 204
    body = stats(client, auth)
    assert (body["files"], body["bytes"]) == (2, 90_000)
    assert body["byType"]["image"] == {"files": 1, "bytes": 20_000}
    assert stats(client, auth, project="p2")["files"] == 1


def test_stats_are_the_callers_tenant_and_projects_only(client, token):
    alice = {"Authorization": f"Bearer {token('alice', tenant='acme', projects=['p1'])}"}
    bob = {"Authorization": f"Bearer {token('bob', tenant='other')}"}
    upload(client, alice, [("file", "a.png", png_bytes(1_000))])
    assert stats(client, alice)["files"] == 1
    assert stats(client, alice)["tenant"] == "acme"
    assert stats(client, bob)["files"] == 0  # the same project name in another tenant
    refused = client.get("/api/stats?projectId=p2", headers=alice)
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "project_forbidden"
    missing = client.get("/api/stats", headers=alice)
    assert (missing.status_code, missing.get_json()["error"]["code"]) == (400, "missing_project_id")
    assert client.get("/api/stats?projectId=p1").status_code == 401


@pytest.fixture
def serial_app(tmp_path, backend, request):
    """The gateway on ``backend``, its moto serving one request at a time: DynamoDB's
    transactions are serializable, moto's are not (tests/serial_moto.py); a lost ADD here would
    be moto's race, not the gateway's."""
    if backend == "local":
        return request.getfixturevalue("app")
    moto = request.getfixturevalue("serial_moto_url")
    app = create_app(make_settings(tmp_path, backend=backend, moto_url=moto))
    app.config["TESTING"] = True
    init_stores(app.extensions["gateway"])
    return app


def test_concurrent_uploads_are_all_counted(serial_app):
    app = serial_app
    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}

    def one(n):
        upload(app.test_client(), auth, [("file", f"{n}.png", png_bytes(1_000 + n, seed=n))])

    threads = [threading.Thread(target=one, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    body = stats(app.test_client(), auth)
    assert (body["files"], body["bytes"]) == (8, sum(1_000 + n for n in range(8)))
