"""POST /api/upload through the Flask test client, against every backend (local, S3, DynamoDB)."""

from __future__ import annotations

import hashlib

import pytest

from support import (
    MiB,
    assert_nothing_left,
    assert_stored,
    form_body,
    jpeg_bytes,
    leftovers,
    mp4_bytes,
    png_bytes,
)


def post(client, body_and_type, headers=None, query=""):
    body, content_type = body_and_type
    return client.post(
        f"/api/upload{query}", data=body, headers={"Content-Type": content_type, **(headers or {})}
    )


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


def test_file_larger_than_several_parts_is_exact(client, auth, svc):
    content = mp4_bytes(21 * MiB + 12345)
    response = post(client, form_body([("projectId", "p1")], [("file", "clip.mp4", content)]), auth)
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["fileType"] == "video"
    assert_stored(svc, body, content)
    assert leftovers(svc)["pending_uploads"] == []


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


def test_disallowed_second_file_leaves_nothing_of_the_first(client, auth, svc):
    files = [("files", "ok.png", png_bytes(9 * MiB)), ("files", "evil.png", b"MZ" + b"\0" * 9000)]
    response = post(client, form_body([("projectId", "p1")], files), auth)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_type"
    assert_nothing_left(svc)


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
        from gateway.auth import mint_token

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
        ("C:\\Users\\x\\photo.png", "C_Usersxphoto.png"),  # a quoted-string: backslash escapes
        ("evil%0D%0AX-Injected: 1.png", "evil%0D%0AX-Injected_ 1.png"),  # how browsers send CR LF
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

    def flaky(records, *, answer=None):
        calls.append(answer)
        if len(calls) == 1:
            raise errors.RecordStoreError()
        return real(records, answer=answer)

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
    from gateway import errors, idempotency

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
