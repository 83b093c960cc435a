"""Media that failed processing are withheld as infected ones are: the owner sees the status and
the reason, and no URL of any kind (embedded route, the store's own, CDN, CloudFront-signed)
serves them; a ready item is served, and a failed item re-processed to ready is served again."""

from __future__ import annotations

import media_samples as samples
import pytest
import requests
from test_pipeline import gateway, settled, upload, work

from gateway.media.lifecycle import Status

from support import read_object

pytestmark = pytest.mark.timeout(180)


def gif_html_polyglot() -> bytes:
    """A GIF header (what the sniffer sees) over an HTML page (what a browser might render)."""
    return b"GIF89a\x01\x00\x01\x00\x00\x00\x00<html><script>alert(document.domain)</script></html>"


def truncated_jpeg() -> bytes:
    photo = samples.photo(800, 600)
    return photo[: len(photo) // 2]


FAILING = {
    "bomb": (samples.bomb, "bomb.png", "larger than 50000000 pixels"),
    "polyglot": (gif_html_polyglot, "x.gif", "The file cannot be processed"),
    "truncated": (truncated_jpeg, "x.jpg", "The file cannot be processed"),
}


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def owner_view(client, auth, media_id: str) -> dict:
    answer = client.get(f"/api/media/{media_id}", headers=auth)
    assert answer.status_code == 200
    return answer.get_json()


def listed(client, auth, media_id: str) -> dict:
    page = client.get("/api/media?projectId=p1&limit=100", headers=auth).get_json()
    [item] = [m for m in page["items"] if m["mediaId"] == media_id]
    return item


def assert_withheld(view: dict, reason: str) -> None:
    assert view["status"] == "failed"
    assert reason in view["reason"] and view["error"] == view["reason"]
    assert view["url"] is None
    assert all(v["url"] is None for v in view["variants"])


# -- local storage: the embedded route ----------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(FAILING))
def test_a_failed_file_is_not_served_by_the_embedded_route(tmp_path, kind):
    make, name, reason = FAILING[kind]
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    content = make()
    failing = upload(client, auth, content, name)
    fine = upload(client, auth, samples.png(), "ok.png")
    # Stored and not processed yet: served, as before (the URL the upload answered with).
    assert client.get(path_of(failing["url"])).status_code == 200
    work(svc, lambda: settled(svc, failing["mediaId"])() and settled(svc, fine["mediaId"])())
    view = owner_view(client, auth, failing["mediaId"])
    assert_withheld(view, reason)
    assert_withheld(listed(client, auth, failing["mediaId"]), reason)
    withheld = client.get(path_of(failing["url"]))
    assert withheld.status_code == 404
    assert withheld.get_json()["error"]["code"] == "not_found"  # as an infected (absent) file
    key = svc.records.get(failing["mediaId"]).s3_key
    # Out of the media directory (nginx serves it directly), kept where uploads await their scan.
    assert not svc.store.exists(key) and read_object(svc.storage.holding.store, key) == content
    # The other branch: the ready file and its thumbnails are served.
    ready = owner_view(client, auth, fine["mediaId"])
    assert ready["status"] == "ready" and "reason" not in ready
    assert client.get(path_of(ready["url"])).data == samples.png()
    assert ready["variants"]
    for variant in ready["variants"]:
        assert client.get(path_of(variant["url"])).status_code == 200


def test_the_result_page_shows_the_reason_and_no_link(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    failing = upload(client, auth, samples.bomb(), "bomb.png")
    fine = upload(client, auth, samples.png(), "ok.png")
    work(svc, lambda: settled(svc, failing["mediaId"])() and settled(svc, fine["mediaId"])())
    page = client.get(
        f"/upload/result?mediaId={failing['mediaId']}&mediaId={fine['mediaId']}", headers=auth
    ).get_data(as_text=True)
    bomb_item, fine_item = page.split('data-media-id="')[1:3]
    assert 'data-state="failed"' in bomb_item and "larger than 50000000 pixels" in bomb_item
    assert 'data-role="url"' not in bomb_item and "<img" not in bomb_item
    assert 'data-state="ready"' in fine_item and 'data-role="url"' in fine_item


def test_a_failed_file_processed_again_to_ready_is_served_again(tmp_path):
    """Failed under a pixel limit too low, then retried with the limit raised: served again."""
    app, svc, auth = gateway(tmp_path, max_image_pixels=1000)
    client = app.test_client()
    media = upload(client, auth, samples.png(300, 200), "big.png")
    work(svc, settled(svc, media["mediaId"]))
    assert_withheld(owner_view(client, auth, media["mediaId"]), "larger than 1000 pixels")
    assert client.get(path_of(media["url"])).status_code == 404
    key = svc.records.get(media["mediaId"]).s3_key
    assert not svc.store.exists(key) and svc.storage.holding.store.exists(key)
    # The same stores, a raised limit; the job queued again (failed -> processing -> ready).
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    svc.queue.send({"type": "media.process", "mediaId": media["mediaId"]})
    work(svc, lambda: svc.records.get(media["mediaId"]).status is Status.READY)
    view = owner_view(client, auth, media["mediaId"])
    assert view["status"] == "ready" and "reason" not in view and view["url"] == media["url"]
    assert client.get(path_of(view["url"])).data == samples.png(300, 200)
    assert svc.store.exists(key) and not svc.storage.holding.store.exists(key)


# -- S3: the store's own URL, a CDN's, CloudFront-signed ------------------------------------------------
def cloudfront_settings() -> dict:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "cdn_base_url": "https://cdn.example.com",
        "cloudfront_key_id": "KTEST",
        "cloudfront_private_key": pem,
    }


def make_prefix_public(svc) -> None:
    """What a deployment serving the store's own URLs does: a bucket policy that lets anyone read
    the storage prefix (moto enforces it for requests without credentials)."""
    import json

    store = svc.store
    store.client.put_bucket_policy(
        Bucket=store.bucket,
        Policy=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": "*",
                        "Action": "s3:GetObject",
                        "Resource": f"arn:aws:s3:::{store.bucket}/{store.prefix}/*",
                    }
                ],
            }
        ),
    )


URL_KINDS = {
    "s3": {},
    "cdn": {"cdn_base_url": "https://cdn.example.com"},
    "cloudfront-signed": "signed",
}


@pytest.mark.parametrize("kind", sorted(URL_KINDS))
def test_on_s3_no_url_of_a_failed_file_is_handed_out(tmp_path, moto_url, kind):
    overrides = cloudfront_settings() if URL_KINDS[kind] == "signed" else URL_KINDS[kind]
    app, svc, auth = gateway(tmp_path, backend="s3", moto_url=moto_url, **overrides)
    client = app.test_client()
    make_prefix_public(svc)
    failing = upload(client, auth, samples.bomb(), "bomb.png")
    fine = upload(client, auth, samples.png(), "ok.png")
    expected_base = {
        "s3": f"{moto_url}/",
        "cdn": "https://cdn.example.com/",
        "cloudfront-signed": "https://cdn.example.com/",
    }[kind]
    assert failing["url"].startswith(expected_base)  # stored, not processed yet: it has one
    if kind == "s3":  # and it serves (moto serves the public prefix without credentials)
        assert requests.get(failing["url"], timeout=10).content == samples.bomb()
    if kind == "cloudfront-signed":
        assert "Signature=" in failing["url"] and "Key-Pair-Id=KTEST" in failing["url"]
    work(svc, lambda: settled(svc, failing["mediaId"])() and settled(svc, fine["mediaId"])())
    assert_withheld(owner_view(client, auth, failing["mediaId"]), "larger than 50000000 pixels")
    assert_withheld(listed(client, auth, failing["mediaId"]), "larger than 50000000 pixels")
    # The object left the storage prefix (what the CDN's origin path and the policy serve).
    key = svc.records.get(failing["mediaId"]).s3_key
    assert not svc.store.exists(key)
    assert read_object(svc.storage.holding.store, key) == samples.bomb()
    if kind == "s3":  # the URL handed out at upload time serves nothing any more
        # (moto: 404; AWS answers 403 to a reader without s3:ListBucket)
        assert requests.get(failing["url"], timeout=10).status_code == 404
    ready = owner_view(client, auth, fine["mediaId"])
    assert ready["status"] == "ready" and ready["url"].startswith(expected_base)
    assert ready["variants"] and all(v["url"].startswith(expected_base) for v in ready["variants"])
    if kind == "s3":  # the store's own URL answers (moto serves it without credentials)
        got = requests.get(ready["url"], timeout=10)
        assert got.content == samples.png(), (got.status_code, got.headers, got.text[:300])


# -- what withholding does to the stores, the sweeper and deletion --------------------------------------
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_withholding_and_releasing_are_idempotent_moves(tmp_path, request, backend):
    moto = request.getfixturevalue("moto_url") if backend == "s3" else None
    _, svc, _ = gateway(tmp_path, backend=backend, moto_url=moto)
    holding = svc.storage.holding
    key = "projects/p1/media/" + "a" * 32 + ".png"
    writer = svc.store.open_writer(key, content_type="image/png", metadata={"sha256": "ab"})
    writer.write(b"bytes")
    writer.commit(sha256="ab")
    for _ in range(2):  # the second time: a redelivered job
        holding.withhold(key)
        assert not svc.store.exists(key) and read_object(holding.store, key) == b"bytes"
    for _ in range(2):
        holding.release(key)
        assert read_object(svc.store, key) == b"bytes" and not holding.store.exists(key)
    if backend == "s3":  # the object's metadata travels with it
        assert svc.store.head(key)["Metadata"]["sha256"] == "ab"
    svc.store.delete(key)
    holding.withhold(key)  # in neither place: nothing is served, nothing to do
    assert not svc.store.exists(key) and not holding.store.exists(key)


def test_a_failed_media_deleted_leaves_nothing_in_either_place(tmp_path):
    from support import assert_nothing_left

    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    media = upload(client, auth, samples.bomb(), "bomb.png")
    work(svc, settled(svc, media["mediaId"]))
    key = svc.records.get(media["mediaId"]).s3_key
    assert svc.storage.holding.store.exists(key)
    assert client.delete(f"/api/media/{media['mediaId']}", headers=auth).status_code == 204
    assert_nothing_left(svc)
    assert list(svc.storage.holding.store.objects()) == []


def test_the_sweeper_keeps_a_withheld_object_and_deletes_an_unrecorded_one(tmp_path):
    from datetime import timedelta

    app, svc, auth = gateway(tmp_path)  # scanning off: the place is swept all the same
    media = upload(app.test_client(), auth, samples.bomb(), "bomb.png")
    work(svc, settled(svc, media["mediaId"]))
    key = svc.records.get(media["mediaId"]).s3_key
    stray = "projects/p1/media/" + "b" * 32 + ".png"
    writer = svc.storage.holding.store.open_writer(stray, content_type="image/png", metadata={})
    writer.write(b"x")
    writer.commit(sha256="0" * 64)
    report = svc.sweeper.sweep(older_than=timedelta(0))
    assert report.failed == []
    assert report.done == [f"delete unrecorded object {stray} in the quarantine"]
    assert read_object(svc.storage.holding.store, key) == samples.bomb()
    assert not svc.storage.holding.store.exists(stray)


class _MovedOnFirst:
    """A record store whose first compare-and-set loses: just before it, another worker's
    update (``competing``) lands on the same record."""

    def __init__(self, records, competing) -> None:
        self.records, self.competing, self.raced = records, competing, False

    def __getattr__(self, name):
        return getattr(self.records, name)

    def update(self, record, *, expected):
        if not self.raced:
            self.raced = True
            current = self.records.get(record.media_id)
            self.records.update(self.competing(current), expected=current)
        return self.records.update(record, expected=expected)


def test_a_record_that_moved_on_while_failing_gets_its_object_back(tmp_path):
    app, svc, auth = gateway(tmp_path)
    media = upload(app.test_client(), auth, samples.png(), "ok.png")
    record = svc.records.get(media["mediaId"])
    processing = svc.records.update(
        record.evolve(status=Status.PROCESSING, stage="describe"), expected=record
    )
    pipeline = svc.pipeline
    pipeline.records = _MovedOnFirst(
        svc.records, lambda current: current.evolve(status=Status.READY, stage="")
    )
    pipeline._fail(processing.media_id, "The file cannot be processed: late")
    assert pipeline.records.raced
    after = svc.records.get(media["mediaId"])
    assert after.status is Status.READY and not after.quarantined and after.reason == ""
    assert read_object(svc.store, after.s3_key) == samples.png()
    assert not svc.storage.holding.store.exists(after.s3_key)


def test_a_failure_that_loses_to_another_failure_is_withheld_once(tmp_path):
    app, svc, auth = gateway(tmp_path)
    media = upload(app.test_client(), auth, samples.png(), "ok.png")
    record = svc.records.get(media["mediaId"])
    pipeline = svc.pipeline
    # Another worker failed it first (it withheld the object and marked the record so).
    pipeline.records = _MovedOnFirst(
        svc.records,
        lambda current: current.evolve(status=Status.FAILED, reason="first", quarantined=True),
    )
    pipeline._fail(record.media_id, "second")
    after = svc.records.get(media["mediaId"])
    assert (after.status, after.reason, after.quarantined) == (Status.FAILED, "first", True)
    assert read_object(svc.storage.holding.store, after.s3_key) == samples.png()
    assert not svc.store.exists(after.s3_key)


# -- through nginx, which serves the media directory itself (embedded mode) ------------------------------
def test_nginx_stops_serving_a_failed_file_and_serves_a_ready_one(tmp_path_factory):
    from e2e_harness import gateway_stack, poll

    with gateway_stack(tmp_path_factory.mktemp("withheld"), mode="embedded") as stack:
        answers = {}
        for name, content in (("bomb.png", samples.bomb()), ("ok.png", samples.png())):
            path = stack.tmp / name
            path.write_bytes(content)
            stored = stack.curl("-F", "projectId=p1", "-F", f"file=@{path};type=image/png")
            assert stored.status == 201, stored.body
            answers[name] = stored.json()
        bomb, fine = answers["bomb.png"], answers["ok.png"]
        # Not processed yet (no worker runs): nginx serves both, as before.
        assert requests.get(bomb["url"], timeout=10).content == samples.bomb()
        stack.start_worker()
        svc = stack.svc
        assert poll(lambda: svc.records.get(bomb["mediaId"]).status is Status.FAILED, 120)
        assert poll(lambda: svc.records.get(fine["mediaId"]).status is Status.READY, 120)
        withheld = requests.get(bomb["url"], timeout=10)
        assert withheld.status_code == 404
        assert withheld.json()["error"]["code"] == "not_found"
        assert requests.get(fine["url"], timeout=10).content == samples.png()
        view = requests.get(
            f"{stack.url}/api/media/{bomb['mediaId']}", headers=stack.auth, timeout=10
        ).json()
        assert view["status"] == "failed" and view["url"] is None
        assert "larger than 50000000 pixels" in view["reason"]


@pytest.mark.parametrize("status", sorted(Status))
def test_the_reason_is_shown_as_the_error_of_failed_and_infected_media_only(tmp_path, status):
    from gateway import create_app
    from gateway.http.api.present import media_json
    from gateway.media.records import MediaRecord, Sha256State

    from conftest import make_settings

    record = MediaRecord(
        media_id="a" * 32,
        project_id="p1",
        tenant="",
        owner="alice",
        original_name="cat.png",
        file_type="image",
        mime_type="image/png",
        s3_key=f"projects/p1/media/{'a' * 32}.png",
        size=1,
        sha256="",
        sha256_state=Sha256State.PENDING,
        created_at="2026-01-01T00:00:00.000000+00:00",
        status=status,
        reason="why",
    )
    with create_app(make_settings(tmp_path)).test_request_context("/api/media"):
        view = media_json(record)
    assert view["reason"] == "why"
    assert view.get("error") == ("why" if status in (Status.FAILED, Status.INFECTED) else None)
