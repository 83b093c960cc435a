"""The processing pipeline end to end in one process: upload -> media.stored -> queue -> worker
-> scan -> describe and derive -> ready (or failed, or infected), on the SQLite queue with local
storage, and on SQS with S3 (moto). The worker runs in this process (the crash tests in
tests/test_worker_process.py run it as its own process)."""

from __future__ import annotations

import io
import json
import threading
import time

import media_samples as samples
import pytest
from clamd_harness import MARKER
from PIL import Image
from webhook_receiver import SECRET, Receiver

from gateway import create_app
from gateway.http.auth import mint_token
from gateway.media.lifecycle import Status
from gateway.processing.worker import Worker, WorkerOptions

from conftest import init_stores, make_settings
from support import form_body, png_bytes, read_object

pytestmark = pytest.mark.timeout(180)
FAST = WorkerOptions(concurrency=2, visibility=30, wait=0.1, backoff_base=0.05, backoff_max=0.2)
TYPES = ("image/*", "video/*", "application/pdf")


def gateway(tmp_path, backend="local", moto_url=None, **overrides):
    settings = make_settings(
        tmp_path,
        backend=backend,
        moto_url=moto_url,
        allowed_types=TYPES,
        sandbox_memory=1024 << 20,
        **overrides,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    svc = app.extensions["gateway"]
    init_stores(svc)
    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}
    return app, svc, auth


def worker_for(svc, options=FAST):
    return Worker(
        svc.queue,
        svc.pipeline.handle,
        on_last_failure=svc.pipeline.on_last_failure,
        options=options,
    )


def lanes_for(svc, options=FAST):
    """The processing lane, and the webhook lane when a webhook is configured."""
    lanes = [worker_for(svc, options)]
    if svc.deliveries is not None:
        deliveries = svc.deliveries
        lanes.append(
            Worker(
                svc.webhook_queue,
                deliveries.handle,
                on_last_failure=deliveries.on_last_failure,
                options=options,
            )
        )
    return lanes


def work(svc, until, seconds=60):
    lanes = lanes_for(svc)
    deadline = time.monotonic() + seconds
    while not until() and time.monotonic() < deadline:
        for lane in lanes:
            lane.run_once()
    for lane in lanes:
        lane.drain()
    assert until(), "the work did not finish"


def upload(client, auth, content, name="a.jpg"):
    body, content_type = form_body([("projectId", "p1")], [("file", name, content)])
    response = client.post("/api/upload", data=body, headers={"Content-Type": content_type, **auth})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def settled(svc, media_id):
    return lambda: (
        svc.records.get(media_id).status in (Status.READY, Status.FAILED, Status.INFECTED)
    )


def fetch(client, url: str) -> bytes:
    path = url.split("://", 1)[1].split("/", 1)[1]
    response = client.get("/" + path)
    assert response.status_code == 200, url
    return response.data


# -- local storage, SQLite queue ------------------------------------------------------------------
def test_a_photo_becomes_ready_with_upright_thumbnails_and_no_gps(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    media = upload(client, auth, samples.photo(1600, 1200, orientation=6))
    assert media["status"] == "stored" and media["variants"] == []
    work(svc, settled(svc, media["mediaId"]))
    view = client.get(f"/api/media/{media['mediaId']}", headers=auth).get_json()
    assert view["status"] == "ready" and view["stage"] is None
    assert view["properties"]["width"] == 1200 and view["properties"]["gpsFound"] is True
    assert view["properties"]["gpsRemoved"] is False  # GATEWAY_STRIP_GPS is off
    assert [(v["name"], v["width"], v["height"]) for v in view["variants"]] == [
        ("thumb-320", 240, 320),
        ("thumb-1280", 960, 1280),
    ]
    for variant in view["variants"]:
        data = fetch(client, variant["url"])
        assert len(data) == variant["size"]
        image = Image.open(io.BytesIO(data))
        assert image.format == "WEBP" and not image.getexif() and "xmp" not in image.info
    # The original is untouched, as uploaded.
    assert fetch(client, view["url"]) == read_object(
        svc.store, svc.records.get(media["mediaId"]).s3_key
    )


def test_gps_is_stripped_from_the_original_when_asked(tmp_path):
    app, svc, auth = gateway(tmp_path, strip_gps=True)
    client = app.test_client()
    original = samples.photo(800, 600, xmp=True)
    media = upload(client, auth, original)
    work(svc, settled(svc, media["mediaId"]))
    record = svc.records.get(media["mediaId"])
    stored = read_object(svc.store, record.s3_key)
    assert Image.open(io.BytesIO(stored)).getexif().get_ifd(0x8825) == {}
    import hashlib

    assert (record.size, record.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    assert record.properties["uploadedSha256"] == media["sha256"] != record.sha256
    assert record.properties["gpsRemoved"] is True


@pytest.mark.parametrize("kind", ["video", "pdf"])
def test_videos_get_a_poster_and_pdfs_a_preview(tmp_path, kind):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    content = samples.mp4(3) if kind == "video" else samples.pdf(2)
    media = upload(client, auth, content, "clip.mp4" if kind == "video" else "doc.pdf")
    work(svc, settled(svc, media["mediaId"]))
    view = client.get(f"/api/media/{media['mediaId']}", headers=auth).get_json()
    assert view["status"] == "ready"
    [variant] = view["variants"]
    assert variant["name"] == ("poster" if kind == "video" else "preview")
    assert Image.open(io.BytesIO(fetch(client, variant["url"]))).format == "WEBP"
    if kind == "video":
        assert view["properties"]["duration"] == pytest.approx(3.0, abs=0.2)
    else:
        assert view["properties"]["pageCount"] == 2


def test_a_decompression_bomb_ends_failed_and_the_worker_goes_on(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    bomb = upload(client, auth, samples.bomb(), "bomb.png")
    fine = upload(client, auth, samples.png(), "ok.png")
    work(svc, lambda: settled(svc, bomb["mediaId"])() and settled(svc, fine["mediaId"])())
    failed = client.get(f"/api/media/{bomb['mediaId']}", headers=auth).get_json()
    assert failed["status"] == "failed" and "larger than 50000000 pixels" in failed["error"]
    assert failed["variants"] == []
    assert svc.records.get(fine["mediaId"]).status is Status.READY
    assert svc.queue.stats().dead == 0  # handled, not poison


def test_a_duplicate_or_late_job_changes_nothing(tmp_path):
    app, svc, auth = gateway(tmp_path)
    media = upload(app.test_client(), auth, samples.png())
    work(svc, settled(svc, media["mediaId"]))
    ready = svc.records.get(media["mediaId"])
    for _ in range(3):
        svc.queue.send({"type": "media.process", "mediaId": media["mediaId"]})
    svc.queue.send({"type": "media.process", "mediaId": "0" * 32})  # deleted meanwhile
    work(svc, lambda: svc.queue.stats().visible == 0 and svc.queue.stats().in_flight == 0)
    assert svc.records.get(media["mediaId"]) == ready


def test_a_poison_job_ends_dead_and_its_media_failed(tmp_path):
    app, svc, auth = gateway(tmp_path, queue_max_receives=2)
    media = upload(app.test_client(), auth, samples.png())
    svc.store.delete(svc.records.get(media["mediaId"]).s3_key)  # every attempt fails to read
    work(svc, lambda: svc.queue.stats().dead == 1)
    record = svc.records.get(media["mediaId"])
    assert record.status is Status.FAILED and record.reason.startswith("Processing failed:")
    # Fixed and redriven, it is processed after all (failed -> processing -> ready).
    assert svc.queue.redrive(limit=10) == 1
    writer = svc.store.open_writer(record.s3_key, content_type="image/png", metadata={})
    writer.write(samples.png())
    writer.commit(sha256="0" * 64)
    work(svc, lambda: svc.records.get(media["mediaId"]).status is Status.READY)


def test_the_sweeper_queues_media_left_stored(tmp_path):
    from datetime import UTC, datetime, timedelta

    app, svc, auth = gateway(tmp_path)
    media = upload(app.test_client(), auth, samples.png())
    job = svc.queue.receive(max_messages=10, wait=0, visibility=60)
    for message in job:  # the job is lost
        svc.queue.delete(message)
    later = datetime.now(UTC) + timedelta(minutes=11)
    report = svc.sweeper.sweep(older_than=timedelta(hours=24), now=later)
    assert report.done == [f"queue processing again for {media['mediaId']}"]
    work(svc, settled(svc, media["mediaId"]))
    assert svc.records.get(media["mediaId"]).status is Status.READY


def test_deleting_media_deletes_its_variants(tmp_path):
    from support import assert_nothing_left

    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    media = upload(client, auth, samples.photo(400, 300))
    work(svc, settled(svc, media["mediaId"]))
    assert len(list(svc.store.objects())) == 3
    assert client.delete(f"/api/media/{media['mediaId']}", headers=auth).status_code == 204
    assert_nothing_left(svc)


# -- scanning ----------------------------------------------------------------------------------------
def polled_urls(client, auth, media_id, stop):
    """Poll the media the whole time the worker runs: every answer, in order."""
    answers = []
    while not stop.is_set():
        answers.append(client.get(f"/api/media/{media_id}", headers=auth).get_json())
        time.sleep(0.01)
    answers.append(client.get(f"/api/media/{media_id}", headers=auth).get_json())
    return answers


@pytest.mark.parametrize("infected", [False, True], ids=["clean", "infected"])
def test_nothing_is_public_before_a_clean_scan(tmp_path, clamd_url, infected):
    app, svc, auth = gateway(tmp_path, clamd_url=clamd_url)
    client = app.test_client()
    content = samples.photo(1200, 900)
    if infected:
        content = content[:1000] + MARKER + content[1000:]
    media = upload(client, auth, content, "x.jpg")
    assert media["url"] is None and media["status"] == "stored"
    key = svc.records.get(media["mediaId"]).s3_key
    assert not svc.store.exists(key) and svc.storage.quarantine.store.exists(key)
    stop = threading.Event()
    answers: list = []
    poller = threading.Thread(
        target=lambda: answers.extend(polled_urls(app.test_client(), auth, media["mediaId"], stop))
    )
    poller.start()
    work(svc, settled(svc, media["mediaId"]))
    stop.set()
    poller.join()
    assert len(answers) > 3
    for answer in answers:  # at every poll: a URL only once released, never when infected
        if answer["url"] is not None:
            assert not infected and svc.store.exists(key)
            assert answer["status"] in ("processing", "ready")
    final = answers[-1]
    if infected:
        assert final["status"] == "infected" and final["url"] is None
        assert final["error"] == "Infected: Gateway.Test.Marker.UNOFFICIAL"
        assert not svc.store.exists(key) and not svc.storage.quarantine.store.exists(key)
        assert final["variants"] == []
    else:
        assert final["status"] == "ready" and final["url"]
        assert fetch(client, final["url"]) == content
        assert not svc.storage.quarantine.store.exists(key)


def test_an_infected_file_kept_in_the_quarantine_survives_the_sweeper(tmp_path, clamd_url):
    from datetime import timedelta

    app, svc, auth = gateway(tmp_path, clamd_url=clamd_url, keep_infected=True)
    client = app.test_client()
    photo = samples.photo(800, 600)
    content = photo[:1000] + MARKER + photo[1000:]
    media = upload(client, auth, content, "x.jpg")
    work(svc, settled(svc, media["mediaId"]))
    record = svc.records.get(media["mediaId"])
    assert record.status is Status.INFECTED and record.variants == []
    held = svc.storage.quarantine.store
    report = svc.sweeper.sweep(older_than=timedelta(0))
    assert report.failed == [] and report.done == []
    assert read_object(held, record.s3_key) == content and not svc.store.exists(record.s3_key)


def test_a_scanner_that_is_down_is_never_clean(tmp_path):
    from support import free_port

    app, svc, auth = gateway(
        tmp_path, clamd_url=f"tcp://127.0.0.1:{free_port()}", queue_max_receives=2
    )
    client = app.test_client()
    media = upload(client, auth, png_bytes(20_000), "x.png")
    work(svc, lambda: svc.queue.stats().dead == 1)
    view = client.get(f"/api/media/{media['mediaId']}", headers=auth).get_json()
    assert view["status"] == "failed" and view["url"] is None
    assert "scan gave no verdict" in view["error"]


# -- webhooks ----------------------------------------------------------------------------------------
def test_webhooks_are_signed_retried_and_deduplicable(tmp_path):
    with Receiver() as receiver:
        receiver.fail_next = 1  # the first delivery meets a 503 and is retried
        app, svc, auth = gateway(tmp_path, webhook_url=receiver.url, webhook_secret=SECRET)
        client = app.test_client()
        media = upload(client, auth, samples.png())
        work(svc, lambda: len(receiver.unique()) == 2)
        assert client.delete(f"/api/media/{media['mediaId']}", headers=auth).status_code == 204
        work(svc, lambda: len(receiver.unique()) == 3)
    got = receiver.unique()
    mid = media["mediaId"]
    assert set(got) == {f"{mid}.media.stored", f"{mid}.media.ready", f"{mid}.media.deleted"}
    assert got[f"{mid}.media.ready"]["data"] == {
        "mediaId": mid,
        "projectId": "p1",
        "tenant": None,
        "owner": "alice",
        "status": "ready",
    }
    assert receiver.rejected == 0


# -- live status ---------------------------------------------------------------------------------------
def test_the_event_stream_follows_the_media_until_ready(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    media = upload(client, auth, samples.png())
    done = threading.Thread(target=work, args=(svc, settled(svc, media["mediaId"])))
    response = client.get(f"/api/media/{media['mediaId']}/events", headers=auth, buffered=False)
    assert response.status_code == 200 and response.mimetype == "text/event-stream"
    done.start()
    events = [
        json.loads(line[len("data: ") :])
        for line in b"".join(response.response).decode().splitlines()
        if line.startswith("data: ")
    ]
    response.close()  # as every WSGI server does
    done.join()
    statuses = [e["status"] for e in events]
    assert statuses[0] == "stored" and statuses[-1] == "ready"
    assert [e["version"] for e in events] == sorted({e["version"] for e in events})


def test_long_polling_answers_when_the_version_changes(tmp_path):
    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    media = upload(client, auth, samples.png())
    timer = threading.Timer(0.5, work, args=(svc, settled(svc, media["mediaId"])))
    timer.start()
    answer = client.get(
        f"/api/media/{media['mediaId']}?waitForChange=0&timeout=30", headers=auth
    ).get_json()
    timer.join()
    assert answer["version"] > 0
    same = client.get(
        f"/api/media/{media['mediaId']}?waitForChange=9999&timeout=1", headers=auth
    ).get_json()
    assert same["status"] == "ready"
    for bad in ("x", "0&timeout=0", "0&timeout=61"):
        refused = client.get(f"/api/media/{media['mediaId']}?waitForChange={bad}", headers=auth)
        assert refused.status_code == 400 and refused.get_json()["error"]["code"] == "invalid_wait"


def test_event_streams_are_bounded(tmp_path):
    app, _, auth = gateway(tmp_path, max_event_streams=1, processing=False)
    client = app.test_client()
    media = upload(client, auth, samples.png())
    first = client.get(f"/api/media/{media['mediaId']}/events", headers=auth, buffered=False)
    assert first.status_code == 200
    next(first.response)  # the stream is open
    second = client.get(f"/api/media/{media['mediaId']}/events", headers=auth)
    assert second.status_code == 503 and second.get_json()["error"]["code"] == "too_many_streams"
    first.close()


def test_head_requests_and_unread_streams_give_their_slot_back(tmp_path):
    app, _, auth = gateway(tmp_path, max_event_streams=1, processing=False)
    client = app.test_client()
    url = f"/api/media/{upload(client, auth, samples.png())['mediaId']}/events"
    for _ in range(3):
        head = client.head(url, headers=auth)
        assert head.status_code == 200 and head.mimetype == "text/event-stream"
        head.close()  # as every WSGI server does
    unread = client.get(url, headers=auth, buffered=False)
    assert unread.status_code == 200
    unread.close()  # the client went away before the first event
    opened = client.get(url, headers=auth, buffered=False)
    assert opened.status_code == 200
    assert next(opened.response).startswith(b"event: media")
    opened.close()


# -- S3 and SQS (moto) -----------------------------------------------------------------------------------
def sqs_gateway(tmp_path, moto_url, **overrides):
    from support import unique

    return gateway(
        tmp_path,
        backend="s3",
        moto_url=moto_url,
        sqs_endpoint_url=moto_url,
        queue_url=f"sqs://{unique('jobs')}",
        **overrides,
    )


def initiate_one(client, auth, content: bytes) -> dict:
    """A direct upload of one PNG ``a.png`` in project p1: its item (upload id, presigned PUT)."""
    answer = client.post(
        "/api/uploads/initiate",
        headers=auth,
        json={
            "projectId": "p1",
            "files": [{"filename": "a.png", "contentType": "image/png", "size": len(content)}],
        },
    )
    [item] = answer.get_json()["uploads"]
    return item


def test_on_s3_and_sqs_a_form_upload_becomes_ready(tmp_path, moto_url):
    app, svc, auth = sqs_gateway(tmp_path, moto_url)
    client = app.test_client()
    media = upload(client, auth, samples.photo(800, 600))
    work(svc, settled(svc, media["mediaId"]))
    record = svc.records.get(media["mediaId"])
    assert record.status is Status.READY and len(record.variants) == 2
    for variant in record.variants:
        assert read_object(svc.store, variant.key).startswith(b"RIFF")


@pytest.mark.parametrize("scanned", [False, True], ids=["no-scanner", "quarantine"])
def test_a_direct_upload_whose_client_never_completes_is_stored_by_its_s3_event(
    tmp_path, moto_url, request, scanned
):
    """Also with scanning on, when staging keys live under the quarantine's prefix."""
    import requests

    more = {"clamd_url": request.getfixturevalue("clamd_url")} if scanned else {}
    app, svc, auth = sqs_gateway(tmp_path, moto_url, **more)
    client = app.test_client()
    content = samples.png(600, 400)
    item = initiate_one(client, auth, content)
    put = requests.put(item["put"]["url"], data=content, headers=item["put"]["headers"], timeout=30)
    assert put.status_code == 200
    # No complete: S3's notification (after its s3:TestEvent) reaches the queue, the worker
    # verifies the staging object as complete would, stores it and processes it.
    work(svc, settled(svc, item["uploadId"]))
    record = svc.records.get(item["uploadId"])
    assert record.status is Status.READY and record.size == len(content)
    assert read_object(svc.store, record.s3_key) == content
    # The client's late complete gets the same answer as if it had called it first.
    late = client.post(f"/api/uploads/{item['uploadId']}/complete", headers=auth)
    assert late.status_code == 200 and late.get_json()["status"] == "ready"


@pytest.mark.parametrize("when", ["before-the-event", "with-the-event"])
def test_a_presigned_put_is_processed_once_when_its_client_completes_too(tmp_path, moto_url, when):
    """S3's notification (through SQS) and the client's complete both try to store the upload:
    one stores it (compare-and-set), the other finds it stored. One media.stored, one job, one
    media.ready, whichever comes first."""
    import requests
    from test_s3_events import Recorder

    from gateway.media.events import EventType
    from gateway.storage.keys import staging_key

    app, svc, auth = sqs_gateway(tmp_path, moto_url)
    recorder = Recorder(svc)
    client = app.test_client()
    content = samples.png(600, 400)
    item = initiate_one(client, auth, content)
    media_id = item["uploadId"]
    put = requests.put(item["put"]["url"], data=content, headers=item["put"]["headers"], timeout=30)
    assert put.status_code == 200
    completed = []

    def complete():
        completed.append(client.post(f"/api/uploads/{media_id}/complete", headers=auth))

    if when == "before-the-event":
        complete()
        work(svc, settled(svc, media_id))
    else:  # the worker takes the event while the client completes
        racer = threading.Thread(target=complete)
        racer.start()
        work(svc, settled(svc, media_id))
        racer.join()
    [answer] = completed
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["status"] in ("stored", "processing", "ready")
    # Whatever is still on the queue (the event, when complete won) is worked off: no-ops.
    work(svc, lambda: svc.queue.stats().visible == 0 and svc.queue.stats().in_flight == 0)
    record = svc.records.get(media_id)
    assert record.status is Status.READY and read_object(svc.store, record.s3_key) == content
    assert svc.store.head(staging_key(record.s3_key)) is None
    assert recorder.of(media_id) == [EventType.STORED, EventType.READY]
    assert svc.queue.stats().dead == 0


def test_foreign_and_duplicate_s3_events_are_no_ops(tmp_path, moto_url):
    app, svc, auth = sqs_gateway(tmp_path, moto_url)
    media = upload(app.test_client(), auth, samples.png())
    work(svc, settled(svc, media["mediaId"]))
    ready = svc.records.get(media["mediaId"])
    prefix = svc.store.prefix
    for body in (
        {"Event": "s3:TestEvent", "Bucket": "b"},
        {
            "Records": [
                {
                    "eventName": "ObjectRemoved:Delete",
                    "s3": {"object": {"key": f"{prefix}/{ready.s3_key}.upload"}},
                }
            ]
        },
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:CompleteMultipartUpload",
                    "s3": {"object": {"key": f"{prefix}/{ready.s3_key}"}},
                }
            ]
        },
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"object": {"key": f"{prefix}/{ready.s3_key}.upload"}},
                }
            ]
        },
        {
            "Records": [
                {
                    "eventName": "ObjectCreated:Put",
                    "s3": {"object": {"key": "elsewhere/some+file.png"}},
                }
            ]
        },
        {"something": "else"},
    ):
        svc.queue.send(body)
    work(svc, lambda: svc.queue.stats().visible == 0 and svc.queue.stats().in_flight == 0)
    assert svc.records.get(media["mediaId"]) == ready
    assert svc.queue.stats().dead == 0


@pytest.mark.parametrize("decodable", [True, False], ids=["ready", "undecodable"])
def test_media_stored_without_a_sha256_get_it_from_processing(tmp_path, decodable):
    """Also when the file cannot be decoded: the media ends failed, with the hash of its bytes."""
    import base64
    import hashlib

    app, svc, auth = gateway(tmp_path)
    client = app.test_client()
    data = samples.photo(1600, 1200) if decodable else samples.photo(1600, 1200)[:30_000]
    tus = {"Tus-Resumable": "1.0.0", **auth}
    meta = "projectId " + base64.b64encode(b"p1").decode()
    partials = []
    for piece in (data[:10_000], data[10_000:]):  # a concatenation: joined, never hashed
        created = client.post("/api/tus/", data=piece, headers={
            **tus, "Upload-Length": str(len(piece)), "Upload-Metadata": meta,
            "Upload-Concat": "partial", "Content-Type": "application/offset+octet-stream"})  # fmt: skip
        assert created.status_code == 201
        partials.append(created.headers["Location"])
    final = client.post("/api/tus/", headers={
        **tus, "Upload-Metadata": meta, "Upload-Concat": "final;" + " ".join(partials)})  # fmt: skip
    assert final.status_code == 201, final.get_json()
    media_id = final.headers["Location"].rsplit("/", 1)[1]
    assert svc.records.get(media_id).sha256 == ""
    work(svc, settled(svc, media_id))
    record = svc.records.get(media_id)
    assert record.status is (Status.READY if decodable else Status.FAILED), record.reason
    assert record.sha256 == hashlib.sha256(data).hexdigest()
