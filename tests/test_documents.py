"""Documents and text, when the allow-list admits them, on every backend: sniffed types, stored
bytes, and how each is served (S3 object headers; the embedded /media/ route)."""

from __future__ import annotations

import pytest
from test_sniff import SVG_NS, _ooxml

from support import assert_nothing_left, assert_stored, form_body, png_bytes

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
TEXTS = "text/*,application/json,application/vnd.openxmlformats-officedocument.*,image/*"


def _gateway(tmp_path, backend, request, allowed_types: str):
    """(client, svc, auth headers) of an app with this allow-list."""
    from gateway import create_app
    from gateway.http.auth import mint_token

    from conftest import init_stores, make_settings

    moto = request.getfixturevalue("moto_url") if backend != "local" else None
    settings = make_settings(
        tmp_path,
        backend=backend,
        moto_url=moto,
        allowed_types=tuple(allowed_types.split(",")),
        processing=False,
    )
    app = create_app(settings)
    svc = app.extensions["gateway"]
    init_stores(svc)
    with app.app_context():
        headers = {"Authorization": f"Bearer {mint_token('alice')}"}
    return app.test_client(), svc, headers


def upload(client, auth, filename: str, content: bytes):
    body, content_type = form_body([("projectId", "p1")], [("file", filename, content)])
    return client.post("/api/upload", data=body, headers={"Content-Type": content_type, **auth})


def served_headers(client, svc, answer: dict) -> tuple[str, str]:
    """(Content-Type, Content-Disposition) the object is served with."""
    from gateway.storage.local import LocalObjectStore

    if isinstance(svc.store, LocalObjectStore):
        response = client.get(f"/media/{answer['s3Key']}")
        assert response.status_code == 200
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        return response.headers["Content-Type"], response.headers.get("Content-Disposition", "")
    head = svc.store.client.head_object(Bucket=svc.store.bucket, Key=answer["s3Key"])
    return head["ContentType"], head.get("ContentDisposition", "")


@pytest.mark.parametrize(
    "filename, content, mime, extension, served_type, attachment",
    [
        (
            "notes.txt",
            "caf\u00e9\n".encode() * 100,
            "text/plain",
            ".txt",
            "text/plain; charset=utf-8",
            True,
        ),
        ("t.csv", b"a,b\n1,2\n" * 100, "text/csv", ".csv", "text/csv; charset=utf-8", True),
        ("d.json", b'{"a": [1, 2, 3]}', "application/json", ".json", "application/json", True),
        ("r.docx", _ooxml("word/document.xml"), DOCX, ".docx", DOCX, True),
        ("cat.png", png_bytes(), "image/png", ".png", "image/png", False),
    ],
)
def test_allowed_documents_are_stored_and_served_as_downloads(
    tmp_path, backend, request, filename, content, mime, extension, served_type, attachment
):
    client, svc, auth = _gateway(tmp_path, backend, request, TEXTS)
    response = upload(client, auth, filename, content)
    assert response.status_code == 201, response.get_json()
    answer = response.get_json()
    assert (answer["contentType"], answer["fileType"]) == (
        mime,
        "image" if mime.startswith("image/") else "other",
    )
    assert answer["s3Key"] == svc.store.full_key(
        f"projects/p1/media/{answer['mediaId']}{extension}"
    )
    assert_stored(svc, answer, content)
    content_type, disposition = served_headers(client, svc, answer)
    assert content_type == served_type
    assert disposition.startswith("attachment") is attachment


@pytest.mark.parametrize(
    "content",
    [
        b"<svg " + SVG_NS + b"><script>alert(1)</script></svg>",
        b"<!DOCTYPE html><script>alert(1)</script>",
        b"<?xml version='1.0'?><x:html xmlns:x='http://www.w3.org/1999/xhtml'/>",
    ],
)
def test_active_content_is_not_admitted_by_wildcards(tmp_path, backend, request, content):
    client, svc, auth = _gateway(tmp_path, backend, request, TEXTS + ",application/*")
    response = upload(client, auth, "page.txt", content)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_type"
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "allowed, content, mime, extension",
    [
        (
            "image/svg+xml",
            b"<svg " + SVG_NS + b"><script>alert(1)</script></svg>",
            "image/svg+xml",
            ".svg",
        ),
        ("*/*", b"<!DOCTYPE html><script>alert(1)</script>", "text/html", ".html"),
        ("*/*", b"\x00\x01 no known signature" * 50, "application/octet-stream", ".bin"),
    ],
)
def test_active_or_unknown_content_when_allowed_is_never_served_as_itself(
    tmp_path, backend, request, allowed, content, mime, extension
):
    client, svc, auth = _gateway(tmp_path, backend, request, allowed)
    response = upload(client, auth, "x.png", content)
    assert response.status_code == 201, response.get_json()
    answer = response.get_json()
    assert answer["contentType"] == mime
    assert answer["s3Key"].endswith(extension)
    assert_stored(svc, answer, content)
    content_type, disposition = served_headers(client, svc, answer)
    assert content_type == "application/octet-stream"
    assert disposition.startswith("attachment")


def test_the_default_allow_list_stays_narrow(tmp_path, backend, request):
    from gateway.config import Settings

    client, svc, auth = _gateway(tmp_path, backend, request, ",".join(Settings.allowed_types))
    for name, content in [
        ("a.txt", b"text"),
        ("a.json", b"{}"),
        ("a.csv", b"a,b\n1,2\n"),
        ("a.docx", _ooxml("word/document.xml")),
        ("a.svg", b"<svg " + SVG_NS + b"/>"),
        ("a.bin", b"\x00\x01 no known signature"),
    ]:
        response = upload(client, auth, name, content)
        assert response.status_code == 415, name
        assert response.get_json()["error"]["code"] == "unsupported_type"
    assert_nothing_left(svc)
