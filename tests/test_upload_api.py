"""POST /api/upload through the Flask test client, against every backend (local, S3, DynamoDB)."""

from __future__ import annotations

import hashlib

import pytest

from conftest import also_on_ceph
from support import (
    MiB,
    assert_nothing_left,
    assert_stored,
    form_body,
    jpeg_bytes,
    leftovers,
    mp4_bytes,
    png_bytes,
    read_object,
)

ON_CEPH = also_on_ceph("local", "s3", "s3+dynamodb")  # what the store does: on Ceph as well


def post(client, body_and_type, headers=None, query=""):
    body, content_type = body_and_type
    return client.post(
        f"/api/upload{query}", data=body, headers={"Content-Type": content_type, **(headers or {})}
    )


@ON_CEPH
def test_one_small_file_is_stored_with_its_record(client, auth, svc):
    content = png_bytes(30_000)
    response = post(
        client,
        form_body([("projectId", "p1"), ("caption", "a cat")], [("file", "cat.png", content)]),
        auth,
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["success"] is True and body["contentType"] == "image/png"
    assert body["s3Key"] == svc.store.full_key(f"projects/p1/media/{body['mediaId']}.png")
    assert body["metadata"] == {"caption": "a cat"} and body["originalName"] == "cat.png"
    assert_stored(svc, body, content)


@ON_CEPH
def test_file_larger_than_several_parts_is_exact(client, auth, svc):
    content = mp4_bytes(21 * MiB + 12345)
    response = post(client, form_body([("projectId", "p1")], [("file", "clip.mp4", content)]), auth)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["fileType"] == "video"
    assert_stored(svc, body, content)
    assert leftovers(svc)["pending_uploads"] == []


@ON_CEPH
def test_several_files_in_one_request(client, auth, svc):
    contents = [png_bytes(10_000), mp4_bytes(9 * MiB), jpeg_bytes(50_000)]
    files = [("files", f"f{i}.bin", c) for i, c in enumerate(contents)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 201, response.get_json()
    listed = response.get_json()["files"]
    assert [f["contentType"] for f in listed] == ["image/png", "video/mp4", "image/jpeg"]
    for body, content in zip(listed, contents, strict=False):
        assert_stored(svc, body, content)
    assert leftovers(svc)["pending_uploads"] == []


@ON_CEPH
def test_disallowed_second_file_leaves_nothing_of_the_first(client, auth, svc):
    files = [("files", "ok.png", png_bytes(9 * MiB)), ("files", "evil.png", b"MZ" + b"\0" * 9000)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_type"
    assert_nothing_left(svc)


@ON_CEPH
def test_declared_sha256_is_verified(client, auth, svc):
    content = png_bytes(12 * MiB)
    good = hashlib.sha256(content).hexdigest()
    ok = post(
        client,
        form_body([("projectId", "p1"), ("sha256", good)], [("file", "a.png", content)]),
        auth,
    )
    assert ok.status_code == 201 and ok.get_json()["sha256"] == good
    svc.store.delete(svc.records.get(ok.get_json()["mediaId"]).s3_key)
    svc.records.delete(ok.get_json()["mediaId"])
    bad = post(
        client,
        form_body([("projectId", "p1"), ("sha256", "0" * 64)], [("file", "a.png", content)]),
        auth,
    )
    assert bad.status_code == 422 and bad.get_json()["error"]["code"] == "checksum_mismatch"
    assert_nothing_left(svc)


# -- refusals: each asserts the answer and that nothing is left --------------------------------------
def error_code(response):
    body = response.get_json()
    assert body["success"] is False and body["requestId"]
    return body["error"]["code"]


def test_declared_length_over_the_cap_is_refused_before_reading(tmp_path, backend, request):
    from test_auth import CountingStream

    from gateway import create_app

    from conftest import init_stores, make_settings

    moto = request.getfixturevalue("moto_url") if backend != "local" else None
    app = create_app(
        make_settings(tmp_path, backend=backend, moto_url=moto, max_upload_bytes=1 << 20)
    )
    svc = app.extensions["gateway"]
    init_stores(svc)
    with app.app_context():
        from gateway.http.auth import mint_token

        headers = {"Authorization": f"Bearer {mint_token('alice')}"}
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes(2 << 20))])
    stream = CountingStream(body)
    response = app.test_client().post(
        "/api/upload",
        input_stream=stream,
        headers={**headers, "Content-Type": content_type, "Content-Length": str(len(body))},
    )
    assert response.status_code == 413 and error_code(response) == "too_large"
    assert stream.bytes_read == 0
    assert_nothing_left(svc)
    # The same body sent chunked (no Content-Length) is refused once it grows past the cap,
    # after parts were already sent: the multipart upload is aborted.
    stream = CountingStream(body)
    response = app.test_client().post(
        "/api/upload",
        input_stream=stream,
        headers={**headers, "Content-Type": content_type, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 413 and error_code(response) == "too_large"
    assert 0 < stream.bytes_read < len(body)
    assert_nothing_left(svc)


@ON_CEPH
def test_chunked_body_is_accepted(client, auth, svc):
    import io

    content = mp4_bytes(9 * MiB)
    body, content_type = form_body([("projectId", "p1")], [("file", "v.mp4", content)])
    response = client.post(
        "/api/upload",
        input_stream=io.BytesIO(body),
        headers={**auth, "Content-Type": content_type, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.status_code == 201, response.get_json()
    assert_stored(svc, response.get_json(), content)


def raw_post(client, body: bytes, headers: dict, content_length: int | None):
    """POST with a Content-Length that need not match the body (or none at all), handed to the
    app as gunicorn does: a terminated input stream that simply ends early (a short read)."""
    import io

    from werkzeug.test import EnvironBuilder, run_wsgi_app

    headers = dict(headers)
    content_type = headers.pop("Content-Type")
    environ = EnvironBuilder(path="/api/upload", method="POST", headers=headers).get_environ()
    environ["CONTENT_TYPE"] = content_type
    environ.pop("CONTENT_LENGTH", None)
    if content_length is not None:
        environ["CONTENT_LENGTH"] = str(content_length)
    environ.update({"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})
    app = client.application
    app_iter, status, response_headers = run_wsgi_app(app, environ)
    return app.response_class(b"".join(app_iter), status=status, headers=response_headers)


def test_no_length_and_not_chunked_is_411(client, auth, svc):
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    response = raw_post(client, body, {**auth, "Content-Type": content_type}, None)
    assert response.status_code == 411 and error_code(response) == "length_required"
    assert_nothing_left(svc)


@ON_CEPH
def test_short_body_is_never_committed(client, auth, svc):
    """A client that stops sending halfway: fewer bytes than its Content-Length."""
    body, content_type = form_body([("projectId", "p1")], [("file", "v.mp4", mp4_bytes(20 * MiB))])
    for cut in (
        len(body) // 2,
        len(body) - 3,
    ):  # mid-file, and just before the closing boundary ends
        response = raw_post(client, body[:cut], {**auth, "Content-Type": content_type}, len(body))
        assert response.status_code == 400 and error_code(response) == "client_disconnected"
        assert_nothing_left(svc)


@ON_CEPH
def test_body_without_closing_boundary_is_never_committed(client, auth, svc):
    body, content_type = form_body([("projectId", "p1")], [("file", "v.mp4", mp4_bytes(9 * MiB))])
    truncated = body[: body.rindex(b"\r\n--")]  # the whole file, but the form never ends
    response = post(client, (truncated, content_type), auth)
    assert response.status_code == 400 and error_code(response) == "malformed_body"
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "content, code, status",
    [
        (b"MZ\x90\x00" + b"\0" * 20_000, "unsupported_type", 415),  # an .exe named .png
        (b"%PDF-1.7\n" + b"x" * 20_000, "unsupported_type", 415),  # allowed? no: not image/video
        (b"<svg xmlns='http://www.w3.org/2000/svg'></svg>" * 100, "unsupported_type", 415),
        (b"plain text pretending", "unsupported_type", 415),
        (b"", "empty_file", 422),
    ],
)
def test_content_is_sniffed_not_trusted(client, auth, svc, content, code, status):
    body, content_type = form_body(
        [("projectId", "p1")], [("file", "photo.png", content)], file_type="image/png"
    )
    response = post(client, (body, content_type), auth)
    assert response.status_code == status and error_code(response) == code
    assert_nothing_left(svc)


@ON_CEPH
def test_type_refused_after_the_first_part_of_a_big_file_leaves_nothing(client, auth, svc):
    """Sniffing happens on the first bytes: a big disallowed file is refused before any S3 call."""
    body, content_type = form_body(
        [("projectId", "p1")], [("file", "a.pdf", b"%PDF-1.7\n" + b"x" * (12 * MiB))]
    )
    response = post(client, (body, content_type), auth)
    assert response.status_code == 415
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "mutate, code, status",
    [
        (lambda b, ct: (b, "multipart/form-data"), "bad_content_type", 400),
        (lambda b, ct: (b, "application/json"), "bad_content_type", 400),
        (lambda b, ct: (b, ct.replace("gatewaytest", "othertest")), "malformed_body", 400),
        (lambda b, ct: (b"garbage before\r\n" + b, ct), "malformed_body", 400),
        (lambda b, ct: (b + b"trailing junk", ct), "malformed_body", 400),
        (
            lambda b, ct: (
                b.replace(
                    b'Content-Disposition: form-data; name="file"; ',
                    b"X-Pad: "
                    + b"p" * 20_000
                    + b'\r\nContent-Disposition: form-data; name="file"; ',
                ),
                ct,
            ),
            "form_limit",
            413,
        ),
    ],
)
def test_malformed_multipart_is_refused(client, auth, svc, mutate, code, status):
    good = form_body([("projectId", "p1")], [("file", "a.png", png_bytes(9 * MiB))])
    response = post(client, mutate(*good), auth)
    assert response.status_code == status and error_code(response) == code
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "fields, files, code, status",
    [
        ([], [("file", "a.png", png_bytes())], "missing_project_id", 400),
        ([("projectId", "../etc")], [("file", "a.png", png_bytes())], "invalid_project_id", 400),
        ([("projectId", "p1")], [], "no_file", 400),
        ([("projectId", "p1")], [("upload", "a.png", png_bytes())], "unexpected_file_field", 400),
        (
            [("projectId", "p1"), ("sha256", "nothex")],
            [("file", "a.png", png_bytes())],
            "invalid_sha256",
            400,
        ),
        (
            [("projectId", "p1"), ("caption", "x" * 5000)],
            [("file", "a.png", png_bytes())],
            "form_limit",
            413,
        ),
        (
            [("projectId", "p1")] + [(f"f{i}", "v") for i in range(25)],
            [("file", "a.png", png_bytes())],
            "form_limit",
            413,
        ),
        (
            [("projectId", "p1")],
            [("files", f"{i}.png", png_bytes(1000, i)) for i in range(11)],
            "form_limit",
            413,
        ),
    ],
)
def test_form_rules(client, auth, svc, fields, files, code, status):
    response = post(client, form_body(fields, files), auth)
    assert response.status_code == status and error_code(response) == code
    assert_nothing_left(svc)


def test_project_in_query_string(client, auth, svc):
    content = png_bytes()
    response = post(
        client, form_body([], [("file", "a.png", content)]), auth, query="?projectId=q1"
    )
    assert response.status_code == 201 and response.get_json()["projectId"] == "q1"
    conflicting = post(
        client,
        form_body([("projectId", "p2")], [("file", "a.png", content)]),
        auth,
        query="?projectId=q1",
    )
    assert conflicting.status_code == 400 and error_code(conflicting) == "invalid_project_id"


@pytest.mark.parametrize(
    "filename, shown",
    [
        ("../../etc/passwd.png", "passwd.png"),
        ("C:/Users/x/photo.png", "photo.png"),
        ("C:\\Users\\x\\photo.png", "photo.png"),  # old IE: the whole path, raw backslashes
        ("\\\\server\\share\\photo.png", "photo.png"),
        ("???.png", "unnamed.png"),  # nothing safe but the extension
        ("evil%0D%0AX-Injected: 1.png", "evil__X-Injected_ 1.png"),  # how browsers send CR LF
        ("a\x00b.png", "a_b.png"),
        ("quo%22te.png", "quo_te.png"),  # how browsers send a quote
        ("", "unnamed"),
        ("...", "unnamed"),
        ("é" * 300 + ".png", "é" * 251 + ".png"),
    ],
)
def test_hostile_filenames_never_reach_the_key(client, auth, svc, filename, shown):
    content = png_bytes()
    response = post(client, form_body([("projectId", "p1")], [("file", filename, content)]), auth)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["originalName"] == shown
    assert body["s3Key"] == svc.store.full_key(f"projects/p1/media/{body['mediaId']}.png")
    assert_stored(svc, body, content)


@pytest.mark.parametrize("raw", [b"evil\r\nX-Injected: 1.png", b"a\x00\r\n\r\n.png"])
def test_raw_line_breaks_in_part_headers_leave_nothing(client, auth, svc, raw):
    body = (
        b'--bnd\r\nContent-Disposition: form-data; name="projectId"\r\n\r\np1\r\n'
        b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="'
        + raw
        + b'"\r\n\r\n'
        + png_bytes()
        + b"\r\n--bnd--\r\n"
    )
    response = post(client, (body, "multipart/form-data; boundary=bnd"), auth)
    assert response.status_code in (400, 413) and error_code(response)
    assert_nothing_left(svc)


def test_non_utf8_filename_is_kept_readably(client, auth, svc):
    body = (
        b'--bnd\r\nContent-Disposition: form-data; name="projectId"\r\n\r\np1\r\n'
        b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="caf\xe9.png"\r\n\r\n'
        + png_bytes()
        + b"\r\n--bnd--\r\n"
    )
    response = post(client, (body, "multipart/form-data; boundary=bnd"), auth)
    assert response.status_code == 201 and response.get_json()["originalName"] == "café.png"


# -- idempotency ---------------------------------------------------------------------------------
def test_idempotency_key_replays_the_first_answer(client, auth, svc):
    content = png_bytes()
    form = form_body([("projectId", "p1")], [("file", "a.png", content)])
    first = post(client, form, {**auth, "Idempotency-Key": "k-123"})
    second = post(client, form, {**auth, "Idempotency-Key": "k-123"})
    assert first.status_code == second.status_code == 201
    assert second.get_json() == first.get_json()
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(leftovers(svc)["objects"]) == 1 and len(leftovers(svc)["records"]) == 1
    other = post(client, form, {**auth, "Idempotency-Key": "k-456"})
    assert other.get_json()["mediaId"] != first.get_json()["mediaId"]


def test_idempotency_key_is_per_caller(client, token, svc):
    form = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    a = post(client, form, {"Authorization": f"Bearer {token('alice')}", "Idempotency-Key": "same"})
    b = post(client, form, {"Authorization": f"Bearer {token('bob')}", "Idempotency-Key": "same"})
    assert a.get_json()["mediaId"] != b.get_json()["mediaId"]


def test_replay_while_the_first_is_running_is_409(client, auth, svc):
    import time as _time

    svc.records.claim("#alice", "busy", now=_time.time(), lock_timeout=3600, ttl=3600)
    form = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    response = post(client, form, {**auth, "Idempotency-Key": "busy"})
    assert response.status_code == 409 and error_code(response) == "idempotency_in_progress"
    assert_nothing_left(svc)


def test_failed_request_releases_its_idempotency_key(client, auth, svc):
    bad = form_body([("projectId", "p1")], [("file", "a.png", b"not an image")])
    assert post(client, bad, {**auth, "Idempotency-Key": "retry-me"}).status_code == 415
    good = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    assert post(client, good, {**auth, "Idempotency-Key": "retry-me"}).status_code == 201


def test_first_answer_is_not_marked_replayed_and_a_replay_reads_its_body(client, auth, svc):
    import io

    content = png_bytes(40_000)
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", content)])
    headers = {**auth, "Idempotency-Key": "k-1", "Content-Type": content_type}
    first = client.post("/api/upload", data=body, headers=headers)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    stream = io.BytesIO(body)
    replay = client.post(
        "/api/upload", input_stream=stream, headers={**headers, "Content-Length": str(len(body))}
    )
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json() == first.get_json()
    assert stream.tell() == len(body)  # the retry's body was read to compare it
    assert_stored(svc, first.get_json(), content)
    assert len(leftovers(svc)["records"]) == 1


def test_a_retry_with_a_new_boundary_is_the_same_request(client, auth, svc):
    fields, files = [("projectId", "p1"), ("caption", "c")], [("file", "a.png", png_bytes())]
    first = post(client, form_body(fields, files, boundary="aaa"), {**auth, "Idempotency-Key": "k"})
    again = post(
        client, form_body(fields, files, boundary="bbbbbb"), {**auth, "Idempotency-Key": "k"}
    )
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert len(leftovers(svc)["records"]) == 1


@pytest.mark.parametrize(
    "fields, files, query",
    [
        ([("projectId", "p1")], [("file", "a.png", png_bytes(seed=9))], ""),  # other bytes
        ([("projectId", "p1")], [("file", "b.png", png_bytes())], ""),  # other filename
        ([("projectId", "p1")], [("files", "a.png", png_bytes())], ""),  # other field name
        ([("projectId", "p2")], [("file", "a.png", png_bytes())], ""),  # other project
        ([("projectId", "p1"), ("caption", "x")], [("file", "a.png", png_bytes())], ""),
        ([("projectId", "p1")], [("file", "a.png", png_bytes())] * 2, ""),  # one more file
        ([], [("file", "a.png", png_bytes())], "?projectId=p1"),  # the project moved
    ],
)
def test_the_same_key_for_another_request_is_refused(client, auth, svc, fields, files, query):
    key = {**auth, "Idempotency-Key": "once"}
    first = post(client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), key)
    assert first.status_code == 201
    other = post(client, form_body(fields, files), key, query=query)
    assert other.status_code == 422 and error_code(other) == "idempotency_key_mismatch"
    assert "Idempotent-Replayed" not in other.headers
    left = leftovers(svc)
    assert left["records"] == [first.get_json()["mediaId"]] and left["pending_uploads"] == []
    assert left["objects"] == [first.get_json()["s3Key"]]


def test_a_malformed_retry_is_refused_as_malformed(client, auth, svc):
    key = {**auth, "Idempotency-Key": "k"}
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    assert post(client, (body, content_type), key).status_code == 201
    broken = post(client, (body[:-30], content_type), key)
    assert broken.status_code == 400 and error_code(broken) == "malformed_body"
    assert len(leftovers(svc)["records"]) == 1


def test_the_answer_is_saved_with_the_records_so_it_cannot_be_lost(client, auth, svc, monkeypatch):
    """The records and the idempotent answer are one atomic write: if it fails, neither exists
    and the key is free again; there is no state where the upload is stored but the key is
    locked for an hour without an answer."""
    from gateway import errors

    real = svc.records.create_many
    calls = []

    def flaky(records, *, answer=None, reservation=None):
        calls.append(answer)
        if len(calls) == 1:
            raise errors.RecordStoreError()
        return real(records, answer=answer, reservation=reservation)

    monkeypatch.setattr(svc.records, "create_many", flaky)
    form = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    failed = post(client, form, {**auth, "Idempotency-Key": "atomic"})
    assert failed.status_code == 503 and error_code(failed) == "records_unavailable"
    assert calls[0] is not None and calls[0].key == "atomic"
    assert_nothing_left(svc)
    ok = post(client, form, {**auth, "Idempotency-Key": "atomic"})
    assert ok.status_code == 201 and "Idempotent-Replayed" not in ok.headers
    replay = post(client, form, {**auth, "Idempotency-Key": "atomic"})
    assert replay.get_json() == ok.get_json() and replay.headers["Idempotent-Replayed"] == "true"


@pytest.mark.parametrize(
    "key, ok",
    [
        ("k" * 255, True),
        ("k" * 256, False),
        ("a b", False),
        ("é", False),
        ("", False),
        ("!~", True),
    ],
)
def test_idempotency_key_format(client, auth, svc, key, ok):
    form = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    response = post(client, form, {**auth, "Idempotency-Key": key})
    if ok:
        assert response.status_code == 201, response.get_json()
    else:
        assert response.status_code == 400 and error_code(response) == "invalid_idempotency_key"
        assert_nothing_left(svc)


def test_idempotency_keys_are_matched_whole():
    from gateway import errors
    from gateway.uploads import idempotency

    assert idempotency.check_key("abc") == "abc"
    for bad in ("abc\n", "\nabc", "ab\x00c"):
        with pytest.raises(errors.InvalidIdempotencyKey):
            idempotency.check_key(bad)


# -- a sha256 promise binds to the next non-empty file ----------------------------------------------
def _raw_form(*parts: tuple[str, str | None, bytes]) -> tuple[bytes, str]:
    out = b""
    for name, filename, value in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else ""
        )
        out += f"--bnd\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + b"--bnd--\r\n", "multipart/form-data; boundary=bnd"


def test_a_sha256_skips_an_empty_file_input_and_binds_to_the_next_file(client, auth, svc):
    content = png_bytes()
    wrong = "0" * 64
    refused = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            ("sha256", None, wrong.encode()),
            ("files", "", b""),
            ("files", "a.png", content),
        ),
        auth,
    )
    assert refused.status_code == 422 and error_code(refused) == "checksum_mismatch"
    assert_nothing_left(svc)
    right = hashlib.sha256(content).hexdigest().encode()
    ok = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            ("sha256", None, right),
            ("files", "", b""),
            ("files", "a.png", content),
        ),
        auth,
    )
    assert ok.status_code == 201 and ok.get_json()["sha256"] == right.decode()


@pytest.mark.parametrize(
    "tail",
    [
        [("files", "", b"")],  # the promise's only "file" is an empty input
        [],  # no file after the promise at all
    ],
)
def test_a_sha256_without_a_file_after_it_is_refused(client, auth, svc, tail):
    content = png_bytes()
    form = _raw_form(
        ("projectId", None, b"p1"),
        ("files", "a.png", content),
        ("sha256", None, hashlib.sha256(content).hexdigest().encode()),
        *tail,
    )
    response = post(client, form, auth)
    assert response.status_code == 400 and error_code(response) == "invalid_sha256"
    assert_nothing_left(svc)


def test_two_sha256_fields_in_a_row_are_refused(client, auth, svc):
    content = png_bytes()
    digest = hashlib.sha256(content).hexdigest().encode()
    response = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            ("sha256", None, digest),
            ("sha256", None, digest),
            ("file", "a.png", content),
        ),
        auth,
    )
    assert response.status_code == 400 and error_code(response) == "invalid_sha256"
    assert _message(response) == "Two sha256 fields without a file between them."
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "value, status, code",
    [
        ("p9\n", 400, "invalid_project_id"),
        ("\np9", 400, "invalid_project_id"),
        ("p/9", 400, "invalid_project_id"),
        ("-p9", 400, "invalid_project_id"),
        ("a..b", 400, "invalid_project_id"),
        ("x" * 65, 400, "invalid_project_id"),
        ("", 400, "invalid_project_id"),
        ("x" * 64, 201, None),
        ("A.b_c-9", 201, None),
    ],
)
def test_project_ids_are_matched_whole(client, auth, svc, value, status, code):
    content = png_bytes()
    response = post(
        client, _raw_form(("projectId", None, value.encode()), ("file", "a.png", content)), auth
    )
    assert response.status_code == status, response.get_json()
    if code:
        assert error_code(response) == code
        assert_nothing_left(svc)
        listed = client.get("/api/media", query_string={"projectId": value}, headers=auth)
        assert listed.status_code == 400 and error_code(listed) in (code, "missing_project_id")
    else:
        assert_stored(svc, response.get_json(), content)


# -- media endpoints ------------------------------------------------------------------------------
@ON_CEPH
def test_get_list_and_delete_media(client, auth, svc):
    ids = []
    for i in range(5):
        response = post(
            client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes(1000, i))]), auth
        )
        ids.append(response.get_json()["mediaId"])
    got = client.get(f"/api/media/{ids[0]}", headers=auth)
    assert got.status_code == 200 and got.get_json()["mediaId"] == ids[0]
    seen, cursor = [], None
    while True:
        page = client.get(
            "/api/media?projectId=p1&limit=2" + (f"&cursor={cursor}" if cursor else ""),
            headers=auth,
        ).get_json()
        seen += [item["mediaId"] for item in page["items"]]
        cursor = page["nextCursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    for media_id in ids:
        assert client.delete(f"/api/media/{media_id}", headers=auth).status_code == 204
    assert client.get(f"/api/media/{ids[0]}", headers=auth).status_code == 404
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "query, code",
    [
        ("", "missing_project_id"),
        ("?projectId=p1&limit=0", "invalid_limit"),
        ("?projectId=p1&limit=abc", "invalid_limit"),
        ("?projectId=p1&cursor=%%%", "invalid_cursor"),
    ],
)
def test_list_media_validation(client, auth, query, code):
    response = client.get(f"/api/media{query}", headers=auth)
    assert response.status_code == 400 and error_code(response) == code


def test_unknown_routes_and_methods_answer_json(client):
    assert error_code(client.get("/nope")) == "not_found"
    assert client.get("/api/upload").status_code == 405


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["ready"] is True


def test_request_id_is_echoed_or_made(client):
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"]
        == "abc-123"
    )
    made = client.get("/healthz", headers={"X-Request-ID": "bad id <script>"}).headers[
        "X-Request-ID"
    ]
    assert made and made != "bad id <script>"


# -- review fixes: rollback edges, deletes, embedded serving, forms ----------------------------------
def test_record_failure_whose_cleanup_also_fails_keeps_and_journals_the_object(
    client, auth, svc, monkeypatch
):
    """The record write may have applied (answer lost) and its delete failed too: the object is
    kept (a record may point at it) and journaled; the sweeper settles it once records answer."""
    from datetime import timedelta

    from gateway import errors

    def fail(*args, **kwargs):
        raise errors.RecordStoreError()

    monkeypatch.setattr(svc.records, "create_many", fail)
    monkeypatch.setattr(svc.records, "delete", fail)
    response = post(
        client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth
    )
    assert response.status_code == 503 and error_code(response) == "records_unavailable"
    [key] = svc.journal.list_keys()
    assert leftovers(svc)["objects"] == [svc.store.full_key(key)]
    monkeypatch.undo()
    report = svc.sweeper.sweep(older_than=timedelta(hours=1))
    assert (report.done, report.failed) == ([f"delete journaled orphan {key}"], [])
    assert_nothing_left(svc)
    assert svc.journal.list_keys() == []


def test_delete_media_whose_object_delete_fails_journals_it(client, auth, svc, monkeypatch):
    from datetime import timedelta

    from gateway import errors

    media = post(
        client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth
    ).get_json()

    def fail(key):
        raise errors.StorageError()

    monkeypatch.setattr(svc.store, "delete", fail)
    assert client.delete(f"/api/media/{media['mediaId']}", headers=auth).status_code == 204
    assert client.get(f"/api/media/{media['mediaId']}", headers=auth).status_code == 404
    assert [svc.store.full_key(k) for k in svc.journal.list_keys()] == [media["s3Key"]]
    monkeypatch.undo()
    svc.sweeper.sweep(older_than=timedelta(hours=1))
    assert_nothing_left(svc)


@pytest.mark.parametrize("backend", ["local"])
def test_embedded_media_route_serves_only_gateway_keys(client, svc):
    svc.store.root.mkdir(parents=True, exist_ok=True)
    (svc.store.root / "secret.txt").write_text("not for you")
    (svc.store.root / "projects").mkdir(exist_ok=True)
    assert client.get("/media/secret.txt").status_code == 404
    assert client.get("/media/../records.db").status_code == 404
    assert client.get("/media/projects/p1/media/" + "a" * 32 + ".png").status_code == 404


def test_sha256_after_the_last_file_is_refused(client, auth, svc):
    late = (
        b'--bnd\r\nContent-Disposition: form-data; name="projectId"\r\n\r\np1\r\n'
        b'--bnd\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        + png_bytes()
        + b'\r\n--bnd\r\nContent-Disposition: form-data; name="sha256"\r\n\r\n'
        + b"0" * 64
        + b"\r\n--bnd--\r\n"
    )
    response = post(client, (late, "multipart/form-data; boundary=bnd"), auth)
    assert response.status_code == 400 and error_code(response) == "invalid_sha256"
    assert_nothing_left(svc)


def test_an_empty_optional_file_input_is_ignored(client, auth, svc):
    """Browsers send an unselected <input type=file> as filename="" with no bytes."""
    content = png_bytes()
    form = form_body([("projectId", "p1")], [("files", "a.png", content), ("files", "", b"")])
    response = post(client, form, auth)
    assert response.status_code == 201, response.get_json()
    assert len(response.get_json()["files"]) == 1
    assert_stored(svc, response.get_json(), content)


def test_bidi_and_control_characters_leave_display_names(client, auth):
    form = form_body([("projectId", "p1")], [("file", "x\u202egnp.exe\u0085.png", png_bytes())])
    name = post(client, form, auth).get_json()["originalName"]
    assert "\u202e" not in name and "\u0085" not in name and name.endswith(".png")


# -- who may delete ------------------------------------------------------------------------------
def test_members_read_owners_and_admins_delete(client, token, svc):
    content = png_bytes()
    alice = {"Authorization": f"Bearer {token('alice', tenant='acme')}"}
    bob = {"Authorization": f"Bearer {token('bob', tenant='acme')}"}
    admin = {"Authorization": f"Bearer {token('carol', tenant='acme', admin=True)}"}
    other_admin = {"Authorization": f"Bearer {token('dave', tenant='globex', admin=True)}"}
    narrowed_admin = {
        "Authorization": f"Bearer {token('erin', tenant='acme', admin=True, projects=['p2'])}"
    }
    form = form_body([("projectId", "p1")], [("file", "a.png", content)])
    media = post(client, form, alice).get_json()
    media_id = media["mediaId"]
    assert client.get(f"/api/media/{media_id}", headers=bob).status_code == 200  # members read
    refused = client.delete(f"/api/media/{media_id}", headers=bob)
    assert refused.status_code == 403 and error_code(refused) == "delete_forbidden"
    for stranger in (other_admin, narrowed_admin):  # admins only of what they may see
        hidden = client.delete(f"/api/media/{media_id}", headers=stranger)
        assert hidden.status_code == 404 and error_code(hidden) == "media_not_found"
    assert_stored(svc, media, content)
    assert client.delete(f"/api/media/{media_id}", headers=admin).status_code == 204
    assert_nothing_left(svc)
    mine = post(client, form, bob).get_json()
    assert client.delete(f"/api/media/{mine['mediaId']}", headers=bob).status_code == 204
    assert_nothing_left(svc)


# -- mutation-testing gaps: exact limits, messages, rollback and retried writes ----------------------
def _message(response) -> str:
    return response.get_json()["error"]["message"]


def _gateway(tmp_path, backend, request, **overrides):
    """(client, svc, auth headers) of an app with these settings."""
    from gateway import create_app
    from gateway.http.auth import mint_token

    from conftest import init_stores, make_settings

    moto = request.getfixturevalue("moto_url") if backend != "local" else None
    app = create_app(make_settings(tmp_path, backend=backend, moto_url=moto, **overrides))
    svc = app.extensions["gateway"]
    init_stores(svc)
    with app.app_context():
        headers = {"Authorization": f"Bearer {mint_token('alice')}"}
    return app.test_client(), svc, headers


def test_the_settings_limits_reach_the_parser_exactly(tmp_path, backend, request):
    """Each form limit from the settings, on the limit and one past it (distinct values, so a
    limit wired to the wrong setting fails too)."""
    client, svc, auth = _gateway(
        tmp_path,
        backend,
        request,
        max_files=2,
        max_fields=3,
        max_field_bytes=40,
        max_part_header_bytes=300,
    )

    def files(n):
        return [("files", f"{i}.png", png_bytes(1000, i)) for i in range(n)]

    project = [("projectId", "p1")]
    cases = [  # (fields, files, refusal message or None)
        (project, files(2), None),
        (project, files(3), "Too many files."),
        ([*project, ("a", "1"), ("b", "2")], files(1), None),
        ([*project, ("a", "1"), ("b", "2"), ("c", "3")], files(1), "Too many text fields."),
        ([*project, ("a", "x" * 40)], files(1), None),
        ([*project, ("a", "x" * 41)], files(1), "Text field 'a' is too long."),
    ]
    for fields, parts, refusal in cases:
        response = post(client, form_body(fields, parts), auth)
        if refusal is None:
            assert response.status_code == 201, response.get_json()
            for stored in response.get_json()["files"]:
                svc.store.delete(svc.records.get(stored["mediaId"]).s3_key)
                svc.records.delete(stored["mediaId"])
        else:
            assert response.status_code == 413 and error_code(response) == "form_limit"
            assert _message(response) == refusal
        assert_nothing_left(svc)
    # Part headers: the file part's header block (with its blank line) at 300 bytes, then 301.
    block = len(
        b'Content-Disposition: form-data; name="file"; filename=""\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    name = "a" * (300 - block - 4) + ".png"
    at_limit = post(client, form_body(project, [("file", name, png_bytes())]), auth)
    assert at_limit.status_code == 201, at_limit.get_json()
    assert at_limit.get_json()["originalName"] == name
    over = post(client, form_body(project, [("file", "a" + name, png_bytes())]), auth)
    assert over.status_code == 413 and error_code(over) == "form_limit"
    assert _message(over) == "Part headers are too large."
    assert len(leftovers(svc)["records"]) == 1


def test_the_upload_cap_is_exact_with_and_without_a_length(tmp_path, backend, request):
    import io

    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes(5000))])
    cap = len(body)
    client, svc, auth = _gateway(tmp_path, backend, request, max_upload_bytes=cap, read_size=1000)
    headers = {**auth, "Content-Type": content_type}
    at_cap = client.post("/api/upload", data=body, headers=headers)
    assert at_cap.status_code == 201, at_cap.get_json()
    chunked = client.post(
        "/api/upload",
        input_stream=io.BytesIO(body),
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert chunked.status_code == 201, chunked.get_json()
    for media in (at_cap.get_json(), chunked.get_json()):
        svc.store.delete(svc.records.get(media["mediaId"]).s3_key)
        svc.records.delete(media["mediaId"])
    over = body.replace(b"p1", b"p12")
    declared = client.post("/api/upload", data=over, headers=headers)
    assert declared.status_code == 413 and error_code(declared) == "too_large"
    assert _message(declared) == f"The body is {cap + 1} bytes; the limit is {cap}."
    grown = client.post(
        "/api/upload",
        input_stream=io.BytesIO(over),
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert grown.status_code == 413 and error_code(grown) == "too_large"
    assert _message(grown) == f"The body grew past the limit of {cap} bytes."
    assert_nothing_left(svc)


@pytest.mark.parametrize("read_size", [1, 2, 3, 5, 7, 64])
def test_lf_only_bodies_at_small_read_sizes(tmp_path, read_size, request):
    client, svc, auth = _gateway(tmp_path, "local", request, read_size=read_size)
    content = png_bytes(3000) + b"\n-bnd\r\n--bn"  # near-delimiters, none whole
    body = (
        b'--bnd\nContent-Disposition: form-data; name="projectId"\n\np1\n'
        b'--bnd\nContent-Disposition: form-data; name="file"; filename="a.png"\n\n'
        + content
        + b'\n--bnd\nContent-Disposition: form-data; name="caption"\n\nc\r\n--bnd--\n'
    )
    response = post(client, (body, "multipart/form-data; boundary=bnd"), auth)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["metadata"] == {"caption": "c\r"}
    assert_stored(svc, response.get_json(), content)


def test_the_short_body_message_counts_the_bytes(client, auth, svc):
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    response = raw_post(client, body, {**auth, "Content-Type": content_type}, len(body) + 10)
    assert response.status_code == 400 and error_code(response) == "client_disconnected"
    assert _message(response) == f"Received {len(body)} of {len(body) + 10} bytes."
    assert_nothing_left(svc)


@ON_CEPH
def test_a_body_longer_than_its_length_is_never_committed(client, auth, svc):
    """A server that hands over more than Content-Length: the count must match exactly."""
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    response = raw_post(client, body + b"\r\n", {**auth, "Content-Type": content_type}, len(body))
    assert response.status_code == 400 and error_code(response) == "client_disconnected"
    assert _message(response) == f"Received {len(body) + 2} of {len(body)} bytes."
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "content_type, message",
    [
        ("application/json", "Content-Type must be multipart/form-data."),
        ("multipart/form-data", "The multipart/form-data Content-Type has no boundary."),
        ('multipart/form-data; boundary="a b "', "The multipart boundary is not valid (RFC 2046)."),
    ],
)
def test_bad_content_types_name_the_problem(client, auth, svc, content_type, message):
    body, _ = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    response = post(client, (body, content_type), auth)
    assert response.status_code == 400 and error_code(response) == "bad_content_type"
    assert _message(response) == message
    assert_nothing_left(svc)


@pytest.mark.parametrize(
    "query, code, status",
    [("?projectId=a/b", "invalid_project_id", 400), ("?projectId=p2", "project_forbidden", 403)],
)
def test_the_query_project_is_checked_before_the_body(client, token, svc, query, code, status):
    from test_auth import CountingStream

    auth = {"Authorization": f"Bearer {token('alice', projects=['p1'])}"}
    body, content_type = form_body([], [("file", "a.png", png_bytes())])
    stream = CountingStream(body)
    response = client.post(
        f"/api/upload{query}",
        input_stream=stream,
        headers={**auth, "Content-Type": content_type, "Content-Length": str(len(body))},
    )
    assert response.status_code == status and error_code(response) == code
    assert stream.bytes_read == 0
    assert_nothing_left(svc)


def test_the_form_project_is_checked_against_the_token(client, token, svc):
    auth = {"Authorization": f"Bearer {token('alice', projects=['p1'])}"}
    refused = post(client, form_body([("projectId", "p2")], [("file", "a.png", png_bytes())]), auth)
    assert refused.status_code == 403 and error_code(refused) == "project_forbidden"
    assert _message(refused) == "The token does not allow project 'p2'."
    assert_nothing_left(svc)
    ok = post(client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth)
    assert ok.status_code == 201, ok.get_json()


def test_project_id_messages(client, auth, svc):
    missing = post(client, form_body([], [("file", "a.png", png_bytes())]), auth)
    assert missing.status_code == 400 and error_code(missing) == "missing_project_id"
    assert _message(missing) == (
        "projectId is required, in the query string or as a field before the files."
    )
    differs = post(
        client,
        form_body([("projectId", "p2")], [("file", "a.png", png_bytes())]),
        auth,
        query="?projectId=p1",
    )
    assert differs.status_code == 400 and error_code(differs) == "invalid_project_id"
    assert _message(differs) == "projectId differs between the query and the form."
    same = post(
        client,
        form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]),
        auth,
        query="?projectId=p1",
    )
    assert same.status_code == 201 and same.get_json()["projectId"] == "p1"


def test_a_project_id_that_changes_after_the_first_file_is_refused(client, auth, svc):
    content = png_bytes()
    changed = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            ("files", "a.png", content),
            ("projectId", None, b"p2"),
            ("files", "b.png", content),
        ),
        auth,
    )
    assert changed.status_code == 400 and error_code(changed) == "invalid_project_id"
    assert _message(changed) == "projectId cannot change after the first file."
    assert_nothing_left(svc)
    repeated = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            ("files", "a.png", content),
            ("projectId", None, b"p1"),
            ("files", "b.png", content),
        ),
        auth,
    )
    assert repeated.status_code == 201, repeated.get_json()
    assert [f["projectId"] for f in repeated.get_json()["files"]] == ["p1", "p1"]
    assert repeated.get_json()["files"][0]["metadata"] == {}


def test_a_project_id_after_the_only_file_is_too_late(client, auth, svc):
    response = post(
        client, _raw_form(("files", "a.png", png_bytes()), ("projectId", None, b"p1")), auth
    )
    assert response.status_code == 400 and error_code(response) == "missing_project_id"
    assert_nothing_left(svc)


def test_a_text_field_after_a_file_is_metadata_of_every_file(client, auth, svc):
    response = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            ("files", "a.png", png_bytes(2000)),
            ("caption", None, b"late"),
            ("files", "b.png", png_bytes(3000, seed=4)),
            ("credit", None, b"me"),
        ),
        auth,
    )
    assert response.status_code == 201, response.get_json()
    listed = response.get_json()["files"]
    assert [f["metadata"] for f in listed] == [{"caption": "late", "credit": "me"}] * 2
    for media in listed:
        assert svc.records.get(media["mediaId"]).metadata == {"caption": "late", "credit": "me"}


def test_metadata_names_are_cut_at_64_characters_and_nameless_fields_ignored(client, auth, svc):
    long_name = "n" * 70
    response = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            (long_name, None, b"v"),
            ("", None, b"ignored"),
            ("file", "a.png", png_bytes()),
        ),
        auth,
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["metadata"] == {"n" * 64: "v"}


def test_the_tenant_prefixes_the_key_and_owner_and_tenant_are_recorded(client, token, svc):
    auth = {"Authorization": f"Bearer {token('alice', tenant='acme')}"}
    content = png_bytes()
    response = post(client, form_body([("projectId", "p1")], [("file", "a.png", content)]), auth)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    key = f"acme/projects/p1/media/{body['mediaId']}.png"
    assert body["s3Key"] == svc.store.full_key(key)
    assert (body["tenant"], body["owner"]) == ("acme", "alice")
    record = svc.records.get(body["mediaId"])
    assert (record.s3_key, record.tenant, record.owner) == (key, "acme", "alice")
    assert_stored(svc, body, content)


def test_the_answer_of_one_file_and_of_several(client, auth, svc):
    one = post(client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth)
    body = one.get_json()
    assert body["success"] is True and body["files"] == [
        {k: v for k, v in body.items() if k not in ("success", "files")}
    ]
    assert body["size"] == len(png_bytes()) and body["status"] == "stored"
    two = post(
        client,
        form_body(
            [("projectId", "p1")],
            [("files", "a.png", png_bytes()), ("files", "b.jpg", jpeg_bytes())],
        ),
        auth,
    )
    answer = two.get_json()
    assert set(answer) == {"success", "files"} and len(answer["files"]) == 2
    assert [f["originalName"] for f in answer["files"]] == ["a.png", "b.jpg"]
    created = {f["createdAt"] for f in answer["files"]}
    assert len(created) == 1 and created.pop().endswith("+00:00")


def test_records_failure_with_a_working_cleanup_removes_every_object(
    client, auth, svc, monkeypatch
):
    """The records write fails (nothing applied) and cleanup works: every object of the request
    is deleted right away, none is journaled."""
    from gateway import errors

    def fail(*args, **kwargs):
        raise errors.RecordStoreError()

    monkeypatch.setattr(svc.records, "create_many", fail)
    files = [("files", f"{i}.png", png_bytes(2000, i)) for i in range(3)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 503 and error_code(response) == "records_unavailable"
    assert _message(response) == "The record store failed; nothing was kept."
    assert svc.journal.list_keys() == []
    assert_nothing_left(svc)


def test_records_written_with_the_answer_lost_are_rolled_back(client, auth, svc, monkeypatch):
    """The write applied but its answer was lost: its records and objects are all removed."""
    from gateway import errors

    real = svc.records.create_many
    written = []

    def applied_then_lost(records, *, answer=None, reservation=None):
        real(records, answer=answer, reservation=reservation)
        written.extend(r.media_id for r in records)
        raise errors.RecordStoreError()

    monkeypatch.setattr(svc.records, "create_many", applied_then_lost)
    files = [("files", f"{i}.png", png_bytes(2000, i)) for i in range(2)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 503 and error_code(response) == "records_unavailable"
    assert len(written) == 2
    assert svc.journal.list_keys() == []
    assert_nothing_left(svc)


def test_only_the_objects_whose_record_cannot_be_deleted_are_kept_and_journaled(
    client, auth, svc, monkeypatch
):
    from gateway import errors

    real_create, real_delete = svc.records.create_many, svc.records.delete
    state: dict[str, list] = {"ids": []}

    def applied_then_lost(records, *, answer=None, reservation=None):
        real_create(records, answer=answer, reservation=reservation)
        state["ids"] = [r.media_id for r in records]
        raise errors.RecordStoreError()

    def delete_all_but_the_first(media_id):
        if media_id == state["ids"][0]:
            raise errors.RecordStoreError()
        real_delete(media_id)

    monkeypatch.setattr(svc.records, "create_many", applied_then_lost)
    monkeypatch.setattr(svc.records, "delete", delete_all_but_the_first)
    files = [("files", f"{i}.png", png_bytes(2000, i)) for i in range(3)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 503 and error_code(response) == "records_unavailable"
    kept = svc.records.get(state["ids"][0])
    assert svc.journal.list_keys() == [kept.s3_key]
    assert leftovers(svc) == {
        "objects": [svc.store.full_key(kept.s3_key)],
        "pending_uploads": [],
        "records": [kept.media_id],
    }


def test_an_object_delete_that_fails_in_rollback_is_journaled(client, auth, svc, monkeypatch):
    from gateway import errors

    def fail_create(*args, **kwargs):
        raise errors.RecordStoreError()

    real_delete = svc.store.delete
    tried = []

    def fail_first_delete(key):
        tried.append(key)
        if len(tried) == 1:
            raise errors.StorageError()
        real_delete(key)

    monkeypatch.setattr(svc.records, "create_many", fail_create)
    monkeypatch.setattr(svc.store, "delete", fail_first_delete)
    files = [("files", f"{i}.png", png_bytes(2000, i)) for i in range(2)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 503
    assert len(tried) == 2 and svc.journal.list_keys() == [tried[0]]
    assert leftovers(svc)["objects"] == [svc.store.full_key(tried[0])]
    assert leftovers(svc)["records"] == []


def test_a_retried_write_that_finds_its_own_records_is_a_success(client, auth, svc, monkeypatch):
    """The store retried a write whose first attempt applied: it reports RecordExists, but the
    records are exactly ours, so the upload succeeded."""
    from gateway import errors

    real = svc.records.create_many

    def applied_then_exists(records, *, answer=None, reservation=None):
        real(records, answer=answer, reservation=reservation)
        raise errors.RecordExists()

    monkeypatch.setattr(svc.records, "create_many", applied_then_exists)
    contents = [png_bytes(2000), png_bytes(3000, seed=5)]
    files = [("files", f"{i}.png", c) for i, c in enumerate(contents)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 201, response.get_json()
    for media, content in zip(response.get_json()["files"], contents, strict=True):
        assert_stored(svc, media, content)
    assert svc.journal.list_keys() == []


def test_a_record_exists_that_is_not_ours_is_a_failure(client, auth, svc, monkeypatch):
    """RecordExists for records we cannot find (or that differ) is a failure: our objects go,
    and the foreign record is never deleted."""
    import gateway.uploads.form
    from gateway import errors

    foreign = svc.records
    first = post(client, form_body([("projectId", "p9")], [("file", "a.png", png_bytes())]), auth)
    foreign_id = first.get_json()["mediaId"]
    before = leftovers(svc)
    monkeypatch.setattr(gateway.uploads.form, "new_media_id", lambda: foreign_id)
    clash = post(client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth)
    assert clash.status_code == 503 and error_code(clash) == "records_unavailable"
    assert leftovers(svc) == before
    assert foreign.get(foreign_id).project_id == "p9"

    def exists_but_unreadable(*args, **kwargs):
        raise errors.RecordExists()

    def down(media_id):
        raise errors.RecordStoreError()

    monkeypatch.undo()
    monkeypatch.setattr(svc.records, "create_many", exists_but_unreadable)
    monkeypatch.setattr(svc.records, "get", down)
    unknown = post(client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth)
    assert unknown.status_code == 503 and error_code(unknown) == "records_unavailable"
    monkeypatch.undo()
    assert leftovers(svc) == before


@ON_CEPH
def test_a_commit_failure_deletes_the_objects_committed_before_it(client, auth, svc, monkeypatch):
    """The second file's commit fails: the first (committed) is deleted, the second's writer
    aborted, the third never committed; nothing is left."""
    from gateway import errors
    from gateway.uploads.ingest import IncomingFile

    real = IncomingFile.commit
    commits = []

    def commit(self):
        commits.append(self.media_id)
        if len(commits) == 2:
            self.commit_started = True
            raise errors.StorageError()
        real(self)

    monkeypatch.setattr(IncomingFile, "commit", commit)
    files = [("files", f"{i}.png", png_bytes(2000, i)) for i in range(3)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 502 and error_code(response) == "storage_error"
    assert len(commits) == 2
    assert svc.journal.list_keys() == []
    assert_nothing_left(svc)


def test_a_rollback_that_cannot_abort_still_deletes_the_rest(client, auth, svc, monkeypatch):
    from gateway import errors
    from gateway.uploads.ingest import IncomingFile

    real_abort = IncomingFile.abort

    def abort(self):
        real_abort(self)
        raise errors.StorageError()

    def fail_create(*args, **kwargs):
        raise errors.RecordStoreError()

    monkeypatch.setattr(IncomingFile, "abort", abort)
    monkeypatch.setattr(svc.records, "create_many", fail_create)
    files = [("files", f"{i}.png", png_bytes(2000, i)) for i in range(2)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 503
    assert svc.journal.list_keys() == []
    assert_nothing_left(svc)


def test_a_journal_that_fails_too_does_not_hide_the_error(client, auth, svc, monkeypatch):
    from gateway import errors

    def fail(*args, **kwargs):
        raise errors.RecordStoreError()

    def storage_down(key):
        raise errors.StorageError()

    def journal_down(key, reason):
        raise OSError("disk full")

    monkeypatch.setattr(svc.records, "create_many", fail)
    monkeypatch.setattr(svc.store, "delete", storage_down)
    monkeypatch.setattr(svc.journal, "add", journal_down)
    response = post(
        client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth
    )
    assert response.status_code == 503 and error_code(response) == "records_unavailable"


def test_a_rollback_journals_with_its_reason(client, auth, svc, monkeypatch):
    from gateway import errors

    def fail(*args, **kwargs):
        raise errors.RecordStoreError()

    journaled = []
    monkeypatch.setattr(svc.records, "create_many", fail)
    monkeypatch.setattr(svc.store, "delete", lambda key: fail())
    monkeypatch.setattr(svc.journal, "add", lambda key, reason: journaled.append((key, reason)))
    response = post(
        client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth
    )
    assert response.status_code == 503
    [(key, reason)] = journaled
    assert reason == "rollback incomplete" and key.startswith("projects/p1/media/")


def test_stored_media_is_announced_once_after_the_write(client, auth, svc, monkeypatch):
    announced = []
    monkeypatch.setattr(
        svc.announcer, "announce", lambda type, records: announced.append((type, records))
    )
    files = [("files", "a.png", png_bytes()), ("files", "b.png", png_bytes(seed=3))]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 201
    [(type_, records)] = announced
    assert type_.value == "media.stored"
    assert [r.media_id for r in records] == [f["mediaId"] for f in response.get_json()["files"]]
    assert all(svc.records.get(r.media_id) == r for r in records)


def test_a_sha256_field_is_trimmed_and_lowercased(client, auth, svc):
    content = png_bytes()
    digest = hashlib.sha256(content).hexdigest()
    response = post(
        client,
        form_body(
            [("projectId", "p1"), ("sha256", f" {digest.upper()}\t")], [("file", "a", content)]
        ),
        auth,
    )
    assert response.status_code == 201 and response.get_json()["sha256"] == digest
    assert "sha256" not in response.get_json()["metadata"]


@pytest.mark.parametrize(
    "value", ["0" * 63, "0" * 65, "g" * 64, "0" * 64 + "\n0", "", "0" * 32 + " " + "0" * 31]
)
def test_a_sha256_field_must_be_exactly_64_hex_digits(client, auth, svc, value):
    response = post(
        client,
        form_body([("projectId", "p1"), ("sha256", value)], [("file", "a.png", png_bytes())]),
        auth,
    )
    assert response.status_code == 400 and error_code(response) == "invalid_sha256"
    assert _message(response) == "sha256 must be 64 hexadecimal characters."
    assert_nothing_left(svc)


def test_a_sha256_after_its_file_says_so(client, auth, svc):
    content = png_bytes()
    digest = hashlib.sha256(content).hexdigest().encode()
    late = post(
        client,
        _raw_form(("projectId", None, b"p1"), ("file", "a.png", content), ("sha256", None, digest)),
        auth,
    )
    assert _message(late) == "A sha256 field must come before the file it describes."
    assert_nothing_left(svc)


def test_each_sha256_binds_to_the_file_after_it(client, auth, svc):
    a, b = png_bytes(2000), png_bytes(3000, seed=7)
    response = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            ("sha256", None, hashlib.sha256(a).hexdigest().encode()),
            ("files", "a.png", a),
            ("files", "b.png", b),  # no promise for this one
        ),
        auth,
    )
    assert response.status_code == 201, response.get_json()
    wrong = post(
        client,
        _raw_form(
            ("projectId", None, b"p1"),
            ("sha256", None, hashlib.sha256(a).hexdigest().encode()),
            ("files", "a.png", a),
            ("sha256", None, hashlib.sha256(a).hexdigest().encode()),
            ("files", "b.png", b),
        ),
        auth,
    )
    assert wrong.status_code == 422 and error_code(wrong) == "checksum_mismatch"


def test_a_file_part_with_another_name_is_named_in_the_refusal(client, auth, svc):
    response = post(
        client, form_body([("projectId", "p1")], [("upload", "a.png", png_bytes())]), auth
    )
    assert response.status_code == 400 and error_code(response) == "unexpected_file_field"
    assert _message(response) == "File parts must be named 'file' or 'files', not 'upload'."
    assert_nothing_left(svc)


def test_an_empty_file_with_a_name_is_refused(client, auth, svc):
    response = post(client, _raw_form(("projectId", None, b"p1"), ("file", "a.png", b"")), auth)
    assert response.status_code == 422 and error_code(response) == "empty_file"
    assert_nothing_left(svc)


def test_only_empty_file_inputs_are_no_file(client, auth, svc):
    response = post(
        client, _raw_form(("projectId", None, b"p1"), ("files", "", b""), ("files", "", b"")), auth
    )
    assert response.status_code == 400 and error_code(response) == "no_file"
    assert_nothing_left(svc)


def test_an_unnamed_non_empty_file_is_stored(client, auth, svc):
    content = png_bytes()
    response = post(client, _raw_form(("projectId", None, b"p1"), ("file", "", content)), auth)
    assert response.status_code == 201 and response.get_json()["originalName"] == "unnamed"
    assert_stored(svc, response.get_json(), content)


def test_a_form_limit_is_413_and_a_malformed_body_400_with_the_parsers_message(client, auth, svc):
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    malformed = post(client, (body + b"junk", content_type), auth)
    assert malformed.status_code == 400 and error_code(malformed) == "malformed_body"
    assert _message(malformed) == "Unexpected bytes after the closing boundary."
    fields = [("projectId", "p1")] + [(f"f{i}", "v") for i in range(20)]
    limit = post(client, form_body(fields, [("file", "a.png", png_bytes())]), auth)
    assert limit.status_code == 413 and error_code(limit) == "form_limit"
    assert _message(limit) == "Too many text fields."
    assert_nothing_left(svc)


def test_a_retry_fingerprint_counts_fields_after_files_and_empty_inputs(client, auth, svc):
    form = _raw_form(
        ("projectId", None, b"p1"),
        ("files", "a.png", png_bytes()),
        ("files", "", b""),
        ("caption", None, b"c"),
    )
    key = {**auth, "Idempotency-Key": "fp"}
    first = post(client, form, key)
    assert first.status_code == 201, first.get_json()
    again = post(client, form, key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    for other in (
        _raw_form(("projectId", None, b"p1"), ("files", "a.png", png_bytes()), ("files", "", b"")),
        _raw_form(
            ("projectId", None, b"p1"),
            ("files", "a.png", png_bytes()),
            ("caption", None, b"c"),
        ),
        _raw_form(
            ("projectId", None, b"p1"),
            ("files", "a.png", png_bytes()),
            ("files", "", b""),
            ("caption", None, b"d"),
        ),
    ):
        refused = post(client, other, key)
        assert refused.status_code == 422 and error_code(refused) == "idempotency_key_mismatch"
    assert len(leftovers(svc)["records"]) == 1


def _logged(caplog, logger: str) -> list[tuple[int, str, bool]]:
    return [
        (r.levelno, r.getMessage(), bool(r.exc_info)) for r in caplog.records if r.name == logger
    ]


def test_the_request_log_counts_project_files_and_bytes(client, auth, svc, caplog):
    import logging

    files = [("files", "a.png", png_bytes()), ("files", "", b""), ("files", "b.png", png_bytes())]
    body, content_type = form_body([("projectId", "p1")], files)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        ok = post(client, (body, content_type), auth)
        refused = post(client, form_body([("projectId", "p2")], [("upload", "x", b"1")]), auth)
    assert ok.status_code == 201 and refused.status_code == 400
    lines = [r.msg for r in caplog.records if r.name == "gateway.access"]
    assert [(line["project"], line["files"], line["bytes"]) for line in lines[:1]] == [
        ("p1", 2, len(body))
    ]
    assert "project" not in lines[1] and lines[1]["files"] == 0


def test_the_service_answers_201_with_its_records_without_a_plan(svc, auth):
    import io

    from gateway.media.principal import Principal
    from gateway.uploads.form import UploadRequest

    content = png_bytes()
    body, content_type = form_body([("caption", "c")], [("file", "a.png", content)])
    request = UploadRequest(
        principal=Principal("alice", "", None),
        content_type=content_type,
        content_length=len(body),
        query_project_id="q1",
    )
    boundary = svc.uploads.precheck(request)
    stored = svc.uploads.ingest(io.BytesIO(body), request, boundary=boundary)
    assert (stored.status, stored.body) == (201, {})
    [record] = stored.records
    assert (record.project_id, record.metadata) == ("q1", {"caption": "c"})
    assert svc.records.get(record.media_id) == record


@ON_CEPH
def test_only_files_followed_by_more_are_spilled(client, auth, svc, monkeypatch):
    """A file that is not the last is spilled (its buffers freed, on S3 its part sent) as soon as
    it ends; the last one goes straight to commit."""
    real_open = svc.store.open_writer
    spills: list[str] = []

    def open_writer(key, **kwargs):
        writer = real_open(key, **kwargs)
        real_spill = writer.spill

        def spill():
            spills.append(key)
            real_spill()

        writer.spill = spill
        return writer

    monkeypatch.setattr(svc.store, "open_writer", open_writer)
    files = [("files", f"{i}.png", png_bytes(2000, i)) for i in range(3)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 201, response.get_json()
    keys = [svc.records.get(f["mediaId"]).s3_key for f in response.get_json()["files"]]
    assert spills == keys[:2]


def test_a_retry_with_the_project_in_the_query_is_replayed(client, auth, svc):
    form = form_body([], [("file", "a.png", png_bytes())])
    key = {**auth, "Idempotency-Key": "q"}
    first = post(client, form, key, query="?projectId=p1")
    again = post(client, form, key, query="?projectId=p1")
    assert first.status_code == again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    moved = post(client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), key)
    assert moved.status_code == 422 and error_code(moved) == "idempotency_key_mismatch"


def test_the_query_project_refusal_names_the_project(client, token, svc):
    auth = {"Authorization": f"Bearer {token('alice', projects=['p1'])}"}
    response = post(
        client, form_body([], [("file", "a.png", png_bytes())]), auth, query="?projectId=p2"
    )
    assert response.status_code == 403 and error_code(response) == "project_forbidden"
    assert _message(response) == "The token does not allow project 'p2'."


def test_rollback_failures_are_logged_with_what_they_leave(client, auth, svc, monkeypatch, caplog):
    """Each rollback step that fails says what it left (an operator may have to act)."""
    import logging

    from gateway import errors
    from gateway.uploads import form
    from gateway.uploads.ingest import IncomingFile

    real_create = svc.records.create_many
    ids: list[str] = []

    def applied_then_lost(records, *, answer=None, reservation=None):
        real_create(records, answer=answer, reservation=reservation)
        ids.extend(r.media_id for r in records)
        raise errors.RecordStoreError()

    def fail(*args, **kwargs):
        raise errors.StorageError()

    def journal_down(key, reason):
        raise OSError("disk full")

    def abort(self):
        raise errors.StorageError()

    monkeypatch.setattr(svc.records, "create_many", applied_then_lost)
    monkeypatch.setattr(svc.records, "delete", fail)
    monkeypatch.setattr(IncomingFile, "abort", abort)
    monkeypatch.setattr(svc.journal, "add", journal_down)
    monkeypatch.setattr(form._Reservation, "end", fail)
    with caplog.at_level(logging.ERROR, logger="gateway.uploads.form"):
        response = post(
            client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth
        )
    assert response.status_code == 503
    [media_id] = ids
    key = svc.records.get(media_id).s3_key
    assert _logged(caplog, "gateway.uploads.form") == [
        (logging.ERROR, "rollback could not end quota reservation", True),
        (logging.ERROR, f"rollback could not delete record {media_id}", True),
        (logging.ERROR, f"rollback could not abort {media_id}", True),
        (logging.CRITICAL, f"could not journal {key} for the sweeper", True),
    ]
    monkeypatch.undo()
    caplog.clear()
    monkeypatch.setattr(svc.records, "create_many", fail)
    monkeypatch.setattr(svc.store, "delete", fail)
    with caplog.at_level(logging.ERROR, logger="gateway.uploads.form"):
        post(client, form_body([("projectId", "p1")], [("file", "a.png", png_bytes())]), auth)
    [journaled] = [k for k in svc.journal.list_keys() if k != key]
    assert _logged(caplog, "gateway.uploads.form") == [
        (logging.ERROR, f"rollback could not delete {journaled}", True)
    ]


@pytest.mark.parametrize("quarantined", [False, True])
def test_the_service_marks_records_of_a_quarantined_landing(svc, quarantined):
    import io

    from gateway.media.principal import Principal
    from gateway.services import form_options
    from gateway.uploads.form import UploadRequest, UploadService

    service = UploadService(
        form_options(svc.settings),
        svc.store,
        svc.records,
        svc.journal,
        svc.announcer,
        quarantined=quarantined,
    )
    body, content_type = form_body([("projectId", "p1")], [("file", "a.png", png_bytes())])
    request = UploadRequest(Principal("alice", "", None), content_type, len(body))
    stored = service.ingest(io.BytesIO(body), request, boundary=service.precheck(request))
    [record] = stored.records
    assert record.quarantined is quarantined
    assert svc.records.get(record.media_id).quarantined is quarantined


@ON_CEPH
def test_a_body_broken_after_several_files_aborts_every_writer(client, auth, svc):
    files = [("files", f"{i}.png", png_bytes(20_000, i)) for i in range(3)]
    body, content_type = form_body([("projectId", "p1")], files)
    truncated = body[: body.rindex(b"\r\n--")]  # every file arrived, the form never ends
    response = post(client, (truncated, content_type), auth)
    assert response.status_code == 400 and error_code(response) == "malformed_body"
    assert _message(response) == "The body ended before the closing boundary."
    assert_nothing_left(svc)


def test_a_form_upload_keeps_no_read_buffer_while_it_waits_for_the_next_read(svc):
    """Each read's buffer is let go before the next read waits for the client: a slow upload
    holds nothing between its reads (4 KiB each at 1,000 slow uploads, docs/benchmarks.md)."""
    import weakref

    from gateway.media.principal import Principal
    from gateway.uploads.form import UploadRequest

    class Read(bytearray):  # a bytearray that can be watched
        pass

    class Trickle:
        def __init__(self, data: bytes) -> None:
            self.data, self.at, self.given = data, 0, []

        def read(self, size: int) -> bytearray:
            alive = [ref for ref in self.given if ref() is not None]
            assert alive == [], "an earlier read's buffer is still held"
            chunk = Read(self.data[self.at : self.at + min(size, 1000)])
            self.at += len(chunk)
            self.given.append(weakref.ref(chunk))
            return chunk

    content = png_bytes(50_000)
    body, content_type = form_body([("caption", "c")], [("file", "a.png", content)])
    request = UploadRequest(
        Principal("alice", "", None), content_type, len(body), query_project_id="q1"
    )
    trickle = Trickle(body)
    stored = svc.uploads.ingest(trickle, request, boundary=svc.uploads.precheck(request))
    assert stored.status == 201 and len(trickle.given) > 50
    [record] = stored.records
    assert record.size == len(content)
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    assert read_object(svc.store, record.s3_key) == content
