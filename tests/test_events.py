"""gateway.media.events: the events of a state change, published without ever undoing it."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta, timezone

import pytest

from gateway.media.events import Announcer, EventType, LogPublisher, MediaEvent
from gateway.media.lifecycle import Status
from gateway.media.records import MediaRecord

AT = datetime(2024, 5, 6, 7, 8, 9, 120000, tzinfo=UTC)


def record(media_id: str = "a" * 32, **changes) -> MediaRecord:
    values = {
        "media_id": media_id,
        "project_id": "p1",
        "tenant": "acme",
        "owner": "alice",
        "original_name": "cat.png",
        "file_type": "image",
        "mime_type": "image/png",
        "s3_key": f"acme/projects/p1/media/{media_id}.png",
        "size": 10,
        "sha256": "0" * 64,
        "created_at": "2024-05-06T07:08:09.000000+00:00",
    }
    values.update(changes)
    return MediaRecord(**values)


class Collect:
    def __init__(self) -> None:
        self.calls: list[list[MediaEvent]] = []

    def publish(self, events) -> None:
        self.calls.append(list(events))


def test_event_types_are_the_published_names():
    assert [t.value for t in EventType] == [
        "media.stored",
        "media.ready",
        "media.failed",
        "media.infected",
        "media.deleted",
    ]


def test_an_event_carries_the_record_and_the_time_in_microseconds():
    event = MediaEvent.of(EventType.STORED, record(status=Status.PROCESSING), at=AT)
    assert event == MediaEvent(
        type=EventType.STORED,
        media_id="a" * 32,
        tenant="acme",
        project_id="p1",
        owner="alice",
        key=f"acme/projects/p1/media/{'a' * 32}.png",
        status="processing",
        occurred_at="2024-05-06T07:08:09.120000+00:00",
    )
    on_the_second = MediaEvent.of(EventType.DELETED, record(), at=AT.replace(microsecond=0))
    assert on_the_second.occurred_at == "2024-05-06T07:08:09.000000+00:00"


def test_announce_publishes_one_batch_with_one_time_and_returns_it():
    times = iter([AT, AT + timedelta(seconds=5)])
    publisher = Collect()
    announcer = Announcer(publisher, clock=lambda: next(times))
    records = [record("a" * 32), record("b" * 32, owner="bob")]
    events = announcer.announce(EventType.DELETED, records)
    assert publisher.calls == [events]
    assert [(e.type, e.media_id, e.owner) for e in events] == [
        (EventType.DELETED, "a" * 32, "alice"),
        (EventType.DELETED, "b" * 32, "bob"),
    ]
    assert {e.occurred_at for e in events} == {"2024-05-06T07:08:09.120000+00:00"}


def test_the_default_clock_is_utc_now():
    publisher = Collect()
    before = datetime.now(UTC)
    [event] = Announcer(publisher).announce(EventType.STORED, [record()])
    occurred = datetime.fromisoformat(event.occurred_at)
    assert occurred.utcoffset() == timedelta(0)
    assert before <= occurred <= datetime.now(UTC)


def test_a_failing_publisher_is_logged_and_never_raises(caplog):
    class Broken:
        def publish(self, events):
            raise RuntimeError("queue down")

    announcer = Announcer(Broken(), clock=lambda: AT)
    with caplog.at_level(logging.ERROR, logger="gateway.media.events"):
        events = announcer.announce(EventType.STORED, [record()])
    assert [e.media_id for e in events] == ["a" * 32]
    [entry] = caplog.records
    assert entry.levelno == logging.ERROR and entry.exc_info and entry.exc_info[0] is RuntimeError
    assert entry.getMessage() == f"could not publish media.stored for {['a' * 32]}"


def test_a_publisher_that_exits_the_process_is_not_swallowed():
    class Exiting:
        def publish(self, events):
            raise SystemExit(3)

    with pytest.raises(SystemExit):
        Announcer(Exiting(), clock=lambda: AT).announce(EventType.STORED, [record()])


def test_the_log_publisher_writes_one_line_per_event(caplog):
    logger = logging.getLogger("test.events.publisher")
    events = [
        MediaEvent.of(EventType.STORED, record("a" * 32), at=AT),
        MediaEvent.of(EventType.READY, record("b" * 32, status=Status.READY), at=AT),
    ]
    with caplog.at_level(logging.INFO, logger="test.events.publisher"):
        LogPublisher(logger).publish(events)
    assert [(r.name, r.levelno, r.msg) for r in caplog.records] == [
        (
            "test.events.publisher",
            logging.INFO,
            {"event": "media.stored", "mediaId": "a" * 32, "projectId": "p1", "status": "stored"},
        ),
        (
            "test.events.publisher",
            logging.INFO,
            {"event": "media.ready", "mediaId": "b" * 32, "projectId": "p1", "status": "ready"},
        ),
    ]


def test_the_log_publisher_logs_to_gateway_events_by_default(caplog):
    with caplog.at_level(logging.INFO, logger="gateway.media.events"):
        LogPublisher().publish([MediaEvent.of(EventType.DELETED, record(), at=AT)])
    [entry] = caplog.records
    assert entry.name == "gateway.media.events" and entry.msg["event"] == "media.deleted"


def test_a_local_time_is_written_with_its_offset():
    local = AT.astimezone(timezone(timedelta(hours=2)))
    event = MediaEvent.of(EventType.STORED, record(), at=local)
    assert event.occurred_at == "2024-05-06T09:08:09.120000+02:00"


def test_an_event_carries_the_records_reason():
    failed = record(status=Status.FAILED, reason="could not decode")
    assert MediaEvent.of(EventType.FAILED, failed, at=AT).reason == "could not decode"
    assert MediaEvent.of(EventType.STORED, record(), at=AT).reason == ""


def test_the_event_id_is_stable_per_media_and_type():
    stored = MediaEvent.of(EventType.STORED, record(), at=AT)
    later = MediaEvent.of(EventType.STORED, record(), at=AT + timedelta(hours=1))
    assert stored.id == later.id == f"{'a' * 32}.media.stored"
    assert MediaEvent.of(EventType.READY, record(), at=AT).id == f"{'a' * 32}.media.ready"


def test_the_webhook_payload_is_the_standard_envelope():
    event = MediaEvent.of(EventType.READY, record(status=Status.READY), at=AT)
    assert event.payload() == {
        "type": "media.ready",
        "timestamp": "2024-05-06T07:08:09.120000+00:00",
        "data": {
            "mediaId": "a" * 32,
            "projectId": "p1",
            "tenant": "acme",
            "owner": "alice",
            "status": "ready",
        },
    }


def test_the_payload_has_no_tenant_without_one_and_a_reason_when_there_is_one():
    event = MediaEvent.of(
        EventType.FAILED, record(tenant="", status=Status.FAILED, reason="r"), at=AT
    )
    data = event.payload()["data"]
    assert data["tenant"] is None and data["reason"] == "r"


class FakeQueue:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, body, *, delay: float = 0) -> None:
        self.sent.append(body)


def _events():
    return [
        MediaEvent.of(EventType.STORED, record("a" * 32), at=AT),
        MediaEvent.of(EventType.DELETED, record("b" * 32), at=AT),
    ]


@pytest.mark.parametrize("processing", [False, True])
@pytest.mark.parametrize("webhooks", [False, True])
@pytest.mark.parametrize("sns", [False, True])
def test_the_queue_publisher_turns_events_into_jobs(processing, webhooks, sns):
    from gateway.media.events import QueuePublisher

    queue, hooks, topic, then = FakeQueue(), FakeQueue(), FakeQueue(), Collect()
    events = _events()
    QueuePublisher(
        queue,
        processing=processing,
        webhooks=hooks if webhooks else None,
        sns=topic if sns else None,
        then=then,
    ).publish(events)
    expected = [
        {"type": "media.process", "mediaId": event.media_id}
        for event in events
        if processing and event.type is EventType.STORED
    ]
    deliveries = [
        {"type": "webhook", "id": event.id, "event": event.payload()}
        for event in events
        if webhooks
    ]
    publications = [
        {"type": "sns", "id": event.id, "event": event.payload()} for event in events if sns
    ]
    assert queue.sent == expected
    assert hooks.sent == deliveries  # their own queue: never beside the processing jobs
    assert topic.sent == publications  # one job per target: each retried alone
    assert then.calls == [events]


def test_the_queue_publisher_jobs_exactly():
    from gateway.media.events import QueuePublisher

    queue, hooks, then = FakeQueue(), FakeQueue(), Collect()
    [stored, deleted] = _events()
    QueuePublisher(queue, processing=True, webhooks=hooks, then=then).publish([stored, deleted])
    assert queue.sent == [{"type": "media.process", "mediaId": "a" * 32}]
    assert hooks.sent == [
        {"type": "webhook", "id": f"{'a' * 32}.media.stored", "event": stored.payload()},
        {"type": "webhook", "id": f"{'b' * 32}.media.deleted", "event": deleted.payload()},
    ]
