"""Webhook signing and delivery, verified by the standardwebhooks library on the receiver; the
webhook lane (own queue, own slots) beside processing, with a receiver the test holds."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import media_samples as samples
import pytest
from webhook_receiver import SECRET, Receiver

from gateway import create_app
from gateway.http.auth import mint_token
from gateway.media.lifecycle import Status
from gateway.processing.webhooks import DeliveryFailed, WebhookSender
from gateway.processing.worker import Worker, WorkerOptions, run_lanes

from conftest import init_stores, make_settings
from support import form_body, free_port, unique


def test_a_delivery_is_signed_and_verifiable():
    with Receiver() as receiver:
        sender = WebhookSender(receiver.url, SECRET, timeout=5)
        assert sender.deliver("m1.media.ready", {"type": "media.ready", "data": {"x": 1}}) == 204
    assert receiver.received == [
        {"id": "m1.media.ready", "payload": {"type": "media.ready", "data": {"x": 1}}}
    ]
    assert receiver.rejected == 0


def test_a_wrong_secret_is_rejected_by_the_receiver():
    other = "whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmch"
    with Receiver() as receiver, pytest.raises(DeliveryFailed, match="answered 400"):
        WebhookSender(receiver.url, other, timeout=5).deliver("m1", {"a": 1})
    assert receiver.received == [] and receiver.rejected == 1


def test_a_failing_receiver_is_a_failed_delivery():
    with Receiver() as receiver:
        receiver.fail_next = 1
        sender = WebhookSender(receiver.url, SECRET, timeout=5)
        with pytest.raises(DeliveryFailed, match="answered 503"):
            sender.deliver("m1", {"a": 1})
        assert sender.deliver("m1", {"a": 1}) == 204
    with pytest.raises(DeliveryFailed, match="unreachable"):
        WebhookSender(f"http://127.0.0.1:{free_port()}/", SECRET, timeout=2).deliver("m", {})


def test_a_redirect_is_a_failed_attempt_not_a_second_request():
    with Receiver() as receiver:

        class Redirect(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(302)
                self.send_header("Location", receiver.url)
                self.end_headers()

            def log_message(self, *args):
                pass

        with ThreadingHTTPServer(("127.0.0.1", 0), Redirect) as elsewhere:
            threading.Thread(target=elsewhere.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{elsewhere.server_address[1]}/hooks"
            with pytest.raises(DeliveryFailed, match="answered 302"):
                WebhookSender(url, SECRET, timeout=5).deliver("m1.media.ready", {"a": 1})
            elsewhere.shutdown()
    assert receiver.arrivals == [] and receiver.rejected == 0


# -- the webhook lane: its own queue and slots, beside processing ------------------------------------
LANE = WorkerOptions(concurrency=2, visibility=30, wait=0.1, backoff_base=0.05, backoff_max=0.2)


def hooked_gateway(tmp_path, receiver, backend="local", moto_url=None, **overrides):
    if backend == "s3":
        overrides.update(sqs_endpoint_url=moto_url, queue_url=f"sqs://{unique('jobs')}")
    settings = make_settings(
        tmp_path,
        backend=backend,
        moto_url=moto_url,
        webhook_url=receiver.url,
        webhook_secret=SECRET,
        **overrides,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    svc = app.extensions["gateway"]
    init_stores(svc)
    with app.app_context():
        auth = {"Authorization": f"Bearer {mint_token('alice')}"}
    return app, svc, auth


def upload(app, auth, n: int) -> str:
    body, content_type = form_body(
        [("projectId", "p1")], [("file", f"p{n}.png", samples.png(200 + n, 100))]
    )
    response = app.test_client().post(
        "/api/upload", data=body, headers={"Content-Type": content_type, **auth}
    )
    assert response.status_code == 201, response.get_json()
    return str(response.get_json()["mediaId"])


def processing_lane(svc, stop=None):
    return Worker(
        svc.queue,
        svc.pipeline.handle,
        on_last_failure=svc.pipeline.on_last_failure,
        options=LANE,
        stop=stop,
    )


def webhook_lane(svc, stop=None, **options):
    return Worker(
        svc.webhook_queue,
        svc.deliveries.handle,
        on_last_failure=svc.deliveries.on_last_failure,
        options=dataclasses.replace(LANE, concurrency=svc.settings.webhook_concurrency, **options),
        stop=stop,
        name="webhook",
    )


@contextlib.contextmanager
def running(*lanes):
    """The lanes on their threads (as `flask worker` runs them) until the block ends."""
    runner = threading.Thread(target=run_lanes, args=(list(lanes),))
    runner.start()
    try:
        yield
    finally:
        for lane in lanes:
            lane.stop.set()
        runner.join(60)
        assert not runner.is_alive()


def poll(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def in_flight_and_visible(queue) -> tuple[int, int]:
    stats = queue.stats()
    return stats.in_flight, stats.visible


def empty(queue) -> bool:
    stats = queue.stats()
    return (stats.visible, stats.in_flight, stats.dead) == (0, 0, 0)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "backend, concurrency", [("local", 1), ("local", 3), ("s3", 2)], ids=["1", "3", "sqs-2"]
)
def test_processing_never_waits_for_a_held_receiver(tmp_path, backend, concurrency, request):
    """The receiver holds every delivery (as one taking 30 s would, for as long as the test
    wants): all media still reach ready, with the receiver's first deliveries unanswered and no
    more of them at once than the setting; released, each event arrives exactly once."""
    moto_url = request.getfixturevalue("moto_url") if backend == "s3" else None
    count = 5
    with Receiver(held=True) as receiver:
        app, svc, auth = hooked_gateway(
            tmp_path,
            receiver,
            backend=backend,
            moto_url=moto_url,
            webhook_concurrency=concurrency,
            webhook_timeout=600,  # the receiver's hold ends when the test says, not before
        )
        ids = [upload(app, auth, n) for n in range(count)]
        stop = threading.Event()
        with running(processing_lane(svc, stop), webhook_lane(svc, stop)):
            assert poll(lambda: all(svc.records.get(i).status is Status.READY for i in ids))
            # every media is ready, and the receiver has answered nothing yet: the lane is full
            # of deliveries that wait, and processing did not wait for them
            assert poll(lambda: receiver.in_flight == concurrency)
            assert receiver.received == [] and receiver.max_in_flight == concurrency
            assert len(receiver.arrivals) == concurrency
            if backend == "local":  # SQS's counts are approximate
                waiting = (concurrency, 2 * count - concurrency)  # the ready events too
                assert poll(lambda: in_flight_and_visible(svc.webhook_queue) == waiting)
            assert poll(lambda: empty(svc.queue))
            receiver.release()
            assert poll(lambda: len(receiver.received) == 2 * count)
            assert poll(lambda: empty(svc.webhook_queue))
    expected = {f"{i}.{event}" for i in ids for event in ("media.stored", "media.ready")}
    assert sorted(receiver.arrivals) == sorted(expected)  # one delivery per event
    assert receiver.max_in_flight == concurrency  # never more at once than the setting
    assert receiver.rejected == 0


def test_a_held_delivery_keeps_its_lease_and_is_sent_once(tmp_path):
    """A delivery that outlasts its lease many times over is not sent again by another worker
    polling all along: the heartbeat renews the lease while the receiver holds it."""
    with Receiver(held=True) as receiver:
        app, svc, auth = hooked_gateway(
            tmp_path, receiver, processing=False, webhook_timeout=600, webhook_concurrency=1
        )
        renewals = []
        retry_later = svc.webhook_queue.retry_later

        def counted(message, *, delay):
            renewals.append(delay)
            retry_later(message, delay=delay)

        svc.webhook_queue.retry_later = counted
        media_id = upload(app, auth, 0)
        first, other = webhook_lane(svc, visibility=2), webhook_lane(svc, visibility=2)
        with running(first):
            assert poll(lambda: receiver.in_flight == 1, timeout=30)
            with running(other):
                # three renewals, one each half lease: the first lease would have run out
                assert poll(lambda: len(renewals) >= 3, timeout=30)
                assert receiver.arrivals == [f"{media_id}.media.stored"]
                receiver.release()
                assert poll(lambda: empty(svc.webhook_queue), timeout=30)
    assert receiver.arrivals == [f"{media_id}.media.stored"]
    assert [d["id"] for d in receiver.received] == [f"{media_id}.media.stored"]


def test_a_receiver_that_times_out_is_one_failed_attempt_each_then_a_dead_letter(tmp_path):
    with Receiver(held=True) as receiver:
        app, svc, auth = hooked_gateway(
            tmp_path, receiver, processing=False, webhook_timeout=0.3, queue_max_receives=3
        )
        media_id = upload(app, auth, 0)
        webhook_id = f"{media_id}.media.stored"
        attempts, failures, last = [], [], []
        deliveries = svc.deliveries

        def attempt(message):
            attempts.append(message.receive_count)
            try:
                deliveries.handle(message)
            except Exception as exc:
                failures.append(str(exc))
                raise

        lane = webhook_lane(svc)
        lane.handle = attempt
        lane.on_last_failure = lambda message, exc: last.append(message.body["id"])
        with running(lane):
            assert poll(lambda: svc.webhook_queue.stats().dead == 1, timeout=60)
        assert attempts == [1, 2, 3]
        assert failures == ["the receiver is unreachable: timed out"] * 3
        assert last == [webhook_id]
        assert receiver.arrivals == [webhook_id] * 3  # one POST per attempt, no more
        assert svc.records.get(media_id).status is Status.STORED  # a webhook changes no media
        cli = app.test_cli_runner()
        stats = json.loads(cli.invoke(args=["queue", "stats", "--lane", "webhooks"]).output)
        assert (stats["visible"], stats["inFlight"], stats["dead"]) == (0, 0, 1)
        assert json.loads(cli.invoke(args=["queue", "stats"]).output)["dead"] == 0
        redrive = cli.invoke(args=["queue", "redrive", "--lane", "webhooks"])
        assert redrive.output == "redrove 1\n"
        receiver.release()
        with running(webhook_lane(svc)):
            assert poll(lambda: empty(svc.webhook_queue), timeout=60)
    assert receiver.arrivals == [webhook_id] * 4
    assert webhook_id in receiver.unique()


def test_a_webhook_job_left_on_the_processing_queue_moves_to_the_webhook_queue(tmp_path):
    """Queued before deliveries had their own queue: forwarded, never sent from a processing
    slot."""
    with Receiver() as receiver:
        _, svc, _ = hooked_gateway(tmp_path, receiver)
        job = {"type": "webhook", "id": "m1.media.ready", "event": {"type": "media.ready"}}
        svc.queue.send(job)
        with running(processing_lane(svc)):
            assert poll(lambda: svc.webhook_queue.stats().visible == 1, timeout=30)
            assert poll(lambda: empty(svc.queue), timeout=30)
        assert receiver.arrivals == []
        with running(webhook_lane(svc)):
            assert poll(lambda: empty(svc.webhook_queue), timeout=30)
    assert receiver.received == [{"id": "m1.media.ready", "payload": {"type": "media.ready"}}]


def test_without_a_webhook_there_is_no_webhook_lane(tmp_path):
    settings = make_settings(tmp_path, processing=False)
    app = create_app(settings)
    svc = app.extensions["gateway"]
    assert (svc.webhook_queue, svc.deliveries) == (None, None)
    cli = app.test_cli_runner()
    stats = cli.invoke(args=["queue", "stats", "--lane", "webhooks"])
    assert (
        stats.exit_code == 1 and "No GATEWAY_WEBHOOK_URL nor GATEWAY_SNS_TOPIC_ARN" in stats.output
    )
    worker = cli.invoke(args=["worker"])
    assert worker.exit_code == 1 and "nothing to do" in worker.output


def test_an_sns_topic_alone_has_the_deliveries_lane(tmp_path):
    """No webhook, processing off: SNS publications still have their queue and lane."""
    topic = "arn:aws:sns:us-east-1:123456789012:media"
    app = create_app(make_settings(tmp_path, processing=False, sns_topic_arn=topic))
    svc = app.extensions["gateway"]
    assert svc.webhook_queue is not None and svc.deliveries is not None
    assert (svc.deliveries.webhook, svc.deliveries.topic.topic_arn) == (None, topic)
    init_stores(svc)
    stats = app.test_cli_runner().invoke(args=["queue", "stats", "--lane", "webhooks"])
    assert stats.exit_code == 0 and json.loads(stats.output)["visible"] == 0
