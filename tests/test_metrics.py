"""Prometheus metrics: the scrape through a real gunicorn (multiprocess), parsed with Prometheus's
own parser; the listener rule; the instruments one by one."""

from __future__ import annotations

import base64
import string
import time
from collections import Counter
from urllib.parse import urljoin

import media_samples as samples
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway import metrics
from gateway.app import create_app
from gateway.queue import QueueStats

from conftest import make_settings
from e2e_harness import gateway_stack, poll
from support import form_body, free_port, png_bytes


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample as {(name, labels): value}."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples_: dict, name: str, **labels: str) -> float:
    return samples_.get((name, frozenset(labels.items())), 0.0)


def total(samples_: dict, name: str, **labels: str) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples_.items() if n == name and want <= set(ls))


# -- through real gunicorn + nginx ------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory, moto_url):
    port = free_port()
    with gateway_stack(
        tmp_path_factory.mktemp("metrics"),
        mode="s3",
        moto_url=moto_url,
        GATEWAY_METRICS_BIND=f"127.0.0.1:{port}",
    ) as stack:
        stack.metrics_url = f"http://127.0.0.1:{port}/metrics"
        yield stack


def scrape(stack) -> dict:
    response = requests.get(stack.metrics_url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return parse(response.text)


def test_a_scrape_counts_uploads_bytes_and_rejections_of_every_worker(stack):
    before = scrape(stack)
    sent = 0
    for n in range(6):  # 6 requests over 2 workers: the scrape merges both
        body, content_type = form_body(
            [("projectId", "p1")], [("file", f"m{n}.png", png_bytes(20_000 + n, seed=n))]
        )
        result = requests.post(
            stack.url + "/api/upload",
            data=body,
            headers={**stack.auth, "Content-Type": content_type},
            timeout=30,
        )
        assert result.status_code == 201, result.text
        sent += len(body)
    bad = stack.curl("-F", "projectId=p1", "-F", "file=@/etc/hostname;type=text/plain")
    assert bad.status == 415, bad.body
    code = bad.json()["error"]["code"]
    after = scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("gateway_uploads_total", protocol="form", outcome="stored") == 6
    assert delta("gateway_upload_bytes_total", protocol="form", outcome="stored") == sent
    assert delta("gateway_uploads_total", protocol="form", outcome=code) == 1
    assert delta("gateway_rejections_total", code=code, status="415") == 1
    assert delta("gateway_upload_duration_seconds_count", protocol="form") == 6
    assert (
        delta(
            "gateway_http_request_duration_seconds_count",
            method="POST",
            route="/api/upload",
            status="201",
        )
        == 6
    )
    assert delta("gateway_s3_call_duration_seconds_count", operation="PutObject") >= 6
    assert delta("gateway_record_store_call_duration_seconds_count", backend="sqlite") > 0
    assert value(after, "gateway_uploads_in_flight", protocol="form") == 0
    # Each stored file queued one media.process job; no worker runs here.
    assert value(after, "gateway_queue_up") == 1
    assert value(after, "gateway_queue_messages") - value(before, "gateway_queue_messages") == 6
    assert value(after, "gateway_queue_dead_letter_messages") == 0
    assert value(after, "gateway_queue_oldest_message_age_seconds") > 0


def test_a_tus_upload_counts_its_patches_and_its_commit(stack):
    before = scrape(stack)
    data = png_bytes(300_000, seed=9)
    meta = (
        "filename "
        + base64.b64encode(b"t.png").decode()
        + ",projectId "
        + (base64.b64encode(b"p1").decode())
    )
    head = {**stack.auth, "Tus-Resumable": "1.0.0"}
    created = requests.post(
        stack.gateway_url + "/api/tus/",
        headers={**head, "Upload-Length": str(len(data)), "Upload-Metadata": meta},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    location = urljoin(stack.gateway_url + "/", created.headers["Location"])
    for offset, chunk in ((0, data[:100_000]), (100_000, data[100_000:])):
        patched = requests.patch(
            location,
            data=chunk,
            headers={
                **head,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            },
            timeout=10,
        )
        assert patched.status_code == 204, patched.text
    after = scrape(stack)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("gateway_uploads_total", protocol="tus", outcome="partial") == 1
    assert delta("gateway_uploads_total", protocol="tus", outcome="stored") == 1
    assert delta("gateway_upload_bytes_total", protocol="tus", outcome="partial") == 100_000
    assert delta("gateway_upload_bytes_total", protocol="tus", outcome="stored") == 200_000
    assert delta("gateway_upload_duration_seconds_count", protocol="tus") == 1


def test_metrics_answer_only_on_their_own_listener(stack):
    assert requests.get(stack.gateway_url + "/metrics", timeout=10).status_code == 404
    assert requests.get(stack.url + "/metrics", timeout=10).status_code == 404  # via nginx
    base = stack.metrics_url.removesuffix("/metrics")
    health = requests.get(base + "/healthz", timeout=10)
    assert health.status_code == 404
    assert health.json()["error"]["code"] == "not_found"
    upload = requests.post(base + "/api/upload", headers=stack.auth, timeout=10)
    assert upload.status_code == 404
    # A Host header naming the metrics port changes nothing on the public listener.
    port = base.rsplit(":", 1)[1]
    spoofed = requests.get(
        stack.gateway_url + "/metrics", headers={"Host": f"127.0.0.1:{port}"}, timeout=10
    )
    assert spoofed.status_code == 404


def made_up_methods(count: int) -> list[str]:
    """``count`` distinct method tokens that HTTP does not define: ZAAAA, ZAAAB, ..."""

    def token(n: int) -> str:
        letters = ""
        for _ in range(4):
            n, digit = divmod(n, 26)
            letters = string.ascii_uppercase[digit] + letters
        return "Z" + letters

    return [token(n) for n in range(count)]


def methods_labelled(samples_: dict) -> set[str]:
    return {dict(labels)["method"] for _, labels in samples_ if "method" in dict(labels)}


def request_count(samples_: dict, **labels: str) -> float:
    return value(samples_, "gateway_http_request_duration_seconds_count", **labels)


def test_made_up_methods_and_paths_through_gunicorn_add_no_series(stack):
    """The finding: 2,000 requests like ``ZAAAA /nothing`` grew the scrape from 144 KB to 4.4 MB.
    Through real gunicorn (two workers writing multiprocess files, merged by the scrape)."""

    def send(methods: list[str], paths: list[str]) -> None:
        with requests.Session() as http:
            for method in methods:
                known = http.request(method, stack.gateway_url + "/healthz", timeout=10)
                assert known.status_code == 405, method
                unknown = http.request(method, stack.gateway_url + f"/nothing/{method}", timeout=10)
                assert unknown.status_code == 404, method
            for path in paths:
                assert http.get(stack.gateway_url + path, timeout=10).status_code == 404, path

    send(["ZWARM"], ["/warm-up"])  # the folded series exist from here on
    scrape(stack)  # and the scrape's own (a scrape is counted once it has answered)
    before = scrape(stack)
    methods = made_up_methods(500)
    send(methods, [f"/nothing/{n}" for n in range(500)])
    after = scrape(stack)
    assert len(after) == len(before)
    assert set(after) == set(before)
    for status in ("404", "405"):
        delta = request_count(after, method="other", route="unmatched", status=status) - (
            request_count(before, method="other", route="unmatched", status=status)
        )
        assert delta == 500  # every request still counted, under one label set
    assert (
        request_count(after, method="GET", route="unmatched", status="404")
        - request_count(before, method="GET", route="unmatched", status="404")
        == 500
    )
    assert methods_labelled(after) <= {*metrics.KNOWN_METHODS, "other"}


def test_the_worker_serves_job_and_stage_metrics(stack):
    port = free_port()
    path = stack.tmp / "w.png"
    path.write_bytes(samples.png(64, 48))
    result = stack.curl("-F", "projectId=p1", "-F", f"file=@{path};type=image/png")
    assert result.status == 201, result.body
    media_id = result.json()["mediaId"]
    stack.start_worker("metrics-worker", GATEWAY_WORKER_METRICS_BIND=f"127.0.0.1:{port}")
    svc = stack.svc
    assert poll(lambda: svc.records.get(media_id).status.value == "ready", timeout=120)

    def worker_samples() -> dict:
        try:
            return parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        except requests.ConnectionError:
            return {}

    assert poll(lambda: worker_samples().get(("gateway_queue_messages", frozenset())) == 0, 60)
    got = worker_samples()
    # This file's job and those the earlier tests queued; one of theirs may fail a delivery under
    # load and be retried, so the counts are checked against the worker's own log of each job.
    logged = Counter(
        line["outcome"] for line in stack.worker_log("metrics-worker") if "outcome" in line
    )
    for outcome in ("done", "retry", "dead"):
        assert (
            total(got, "gateway_jobs_total", type="media.process", outcome=outcome)
            == logged[outcome]
        )
    assert logged["done"] >= 1
    stage_count = "gateway_processing_stage_duration_seconds_count"
    described = total(got, stage_count, stage="describe", outcome="ok")
    assert 1 <= described <= logged["done"]
    failed = total(got, stage_count, stage="describe") - described
    assert failed <= logged["retry"] + logged["dead"]
    assert total(got, stage_count, stage="scan") == 0
    assert value(got, "gateway_queue_up") == 1


# -- the app without gunicorn: the listener rule both ways ------------------------------------------
class _Sock:
    def __init__(self, port: int) -> None:
        self.port = port

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


@pytest.fixture
def metrics_app(tmp_path):
    return create_app(make_settings(tmp_path, metrics_bind="127.0.0.1:9464", processing=False))


def test_metrics_route_exists_only_with_a_metrics_bind(tmp_path):
    plain = create_app(make_settings(tmp_path, processing=False)).test_client()
    on_port = {"gunicorn.socket": _Sock(9464)}
    assert plain.get("/metrics", environ_overrides=on_port).status_code == 404
    assert plain.get("/healthz", environ_overrides=on_port).status_code == 200


def test_the_metrics_listener_serves_metrics_and_nothing_else(metrics_app):
    client = metrics_app.test_client()
    on_metrics = {"gunicorn.socket": _Sock(9464)}
    on_public = {"gunicorn.socket": _Sock(8000)}
    page = client.get("/metrics", environ_overrides=on_metrics)
    assert page.status_code == 200
    assert "gateway_http_request_duration_seconds" in page.get_data(as_text=True)
    assert "gateway_queue_up" not in page.get_data(as_text=True)  # processing off
    assert client.get("/healthz", environ_overrides=on_metrics).status_code == 404
    assert client.get("/metrics", environ_overrides=on_public).status_code == 404
    assert client.get("/healthz", environ_overrides=on_public).status_code == 200
    assert client.get("/metrics").status_code == 404  # no socket: not gunicorn's listener


def test_a_unix_socket_listener_is_not_the_metrics_listener(metrics_app):
    class UnixSock:
        def getsockname(self) -> str:
            return "/run/gateway.sock"

    client = metrics_app.test_client()
    assert client.get(
        "/metrics", environ_overrides={"gunicorn.socket": UnixSock()}
    ).status_code == (404)


def test_made_up_methods_and_paths_add_no_series(tmp_path):
    client = create_app(make_settings(tmp_path, processing=False)).test_client()

    def send(methods: list[str], paths: list[str]) -> None:
        for method in methods:
            assert client.open("/healthz", method=method).status_code == 405, method
            assert client.open(f"/nothing/{method}", method=method).status_code == 404, method
        for path in paths:
            assert client.get(path).status_code == 404, path

    send(["ZWARM"], ["/warm-up"])  # the folded series exist from here on
    before = parse(metrics.scrape().decode())
    send(made_up_methods(1000), [f"/nothing/{n}" for n in range(1000)])
    after = parse(metrics.scrape().decode())
    assert len(after) == len(before)
    assert set(after) == set(before)
    for method, status in (("other", "405"), ("other", "404"), ("GET", "404")):
        labels = {"method": method, "route": "unmatched", "status": status}
        assert request_count(after, **labels) - request_count(before, **labels) == 1000
    rejected = "gateway_rejections_total"
    for code, status in (("method_not_allowed", "405"), ("not_found", "404")):
        labels = {"code": code, "status": status}
        assert value(after, rejected, **labels) - value(before, rejected, **labels) == (
            1000 if status == "405" else 2000
        )
    assert methods_labelled(after) <= {*metrics.KNOWN_METHODS, "other"}


def test_a_matched_route_is_labelled_by_its_template_not_its_path(tmp_path):
    client = create_app(make_settings(tmp_path, processing=False)).test_client()
    before = parse(metrics.scrape().decode())
    for n in range(3):
        assert client.get(f"/api/media/{n:032x}").status_code == 401  # no token
    after = parse(metrics.scrape().decode())
    labels = {"method": "GET", "route": "/api/media/<media_id>", "status": "401"}
    assert request_count(after, **labels) - request_count(before, **labels) == 3
    assert not any("0" * 31 in dict(labels_).get("route", "") for _, labels_ in after)


@pytest.mark.parametrize("method", sorted(metrics.KNOWN_METHODS))
def test_a_method_http_defines_is_its_own_label(method):
    assert metrics.method_label(method) == method


@pytest.mark.parametrize("method", ["get", "ZAAAA", "PROPFIND", "", "G" * 1000])
def test_any_other_method_is_other(method):
    assert metrics.method_label(method) == "other"


# -- the instruments ----------------------------------------------------------------------------------
class FakeStore:
    calls = 0

    def get(self, key: str) -> str:
        self.calls += 1
        return key.upper()

    def put(self, key: str) -> None:
        raise KeyError(key)

    @property
    def name(self) -> str:
        return "fake"

    def _private(self) -> int:
        return 1


def test_a_record_store_is_timed_per_method_and_its_errors_counted():
    store = metrics.instrument_record_store(FakeStore(), "fake-backend")
    before = parse(metrics.scrape().decode())
    assert store.get("a") == "A"
    assert store.get("b") == "B"
    with pytest.raises(KeyError):
        store.put("x")
    assert store.name == "fake" and store._private() == 1
    after = parse(metrics.scrape().decode())

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    count = "gateway_record_store_call_duration_seconds_count"
    assert delta(count, backend="fake-backend", operation="get") == 2
    assert delta(count, backend="fake-backend", operation="put") == 1
    assert delta(count, backend="fake-backend", operation="name") == 0
    errors = "gateway_record_store_call_errors_total"
    assert delta(errors, backend="fake-backend", operation="put", error="KeyError") == 1
    assert delta(errors, backend="fake-backend", operation="get") == 0


def test_a_gateway_error_is_counted_by_its_code():
    from gateway.errors import NotFound

    class Store:
        def get(self) -> None:
            raise NotFound()

    store = metrics.instrument_record_store(Store(), "code-backend")
    labels = {"backend": "code-backend", "operation": "get", "error": "not_found"}
    before = parse(metrics.scrape().decode())
    with pytest.raises(NotFound):
        store.get()
    got = parse(metrics.scrape().decode())
    name = "gateway_record_store_call_errors_total"
    assert value(got, name, **labels) - value(before, name, **labels) == 1


def test_the_queue_collector_reports_stats_or_that_the_queue_did_not_answer():
    stats = QueueStats(visible=3, in_flight=2, dead=1, oldest_age=12.5)
    got = parse(metrics.scrape([metrics.QueueCollector(lambda: stats)]).decode())
    assert value(got, "gateway_queue_up") == 1
    assert value(got, "gateway_queue_messages") == 3
    assert value(got, "gateway_queue_in_flight_messages") == 2
    assert value(got, "gateway_queue_dead_letter_messages") == 1
    assert value(got, "gateway_queue_oldest_message_age_seconds") == 12.5
    no_age = parse(
        metrics.scrape([metrics.QueueCollector(lambda: QueueStats(0, 0, 0, None))]).decode()
    )
    assert ("gateway_queue_oldest_message_age_seconds", frozenset()) not in no_age

    def down() -> QueueStats:
        raise OSError("unreachable")

    failed = parse(metrics.scrape([metrics.QueueCollector(down)]).decode())
    assert value(failed, "gateway_queue_up") == 0
    assert ("gateway_queue_messages", frozenset()) not in failed


def test_a_stage_is_timed_with_its_outcome():
    before = parse(metrics.scrape().decode())
    with metrics.stage("unit"):
        time.sleep(0.001)
    with pytest.raises(ValueError), metrics.stage("unit"):
        raise ValueError("bad")
    after = parse(metrics.scrape().decode())
    count = "gateway_processing_stage_duration_seconds_count"
    assert (
        total(after, count, stage="unit", outcome="ok")
        - total(before, count, stage="unit", outcome="ok")
        == 1
    )
    assert (
        total(after, count, stage="unit", outcome="ValueError")
        - total(before, count, stage="unit", outcome="ValueError")
        == 1
    )


def test_in_flight_goes_back_down_when_the_body_fails():
    gauge = metrics.UPLOADS_IN_FLIGHT.labels("unit")
    with pytest.raises(OSError), metrics.upload_in_flight("unit"):
        assert gauge._value.get() == 1
        raise OSError("client went away")
    assert gauge._value.get() == 0


class _Model:
    name = "UnitOperation"


class _Response:
    def __init__(self, status: int) -> None:
        self.status_code = status


def test_the_s3_hooks_time_each_call_and_count_its_failures():
    before = parse(metrics.scrape().decode())
    ok: dict = {}
    metrics._before_s3_call(context=ok)
    metrics._after_s3_call(model=_Model(), context=ok, http_response=_Response(200), parsed={})
    assert ok == {}  # the start time is taken out again
    failed: dict = {}
    metrics._before_s3_call(context=failed)
    metrics._after_s3_call(
        model=_Model(),
        context=failed,
        http_response=_Response(503),
        parsed={"Error": {"Code": "SlowDown"}},
    )
    for status in (500, 304, 300, 299):  # no error code: the status is the code
        context: dict = {}
        metrics._before_s3_call(context=context)
        metrics._after_s3_call(model=_Model(), context=context, http_response=_Response(status))
    raised: dict = {}
    metrics._before_s3_call(context=raised)
    metrics._after_s3_call_error(
        context=raised, exception=ConnectionError(), event_name="after-call-error.s3.UnitOperation"
    )
    metrics._after_s3_call(model=_Model(), context={}, http_response=_Response(200))  # no start
    after = parse(metrics.scrape().decode())

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    count = "gateway_s3_call_duration_seconds_count"
    assert delta(count, operation="UnitOperation") == 7
    errors = "gateway_s3_call_errors_total"
    assert delta(errors, operation="UnitOperation", code="SlowDown") == 1
    assert delta(errors, operation="UnitOperation", code="500") == 1
    assert delta(errors, operation="UnitOperation", code="300") == 1
    assert delta(errors, operation="UnitOperation", code="ConnectionError") == 1
    assert delta(errors, operation="UnitOperation") == 4  # 200, 299 and 304 are no errors


def test_an_observed_upload_counts_bytes_only_when_there_are_some():
    before = parse(metrics.scrape().decode())
    metrics.observe_upload("unit", "stored", 10, 1.5)
    metrics.observe_upload("unit", "partial", 0, None)
    after = parse(metrics.scrape().decode())

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("gateway_uploads_total", protocol="unit", outcome="stored") == 1
    assert delta("gateway_uploads_total", protocol="unit", outcome="partial") == 1
    assert delta("gateway_upload_bytes_total", protocol="unit", outcome="stored") == 10
    assert (
        "gateway_upload_bytes_total",
        frozenset({("protocol", "unit"), ("outcome", "partial")}),
    ) not in after
    assert delta("gateway_upload_duration_seconds_count", protocol="unit") == 1
    assert delta("gateway_upload_duration_seconds_sum", protocol="unit") == 1.5


def test_a_request_is_a_rejection_only_from_400_on():
    before = parse(metrics.scrape().decode())
    metrics.observe_request("GET", "/unit", 399, 0.01, "fine")
    metrics.observe_request("GET", "/unit", 400, 0.01, "unit_code")
    metrics.observe_request("GET", "/unit", 500, 0.01, "")
    after = parse(metrics.scrape().decode())

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("gateway_http_request_duration_seconds_count", route="/unit") == 3
    assert delta("gateway_rejections_total", code="fine") == 0
    assert delta("gateway_rejections_total", code="unit_code", status="400") == 1
    assert delta("gateway_rejections_total", code="unknown", status="500") == 1


def test_a_job_is_counted_and_timed():
    before = parse(metrics.scrape().decode())
    metrics.observe_job("unit.job", "retry", 0.25)
    after = parse(metrics.scrape().decode())
    assert (
        total(after, "gateway_jobs_total", type="unit.job", outcome="retry")
        - total(before, "gateway_jobs_total", type="unit.job", outcome="retry")
        == 1
    )
    assert (
        total(after, "gateway_job_duration_seconds_sum", type="unit.job")
        - total(before, "gateway_job_duration_seconds_sum", type="unit.job")
        == 0.25
    )


def test_a_real_s3_client_is_timed_per_call_and_its_errors_counted_by_code():
    import boto3

    s3 = boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",  # never reached: the transport below answers
        aws_access_key_id="k",
        aws_secret_access_key="s",
    )
    metrics.instrument_s3_client(s3)
    answers = [
        (_Response(200), {}),
        (_Response(503), {"Error": {"Code": "SlowDown", "Message": "slow down"}}),
    ]

    def transport(**_: object) -> tuple:  # in place of the HTTP request, after our hook
        return answers.pop(0)

    s3.meta.events.register("before-call.s3", transport)
    before = parse(metrics.scrape().decode())
    s3.head_bucket(Bucket="stubbed")
    with pytest.raises(s3.exceptions.ClientError):
        s3.head_bucket(Bucket="stubbed")
    after = parse(metrics.scrape().decode())

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert delta("gateway_s3_call_duration_seconds_count", operation="HeadBucket") == 2
    assert 0 <= delta("gateway_s3_call_duration_seconds_sum", operation="HeadBucket") < 60
    assert delta("gateway_s3_call_errors_total", operation="HeadBucket", code="SlowDown") == 1
    assert delta("gateway_s3_call_errors_total", operation="HeadBucket") == 1


def test_a_call_error_without_a_start_or_a_model_is_still_counted():
    before = parse(metrics.scrape().decode())
    metrics._after_s3_call_error(context={}, exception=TimeoutError())
    metrics._after_s3_call(model=_Model(), context={"gateway_metrics_started": 0.0})
    after = parse(metrics.scrape().decode())

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    labels = {"operation": "unknown", "code": "TimeoutError"}
    assert delta("gateway_s3_call_errors_total", **labels) == 1
    assert delta("gateway_s3_call_duration_seconds_count", operation="unknown") == 0
    # No response object: not an error.
    assert delta("gateway_s3_call_errors_total", operation="UnitOperation") == 0


def test_a_failed_call_is_timed_from_its_start():
    before = parse(metrics.scrape().decode())
    context: dict = {}
    metrics._before_s3_call(context=context)
    metrics._after_s3_call_error(
        context=context, exception=OSError(), event_name="after-call-error.s3.UnitOperation"
    )
    after = parse(metrics.scrape().decode())
    name = "gateway_s3_call_duration_seconds_sum"
    assert (
        0
        <= total(after, name, operation="UnitOperation")
        - total(before, name, operation="UnitOperation")
        < 60
    )


def test_the_queue_metrics_say_what_they_count():
    stats = QueueStats(visible=1, in_flight=0, dead=0, oldest_age=1.0)
    text = metrics.scrape([metrics.QueueCollector(lambda: stats)]).decode()
    helps = {line for line in text.splitlines() if line.startswith("# HELP gateway_queue")}
    assert helps == {
        "# HELP gateway_queue_up 1 when the queue answered this scrape.",
        "# HELP gateway_queue_messages Jobs waiting to be received.",
        "# HELP gateway_queue_in_flight_messages Jobs received by a worker and not yet done.",
        "# HELP gateway_queue_dead_letter_messages Jobs that failed on their last delivery "
        "(see `flask queue redrive`).",
        "# HELP gateway_queue_oldest_message_age_seconds Age of the oldest waiting job "
        "(SQLite queue only).",
    }


def test_multiprocess_mode_merges_what_other_processes_wrote(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    env = {**os.environ, metrics.MULTIPROCESS_DIR_ENV: str(tmp_path)}
    for _ in range(2):  # two "workers", each gone when the scrape comes
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from gateway import metrics; metrics.observe_job('mp', 'done', 0.5)",
            ],
            env=env,
            check=True,
        )
    monkeypatch.setenv(metrics.MULTIPROCESS_DIR_ENV, str(tmp_path))
    assert metrics.multiprocess_enabled()
    merged = parse(metrics.scrape().decode())
    assert value(merged, "gateway_jobs_total", type="mp", outcome="done") == 2
    # This process's own in-memory samples are not what a multiprocess scrape reports.
    assert ("python_gc_objects_collected_total", frozenset({("generation", "0")})) not in merged
    monkeypatch.delenv(metrics.MULTIPROCESS_DIR_ENV)
    assert not metrics.multiprocess_enabled()
    assert (
        value(parse(metrics.scrape().decode()), "gateway_jobs_total", type="mp", outcome="done")
        == 0
    )


def test_a_call_that_never_got_an_answer_is_counted_by_its_exception():
    import boto3
    from botocore.config import Config

    from support import free_port

    s3 = boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: refused at once
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=Config(retries={"total_max_attempts": 1}, connect_timeout=2),
    )
    metrics.instrument_s3_client(s3)
    before = parse(metrics.scrape().decode())
    with pytest.raises(Exception, match="Could not connect"):
        s3.head_bucket(Bucket="nowhere")
    after = parse(metrics.scrape().decode())
    name = "gateway_s3_call_errors_total"
    labels = {"operation": "HeadBucket", "code": "EndpointConnectionError"}
    assert total(after, name, **labels) - total(before, name, **labels) == 1


def test_serve_exposes_this_process_and_the_given_collectors():
    from support import free_port

    port = free_port()
    stats = QueueStats(visible=4, in_flight=0, dead=0, oldest_age=None)
    collector = metrics.QueueCollector(lambda: stats)
    metrics.serve("127.0.0.1", port, collector)  # a daemon thread, for the rest of the tests
    try:
        got = parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
    finally:
        from prometheus_client import REGISTRY

        REGISTRY.unregister(collector)
    assert value(got, "gateway_queue_messages") == 4
    assert ("python_gc_objects_collected_total", frozenset({("generation", "0")})) in got
    with pytest.raises(requests.ConnectionError):  # bound to the address given, not to all
        requests.get(f"http://127.0.0.2:{port}/metrics", timeout=5)


def test_a_dead_workers_live_gauge_stops_counting(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    env = {**os.environ, metrics.MULTIPROCESS_DIR_ENV: str(tmp_path)}
    code = (
        "import os; from gateway import metrics; "
        "metrics.UPLOADS_IN_FLIGHT.labels('mp').inc(); print(os.getpid())"
    )
    pid = int(
        subprocess.run(
            [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
        ).stdout
    )
    monkeypatch.setenv(metrics.MULTIPROCESS_DIR_ENV, str(tmp_path))
    assert value(parse(metrics.scrape().decode()), "gateway_uploads_in_flight", protocol="mp") == 1
    metrics.mark_process_dead(pid)  # what gunicorn's child_exit does
    assert value(parse(metrics.scrape().decode()), "gateway_uploads_in_flight", protocol="mp") == 0
