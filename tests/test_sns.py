"""SNS fan-out: every media event published to GATEWAY_SNS_TOPIC_ARN from the deliveries' lane,
on a moto server, with an SQS queue subscribed to the topic (as a WebSocket, push or e-mail
service would be): each event once, its attributes right, a failing publication retried and
never lost."""

from __future__ import annotations

import json
import logging

import media_samples as samples
import pytest
from test_pipeline import gateway, settled, upload, work

from gateway.media.lifecycle import Status
from gateway.processing.sns import PublishFailed, SnsPublisher, message_attributes

from support import unique

pytestmark = pytest.mark.timeout(180)


def aws(moto_url, service):
    import boto3

    return boto3.client(service, endpoint_url=moto_url, region_name="us-east-1")


class Subscriber:
    """An SQS queue subscribed to the topic (raw delivery off: SNS's JSON envelope, as SQS
    subscribers get it by default)."""

    def __init__(self, moto_url, topic_arn, filter_policy=None):
        self.sqs = aws(moto_url, "sqs")
        self.url = self.sqs.create_queue(QueueName=unique("fanout"))["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])
        attributes = {"FilterPolicy": json.dumps(filter_policy)} if filter_policy else {}
        aws(moto_url, "sns").subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=arn["Attributes"]["QueueArn"],
            Attributes=attributes,
        )
        self.received = []

    def drain(self):
        while True:
            answer = self.sqs.receive_message(QueueUrl=self.url, MaxNumberOfMessages=10)
            messages = answer.get("Messages", [])
            if not messages:
                return self.received
            for message in messages:
                envelope = json.loads(message["Body"])
                attributes = {k: v["Value"] for k, v in envelope["MessageAttributes"].items()}
                self.received.append((json.loads(envelope["Message"]), attributes))
                self.sqs.delete_message(QueueUrl=self.url, ReceiptHandle=message["ReceiptHandle"])


def sns_gateway(tmp_path, moto_url, topic_arn):
    return gateway(tmp_path, sns_topic_arn=topic_arn, sns_endpoint_url=moto_url)


def test_every_media_event_is_published_once_with_its_attributes(tmp_path, moto_url):
    topic = aws(moto_url, "sns").create_topic(Name=unique("media"))["TopicArn"]
    everything = Subscriber(moto_url, topic)
    failures = Subscriber(moto_url, topic, {"event": ["media.failed"], "projectId": ["p1"]})
    app, svc, auth = sns_gateway(tmp_path, moto_url, topic)
    client = app.test_client()
    good = upload(client, auth, samples.png(), name="a.png")["mediaId"]
    bad = upload(client, auth, samples.photo(1600, 1200)[:30_000], name="b.jpg")["mediaId"]
    work(svc, lambda: settled(svc, good)() and settled(svc, bad)())
    assert svc.records.get(good).status is Status.READY
    assert svc.records.get(bad).status is Status.FAILED
    assert client.delete(f"/api/media/{good}", headers=auth).status_code == 204
    work(svc, lambda: svc.webhook_queue.stats().visible == 0)
    work(svc, lambda: svc.webhook_queue.stats().in_flight == 0)

    received = everything.drain()
    seen = sorted((message["id"], attributes["event"]) for message, attributes in received)
    assert seen == sorted(
        [
            (f"{good}.media.stored", "media.stored"),
            (f"{good}.media.ready", "media.ready"),
            (f"{good}.media.deleted", "media.deleted"),
            (f"{bad}.media.stored", "media.stored"),
            (f"{bad}.media.failed", "media.failed"),
        ]
    )
    for message, attributes in received:
        assert attributes == {
            "event": message["type"],
            "eventId": message["id"],
            "projectId": "p1",
        }  # no tenant: no attribute (SNS refuses an empty value)
        assert message["data"]["projectId"] == "p1" and message["data"]["owner"] == "alice"
        assert message["data"]["mediaId"] in (good, bad)
    [(failed, _)] = failures.drain()  # a subscriber filtering by event and project
    assert failed["id"] == f"{bad}.media.failed" and failed["data"]["reason"]
    assert svc.webhook_queue.stats().dead == 0


def test_a_failing_publication_is_retried_and_never_lost(tmp_path, moto_url):
    """The topic does not exist at first (SNS answers NotFound): the job fails, is retried with
    backoff, and is published once the topic is there; the processing lane never waited."""
    name = unique("late")
    topic = f"arn:aws:sns:us-east-1:123456789012:{name}"
    app, svc, auth = gateway(
        tmp_path, sns_topic_arn=topic, sns_endpoint_url=moto_url, queue_max_receives=20
    )
    media_id = upload(app.test_client(), auth, samples.png(), name="a.png")["mediaId"]

    # Both publications (stored, ready) fail at least once (their backoff is short here); the
    # media meanwhile becomes ready.
    def both_failed_once():
        receives = _receives(svc)
        return settled(svc, media_id)() and len(receives) == 2 and min(receives) >= 1

    work(svc, both_failed_once)
    assert svc.webhook_queue.stats().dead == 0
    sns = aws(moto_url, "sns")
    assert sns.create_topic(Name=name)["TopicArn"] == topic
    subscriber = Subscriber(moto_url, topic)
    work(svc, lambda: svc.webhook_queue.stats().visible + svc.webhook_queue.stats().in_flight == 0)
    ids = sorted(message["id"] for message, _ in subscriber.drain())
    assert ids == [f"{media_id}.media.ready", f"{media_id}.media.stored"]
    assert svc.webhook_queue.stats().dead == 0


def _receives(svc):
    """How often each message waiting on the deliveries' queue (SQLite) was received."""
    import sqlite3

    path = svc.settings.effective_webhook_queue_url[len("sqlite:///") :]
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT receive_count FROM queue_messages ORDER BY receive_count")
        return [count for (count,) in rows]


def test_a_publication_failure_is_an_exception_the_worker_retries(moto_url):
    publisher = SnsPublisher(aws(moto_url, "sns"), "arn:aws:sns:us-east-1:123456789012:nowhere")
    with pytest.raises(PublishFailed, match="SNS refused the message: NotFound"):
        publisher.publish("m.media.ready", {"type": "media.ready", "data": {}})


def test_the_attributes_of_a_tenants_event():
    payload = {"type": "media.infected", "data": {"projectId": "p9", "tenant": "acme"}}
    assert message_attributes("m.media.infected", payload) == {
        "event": {"DataType": "String", "StringValue": "media.infected"},
        "eventId": {"DataType": "String", "StringValue": "m.media.infected"},
        "projectId": {"DataType": "String", "StringValue": "p9"},
        "tenant": {"DataType": "String", "StringValue": "acme"},
    }


def test_the_deliveries_lane_sends_each_job_to_its_own_target_only():
    from gateway.processing.deliveries import Deliveries
    from gateway.queue import Message

    class Target:
        def __init__(self):
            self.sent = []

        def deliver(self, event_id, payload):
            self.sent.append(event_id)

        publish = deliver

    def job(kind):
        body = {"type": kind, "id": f"m.{kind}", "event": {"type": "media.ready", "data": {}}}
        return Message(id=kind, body=body, receipt="r", receive_count=1, sent_at=0.0)

    webhook, topic = Target(), Target()
    both = Deliveries(webhook, topic)
    for kind in ("webhook", "sns", "other"):
        both.handle(job(kind))
    assert (webhook.sent, topic.sent) == (["m.webhook"], ["m.sns"])
    # A target no longer configured: its jobs are dropped (logged), not failed forever.
    Deliveries(None, None).handle(job("sns"))
    Deliveries(webhook, None).handle(job("sns"))
    assert (webhook.sent, topic.sent) == (["m.webhook"], ["m.sns"])


def test_a_dead_delivery_is_logged_with_its_kind_id_and_reason(caplog):
    from gateway.processing.deliveries import Deliveries
    from gateway.queue import Message

    sns_job = Message(
        id="q1",
        body={"type": "sns", "id": "m.media.ready"},
        receipt="r",
        receive_count=5,
        sent_at=0.0,
    )
    untyped = Message(id="q2", body={}, receipt="r", receive_count=2, sent_at=0.0)
    lane = Deliveries(None, None)
    with caplog.at_level(logging.ERROR, logger="gateway.processing.deliveries"):
        lane.on_last_failure(sns_job, PublishFailed("SNS is unreachable: ReadTimeoutError"))
        lane.on_last_failure(untyped, RuntimeError("boom"))
    assert [(r.name, r.levelno, r.msg) for r in caplog.records] == [
        (
            "gateway.processing.deliveries",
            logging.ERROR,
            {
                "event": "sns.dead",
                "deliveryId": "m.media.ready",
                "receiveCount": 5,
                "reason": "SNS is unreachable: ReadTimeoutError",
            },
        ),
        (
            "gateway.processing.deliveries",
            logging.ERROR,
            {"event": "delivery.dead", "deliveryId": None, "receiveCount": 2, "reason": "boom"},
        ),
    ]


class FakeSns:
    def __init__(self, fail=None):
        self.fail = fail
        self.calls = []

    def publish(self, **kwargs):
        self.calls.append(kwargs)
        if self.fail is not None:
            raise self.fail
        return {"MessageId": "mid-1"}


def test_a_publication_is_the_webhook_body_with_its_id_and_attributes():
    client = FakeSns()
    topic = "arn:aws:sns:us-east-1:123456789012:media"
    payload = {"type": "media.ready", "timestamp": "t", "data": {"projectId": "p1", "tenant": None}}
    assert SnsPublisher(client, topic).publish("m.media.ready", payload) == "mid-1"
    [call] = client.calls
    assert call["TopicArn"] == topic
    assert json.loads(call["Message"]) == {"id": "m.media.ready", **payload}
    assert call["Message"] == (  # compact: SNS bills and limits messages by their size
        '{"id":"m.media.ready","type":"media.ready","timestamp":"t",'
        '"data":{"projectId":"p1","tenant":null}}'
    )
    assert call["MessageAttributes"] == message_attributes("m.media.ready", payload)
    assert set(call["MessageAttributes"]) == {"event", "eventId", "projectId"}


def test_every_sns_failure_is_a_publish_failure():
    from botocore.exceptions import ClientError, EndpointConnectionError

    refused = ClientError({"Error": {"Code": "AuthorizationError"}}, "Publish")
    with pytest.raises(PublishFailed, match=r"^SNS refused the message: AuthorizationError$"):
        SnsPublisher(FakeSns(refused), "arn").publish("m", {"type": "media.ready"})
    no_code = ClientError({}, "Publish")
    with pytest.raises(PublishFailed, match=r"^SNS refused the message: \?$"):
        SnsPublisher(FakeSns(no_code), "arn").publish("m", {"type": "media.ready"})
    down = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    with pytest.raises(PublishFailed, match=r"^SNS is unreachable: EndpointConnectionError$"):
        SnsPublisher(FakeSns(down), "arn").publish("m", {"type": "media.ready"})


def test_the_sns_client_is_the_topics_regions_and_endpoints(tmp_path):
    from gateway.processing.sns import make_sns_client

    from conftest import make_settings

    settings = make_settings(
        tmp_path,
        sns_topic_arn="arn:aws:sns:eu-west-3:123456789012:media",
        sns_endpoint_url="http://127.0.0.1:9",
        s3_max_attempts=3,
        s3_connect_timeout=2.5,
        s3_read_timeout=7.0,
    )
    client = make_sns_client(settings)
    assert client.meta.region_name == "eu-west-3"
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert (client.meta.config.connect_timeout, client.meta.config.read_timeout) == (2.5, 7.0)
    # No endpoint setting: AWS's own endpoint for the topic's region.
    aws_settings = make_settings(tmp_path, sns_topic_arn="arn:aws:sns:eu-west-3:123456789012:m")
    assert make_sns_client(aws_settings).meta.endpoint_url == "https://sns.eu-west-3.amazonaws.com"
