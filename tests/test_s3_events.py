"""Bucket notifications: the records read as arrivals (AWS through SQS, Ceph RGW pushed over HTTP),
and POST /api/s3-events, the receiver a Ceph topic's push endpoint posts to. The requests here are
shaped as Ceph RGW 16 (Pacific) sends them (captured from one: the record below, POSTed as
application/json with the push-endpoint URL's userinfo as Basic auth); the receiver reads any
Content-Type, so most of them send none."""

from __future__ import annotations

import base64
import json

import media_samples as samples
import pytest
import requests
from test_pipeline import gateway, settled, work

from gateway.media.events import EventType
from gateway.media.lifecycle import Status
from gateway.storage.keys import staging_key
from gateway.uploads.s3_events import (
    MalformedEvent,
    arrived_uploads,
    created_keys,
    is_s3_event,
    relative_key,
    store_prefixes,
)

from conftest import make_settings
from support import read_object

SECRET = "s3-events-secret-of-32-characters-at-least"
ID = "0123456789abcdef0123456789abcdef"
KEY = f"projects/p1/media/{ID}.png"


def ceph_record(key: str, *, name: str = "ObjectCreated:Put", bucket: str = "b") -> dict:
    """One record as RGW 16 pushed it: the key as it is, an empty region, a numeric size, the
    request's metadata and tags as lists."""
    return {
        "eventVersion": "2.2",
        "eventSource": "ceph:s3",
        "awsRegion": "",
        "eventTime": "2026-12-07T16:20:31.427893Z",
        "eventName": name,
        "userIdentity": {"principalId": "gateway"},
        "requestParameters": {"sourceIPAddress": ""},
        "responseElements": {
            "x-amz-request-id": "7f1c5b55-4b1a-4e37-9d46-1b4b8c6f6f1a.4137.11",
            "x-amz-id-2": "1029-default-default",
        },
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "gateway-uploads",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "gateway"},
                "arn": f"arn:aws:s3:::{bucket}",
                "id": "7f1c5b55-4b1a-4e37-9d46-1b4b8c6f6f1a.4137.1",
            },
            "object": {
                "key": key,
                "size": 1024,
                "eTag": "37b51d194a7513e45b56f6524f2d51f2",
                "versionId": "",
                "sequencer": "01EE166BD66FC100",
                "metadata": [
                    {"key": "x-amz-content-sha256", "val": "UNSIGNED-PAYLOAD"},
                    {"key": "x-amz-date", "val": "20261207T173352Z"},
                ],
                "tags": [],
            },
        },
        "eventId": "1607354431.427893.37b51d194a7513e45b56f6524f2d51f2",
        "opaqueData": "",
    }


def aws_record(key: str, *, name: str = "ObjectCreated:Put") -> dict:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventName": name,
        "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 1024, "eTag": "x"}},
    }


# -- records read as arrivals -------------------------------------------------------------------------
def test_keys_are_decoded_as_each_store_encodes_them():
    """AWS URL-encodes keys (+ for a space); Ceph sends them as they are."""
    key = "up loads/a+b%2F.png"
    aws = {"Records": [aws_record("up+loads/a%2Bb%252F.png")]}
    ceph = {"Records": [ceph_record(key)]}
    assert created_keys(aws) == [key]
    assert created_keys(ceph) == [key]


@pytest.mark.parametrize(
    "name, created",
    [
        ("ObjectCreated:Put", True),
        ("ObjectCreated:Post", True),
        ("ObjectCreated:Copy", True),
        ("ObjectCreated:CompleteMultipartUpload", True),
        ("s3:ObjectCreated:Put", True),  # older Ceph releases name events so
        ("ObjectRemoved:Delete", False),
        ("s3:ObjectRemoved:Delete", False),
        ("ObjectCreated", False),  # no operation: not a creation event Ceph or AWS send
    ],
)
def test_only_creation_events_are_arrivals(name, created):
    assert created_keys({"Records": [ceph_record("k", name=name)]}) == (["k"] if created else [])


def test_arrivals_are_staging_keys_under_the_gateways_prefixes_once_each():
    prefixes = store_prefixes("/uploads", "/uploads-quarantine")
    other = "fedcba9876543210fedcba9876543210"
    body = {
        "Records": [
            ceph_record(f"uploads/{KEY}.upload"),
            ceph_record(f"uploads/{KEY}.upload"),  # a duplicate in one event: once
            ceph_record(f"uploads-quarantine/projects/p1/media/{other}.jpg.upload"),
            ceph_record(f"uploads/{KEY}"),  # the gateway's own copy: no news
            ceph_record(f"uploads/projects/p1/media/{ID}/thumb-320.webp"),  # a variant
            ceph_record(f"elsewhere/{KEY}.upload"),  # not under the gateway's prefixes
            ceph_record(f"uploads/{KEY}.upload", name="ObjectRemoved:Delete"),
            ceph_record("uploads/projects/p1/media/not-an-id.png.upload"),
        ]
    }
    assert arrived_uploads(body, prefixes) == [ID, other]
    # Each alone: only a staging key with a media id is an arrival.
    arrivals = [arrived_uploads({"Records": [record]}, prefixes) for record in body["Records"]]
    assert arrivals == [[ID], [ID], [other], [], [], [], [], []]
    assert arrived_uploads({"Event": "s3:TestEvent", "Bucket": "b"}, prefixes) == []
    # At the bucket's root (no prefix), every key is the gateway's to read.
    assert arrived_uploads({"Records": [ceph_record(f"{KEY}.upload")]}, ("",)) == [ID]


def test_the_empty_prefix_is_tried_last():
    assert store_prefixes("", "/media/") == ("media", "")
    assert relative_key("media/x", ("media", "")) == "x"
    assert relative_key("other/x", ("media", "")) == "other/x"
    assert relative_key("mediax/y", ("media",)) is None


NOT_AN_OBJECT = "^The body is not a JSON object.$"
NOT_A_LIST = "^Records must be a list.$"
NOT_A_RECORD = "^Each record must be an object.$"
NO_NAME_OR_KEY = "^Each record needs an eventName and an s3.object.key.$"


@pytest.mark.parametrize(
    "body, reason",
    [
        ([], NOT_AN_OBJECT),
        ("Records", NOT_AN_OBJECT),
        ({"Records": {}}, NOT_A_LIST),
        ({"nothing": "here"}, NOT_A_LIST),
        ({"Event": "s3:OtherEvent"}, NOT_A_LIST),
        ({"Records": [1]}, NOT_A_RECORD),
        ({"Records": [aws_record("k"), "record"]}, NOT_A_RECORD),
        ({"Records": [{"s3": {"object": {"key": "k"}}}]}, NO_NAME_OR_KEY),
        ({"Records": [{"eventName": 5, "s3": {"object": {"key": "k"}}}]}, NO_NAME_OR_KEY),
        (
            {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": {"key": 5}}}]},
            NO_NAME_OR_KEY,
        ),
        ({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"object": []}}]}, NO_NAME_OR_KEY),
        ({"Records": [{"eventName": "ObjectCreated:Put", "s3": []}]}, NO_NAME_OR_KEY),
        ({"Records": [{"eventName": "ObjectCreated:Put"}]}, NO_NAME_OR_KEY),
    ],
)
def test_a_body_not_shaped_as_an_event_is_malformed(body, reason):
    with pytest.raises(MalformedEvent, match=reason):
        created_keys(body)


@pytest.mark.parametrize(
    "body, event",
    [
        ({"Records": []}, True),
        ({"Event": "s3:TestEvent", "Bucket": "b"}, True),
        ({"Event": "s3:ObjectCreated:Put"}, False),
        ({"type": "media.ready", "id": "m"}, False),  # a job of the gateway's own
        ({}, False),
    ],
)
def test_what_the_queue_reads_as_an_s3_event(body, event):
    assert is_s3_event(body) is event


def test_every_record_is_read_whatever_comes_before_it():
    """A record that is not a creation is skipped, not the end of the event."""
    body = {
        "Records": [
            aws_record("a", name="ObjectRemoved:Delete"),
            aws_record("b"),
            ceph_record("c", name="ObjectRemoved:DeleteMarkerCreated"),
            ceph_record("d+e"),
        ]
    }
    assert created_keys(body) == ["b", "d+e"]
    # Only the test event's own name is the test event: other fields are an event's records.
    assert created_keys({"Event": "s3:TestEvent", "Records": [aws_record("x")]}) == []
    assert created_keys({"Event": "other", "Records": [aws_record("x")]}) == ["x"]


class FakeQueue:
    def __init__(self):
        self.sent = []

    def send(self, body, *, delay=0):
        self.sent.append(body)


class FakeDirect:
    def __init__(self):
        self.completed = []

    def complete_from_event(self, media_id):
        self.completed.append(media_id)


def test_the_receiver_queues_an_event_with_arrivals_as_it_came():
    from gateway.uploads.s3_events import EventReceiver

    queue, direct = FakeQueue(), FakeDirect()
    receiver = EventReceiver(direct, queue, ("uploads", ""))
    event = {"Records": [ceph_record(f"uploads/{KEY}.upload"), ceph_record(f"uploads/{KEY}")]}
    assert receiver.receive(event) == [ID]
    assert receiver.receive({"Records": [ceph_record(f"uploads/{KEY}")]}) == []
    assert queue.sent == [event] and direct.completed == []  # the worker completes it


def test_with_no_worker_the_receiver_completes_each_arrival():
    from gateway.uploads.s3_events import EventReceiver

    other = "fedcba9876543210fedcba9876543210"
    direct = FakeDirect()
    receiver = EventReceiver(direct, None, ("",))
    keys = [f"{KEY}.upload", f"projects/p1/media/{other}.jpg.upload", f"{KEY}.upload"]
    assert receiver.receive({"Records": [ceph_record(key) for key in keys]}) == [ID, other]
    assert direct.completed == [ID, other]


def test_without_direct_uploads_there_is_nothing_to_receive():
    from gateway.uploads.s3_events import EventReceiver

    queue = FakeQueue()
    receiver = EventReceiver(None, queue, ("",))
    assert receiver.receive({"Records": [ceph_record(f"{KEY}.upload")]}) == []
    assert queue.sent == []
    with pytest.raises(MalformedEvent):
        receiver.receive({"Records": "no"})


# -- the receiver: authentication and shape (no store needed) ------------------------------------------
def basic(password: str, user: str = "ceph") -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def post_event(client, body, headers):
    """The JSON text, with no Content-Type unless ``headers`` give one (RGW sends
    application/json; the receiver reads any)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post("/api/s3-events", data=data, headers=headers)


@pytest.fixture
def local_client(tmp_path):
    from gateway import create_app

    app = create_app(make_settings(tmp_path, s3_events_secret=SECRET))
    app.config["TESTING"] = True
    return app.test_client()


def test_without_a_secret_the_receiver_is_not_there(tmp_path):
    from gateway import create_app

    client = create_app(make_settings(tmp_path)).test_client()
    answer = post_event(client, {"Records": []}, basic(SECRET))
    assert answer.status_code == 404 and answer.get_json()["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic(SECRET[:-1] + "x"),
        basic(SECRET[:-1]),
        basic(SECRET + "x"),
        {"Authorization": f"Bearer {SECRET}"},
        {"Authorization": "Basic " + base64.b64encode(SECRET.encode()).decode()},  # no colon
        {"Authorization": "Basic not*base64"},
        {"Authorization": "Basic"},
    ],
    ids=["none", "wrong", "short", "long", "bearer", "no-colon", "not-base64", "empty"],
)
def test_the_receiver_wants_the_secret_as_the_basic_password(local_client, headers):
    answer = post_event(local_client, {"Records": [ceph_record(f"{KEY}.upload")]}, headers)
    assert answer.status_code == 401
    assert answer.get_json()["error"]["code"] == "event_secret_invalid"
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")


@pytest.mark.parametrize("user", ["ceph", "", "any one"])
def test_any_user_name_goes_with_the_secret(local_client, user):
    headers = {**basic(SECRET, user), "Content-Type": "application/json"}  # as RGW 16 sends
    answer = post_event(local_client, {"Records": [ceph_record("elsewhere")]}, headers)
    assert answer.status_code == 200 and answer.get_json() == {"success": True, "arrivals": []}


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"Records": {}}', b'{"Records": [{"eventName": 1}]}', b""]
)
def test_a_body_that_is_not_an_event_is_400(local_client, body):
    answer = post_event(local_client, body, basic(SECRET))
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] in ("invalid_event", "invalid_json")
    if body.startswith(b"{"):
        assert answer.get_json()["error"]["code"] == "invalid_event"


# -- the receiver with a store: a direct upload without complete --------------------------------------
class Recorder:
    """Every event the gateway announces, on top of what it does with them."""

    def __init__(self, svc):
        self.then = svc.announcer.publisher
        self.events = []
        svc.announcer.publisher = self

    def publish(self, events):
        self.events += events
        self.then.publish(events)

    def of(self, media_id):
        return [event.type for event in self.events if event.media_id == media_id]


def presigned_put(client, auth, content, **promise):
    answer = client.post(
        "/api/uploads/initiate",
        headers=auth,
        json={
            "projectId": "p1",
            "files": [
                {"filename": "a.png", "contentType": "image/png", "size": len(content), **promise}
            ],
        },
    )
    assert answer.status_code == 201, answer.get_json()
    [item] = answer.get_json()["uploads"]
    put = requests.put(item["put"]["url"], data=content, headers=item["put"]["headers"], timeout=30)
    assert put.status_code == 200
    return item["uploadId"]


def pushed(svc, media_id, name="ObjectCreated:Put"):
    record = svc.records.get(media_id)
    bucket = svc.settings.storage_url.split("/")[2]
    return {
        "Records": [
            ceph_record(svc.store.full_key(staging_key(record.s3_key)), name=name, bucket=bucket)
        ]
    }


def test_a_pushed_event_stores_and_processes_an_upload_whose_client_never_completes(
    tmp_path, moto_url
):
    app, svc, auth = gateway(tmp_path, "s3", moto_url, s3_events_secret=SECRET)
    recorder = Recorder(svc)
    client = app.test_client()
    content = samples.png(600, 400)
    media_id = presigned_put(client, auth, content)
    answer = post_event(client, pushed(svc, media_id), basic(SECRET))
    assert answer.status_code == 200 and answer.get_json()["arrivals"] == [media_id]
    work(svc, settled(svc, media_id))
    record = svc.records.get(media_id)
    assert record.status is Status.READY and record.size == len(content)
    assert read_object(svc.store, record.s3_key) == content
    assert svc.store.head(staging_key(record.s3_key)) is None  # copied, then removed
    # Ceph pushes again (a persistent topic retrying), the client completes late: no-ops.
    assert post_event(client, pushed(svc, media_id), basic(SECRET)).status_code == 200
    late = client.post(f"/api/uploads/{media_id}/complete", headers=auth)
    assert late.status_code == 200 and late.get_json()["status"] == "ready"
    work(svc, lambda: svc.queue.stats().visible == 0 and svc.queue.stats().in_flight == 0)
    assert recorder.of(media_id) == [EventType.STORED, EventType.READY]  # processed once
    assert svc.queue.stats().dead == 0


def test_a_pushed_event_is_checked_as_complete_checks(tmp_path, moto_url):
    """The store holds other bytes than promised (a SHA-256 that differs): rejected, removed."""
    import hashlib

    app, svc, auth = gateway(tmp_path, "s3", moto_url, s3_events_secret=SECRET)
    client = app.test_client()
    content = samples.png(300, 200)
    other = hashlib.sha256(content + b"x").hexdigest()
    answer = client.post(
        "/api/uploads/initiate",
        headers=auth,
        json={
            "projectId": "p1",
            "files": [
                {
                    "filename": "a.png",
                    "contentType": "image/png",
                    "size": len(content),
                    "sha256": other,
                }
            ],
        },
    )
    [item] = answer.get_json()["uploads"]
    # moto verifies no checksum header: the PUT stores the bytes whatever the promise.
    put = requests.put(item["put"]["url"], data=content, headers=item["put"]["headers"], timeout=30)
    assert put.status_code == 200
    media_id = item["uploadId"]
    assert post_event(client, pushed(svc, media_id), basic(SECRET)).status_code == 200
    work(svc, lambda: svc.records.get(media_id).status is not Status.PENDING)
    record = svc.records.get(media_id)
    assert record.status is Status.REJECTED
    assert record.reason == "The SHA-256 of what S3 holds differs from the one promised."
    assert svc.store.head(staging_key(record.s3_key)) is None
    assert svc.store.head(record.s3_key) is None


def test_with_processing_off_the_receiver_completes_the_upload_itself(tmp_path, moto_url):
    app, svc, auth = gateway(tmp_path, "s3", moto_url, s3_events_secret=SECRET, processing=False)
    client = app.test_client()
    content = samples.png(300, 200)
    media_id = presigned_put(client, auth, content)
    answer = post_event(client, pushed(svc, media_id, "s3:ObjectCreated:Post"), basic(SECRET))
    assert answer.status_code == 200 and answer.get_json()["arrivals"] == [media_id]
    record = svc.records.get(media_id)
    assert record.status is Status.STORED and read_object(svc.store, record.s3_key) == content


# -- through nginx and gunicorn, posted by curl as Ceph's libcurl posts --------------------------------
def test_a_push_through_nginx_and_gunicorn_with_the_secret_in_the_url(tmp_path, moto_url):
    """The push endpoint URL carries the secret as its userinfo, as a Ceph topic's does; curl
    (libcurl, which RGW posts with) turns it into Basic auth. POST of an uploaded body with no
    Content-Type (``-X POST -T``; RGW sends application/json). A worker process then stores
    and processes the upload; the access log never holds the secret."""
    import subprocess

    from e2e_harness import gateway_stack, poll

    with gateway_stack(
        tmp_path / "stack", mode="s3", moto_url=moto_url, GATEWAY_S3_EVENTS_SECRET=SECRET
    ) as stack:
        svc = stack.svc
        content = samples.png(400, 300)
        answer = requests.post(
            stack.url + "/api/uploads/initiate",
            headers=stack.auth,
            json={
                "projectId": "p1",
                "files": [{"filename": "a.png", "contentType": "image/png", "size": len(content)}],
            },
            timeout=30,
        )
        [item] = answer.json()["uploads"]
        put = requests.put(
            item["put"]["url"], data=content, headers=item["put"]["headers"], timeout=30
        )
        assert put.status_code == 200
        media_id = item["uploadId"]
        event = tmp_path / "event.json"
        event.write_text(json.dumps(pushed(svc, media_id)))
        host = stack.url.split("://", 1)[1]

        def push(secret):
            done = subprocess.run(
                [stack.curl_bin, "-sS", "-X", "POST", "-T", str(event), "-w", "\n%{http_code}",
                 f"http://ceph:{secret}@{host}/api/s3-events"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            body, status = done.stdout.rsplit("\n", 1)
            return int(status), json.loads(body)

        assert push(SECRET[::-1])[0] == 401
        assert push(SECRET) == (200, {"success": True, "arrivals": [media_id]})
        stack.start_worker()
        ready = poll(lambda: svc.records.get(media_id).status is Status.READY, timeout=60)
        assert ready, stack.logs() + str(stack.worker_log())
        assert read_object(svc.store, svc.records.get(media_id).s3_key) == content
        logged = (stack.run_dir / "access.log").read_text() + (
            stack.tmp / "gunicorn.log"
        ).read_text()
        assert "/api/s3-events" in logged and SECRET not in logged


# -- no 5xx for any push ------------------------------------------------------------------------------
def _event_bodies():
    from hypothesis import strategies as st
    from test_no_5xx import json_bodies, json_values, odd_text

    names = st.sampled_from(
        ["ObjectCreated:Put", "s3:ObjectCreated:Post", "ObjectRemoved:Delete", "ObjectCreated"]
    )
    keys = st.one_of(
        st.sampled_from([f"{KEY}.upload", f"uploads/{KEY}.upload", KEY, f"{KEY}%2Eupload"]),
        odd_text,
    )
    field = lambda good: st.one_of(good, json_values)
    record = st.fixed_dictionaries(
        {
            "eventName": field(names),
            "eventSource": field(st.sampled_from(["ceph:s3", "aws:s3", ""])),
            "s3": field(st.fixed_dictionaries({"object": field(st.fixed_dictionaries(
                {"key": field(keys)}))})),
        }
    )  # fmt: skip
    events = st.one_of(
        st.lists(record, max_size=4).map(lambda records: {"Records": records}),
        st.fixed_dictionaries({"Records": json_values}),
        st.just({"Event": "s3:TestEvent", "Bucket": "b"}),
    )
    return st.one_of(events.map(lambda body: json.dumps(body).encode()), json_bodies)


def test_no_push_gets_a_5xx(local_client):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from test_no_5xx import check, header_text

    auths = st.one_of(
        st.just(basic(SECRET)), st.builds(basic, header_text), st.just({}),
        header_text.map(lambda value: {"Authorization": value}),
    )  # fmt: skip

    @settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
    @given(body=_event_bodies(), headers=auths, content_type=st.sampled_from([None, "text/x"]))
    def push(body, headers, content_type):
        if content_type:
            headers = {**headers, "Content-Type": content_type}
        answer = post_event(local_client, body, headers)
        check(answer)
        assert answer.status_code in (200, 400, 401, 413), answer.get_json()

    push()
