"""Faults between the gateway and its stores, on the real upload path (POST /api/upload).

The gateway talks to moto through tests/faultproxy.py, which answers 500/503/403 or resets the
connection for the requests a test picks. What is left behind is checked against moto
directly (not through the proxy): no object, no open multipart upload, no record - or the object
and its record, exact.
"""

from __future__ import annotations

from datetime import timedelta

import boto3
import pytest
from botocore.config import Config

from gateway import create_app
from gateway.errors import RecordStoreError, StorageError
from gateway.http.auth import mint_token
from gateway.media.records.dynamodb import DynamoRecordStore

import faultproxy as fp
from conftest import init_stores, make_settings
from support import MiB, assert_stored, form_body, mp4_bytes, png_bytes, record_ids

pytestmark = pytest.mark.timeout(60)

BIG = 17 * MiB + 4321  # three 8 MiB parts: two full, one tail
MAX_ATTEMPTS = 3


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _fast_backoff(monkeypatch):
    """botocore sleeps up to 1 s, 2 s, 4 s... between retries of a throttling error (SlowDown);
    scale that down to keep these tests quick. What is retried, and how often, is unchanged."""
    from botocore.retries.standard import ExponentialBackoff

    config = dict(
        ExponentialBackoff._DEFAULT_BACKOFF_CONFIG,
        throttling_base_scale=0.02,
        non_throttling_base_scale=0.01,
    )
    monkeypatch.setattr(ExponentialBackoff, "_DEFAULT_BACKOFF_CONFIG", config)


@pytest.fixture(scope="module")
def proxy(moto_url):
    proxy = fp.FaultProxy(moto_url).start()
    yield proxy
    proxy.stop()


@pytest.fixture(autouse=True)
def _clean_rules(request):
    yield
    if "proxy" in request.fixturenames:
        request.getfixturevalue("proxy").clear()


@pytest.fixture(scope="module")
def direct(moto_url):
    """boto3 clients to moto itself, bypassing the proxy: the ground truth."""
    config = Config(
        region_name="us-east-1",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "max_attempts": 3},
    )
    return {
        "s3": boto3.client("s3", endpoint_url=moto_url, config=config),
        "dynamodb": boto3.client("dynamodb", endpoint_url=moto_url, config=config),
    }


class Gateway:
    def __init__(self, tmp_path, backend: str, url: str | None, direct) -> None:
        settings = make_settings(
            tmp_path, backend=backend, moto_url=url, s3_max_attempts=MAX_ATTEMPTS
        )
        self.app = create_app(settings)
        self.app.config["TESTING"] = True
        self.svc = self.app.extensions["gateway"]
        init_stores(self.svc)
        self.client = self.app.test_client()
        self.direct = direct
        with self.app.app_context():
            self.auth = {"Authorization": f"Bearer {mint_token('alice')}"}

    def upload(self, files, fields=(("projectId", "p1"),)):
        body, content_type = form_body(list(fields), files)
        return self.client.post(
            "/api/upload", data=body, headers={"Content-Type": content_type, **self.auth}
        )

    # -- ground truth --------------------------------------------------------------------------
    @property
    def s3(self) -> bool:
        return hasattr(self.svc.store, "bucket")

    def objects(self) -> list[str]:
        """Every object: the whole bucket via moto directly, or every file under the root."""
        if self.s3:
            listed = self.direct["s3"].list_objects_v2(Bucket=self.svc.store.bucket)
            return sorted(item["Key"] for item in listed.get("Contents", []))
        root = self.svc.store.root
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def uploads(self) -> list[str]:
        if self.s3:
            listed = self.direct["s3"].list_multipart_uploads(Bucket=self.svc.store.bucket)
            return [u["Key"] for u in listed.get("Uploads", [])]
        return [u.key for u in self.svc.store.pending_uploads()]

    def records(self) -> list[str]:
        records = self.svc.records
        if isinstance(records, DynamoRecordStore):
            records = DynamoRecordStore(self.direct["dynamodb"], table=records.table)
        return record_ids(records)

    def leftovers(self) -> dict[str, list[str]]:
        return {"objects": self.objects(), "uploads": self.uploads(), "records": self.records()}

    def assert_nothing_left(self) -> None:
        assert self.leftovers() == {"objects": [], "uploads": [], "records": []}

    def full_key(self, key: str) -> str:
        return self.svc.store.full_key(key) if self.s3 else key


@pytest.fixture
def gw(tmp_path, proxy, direct):
    """The gateway on S3 (moto) through the fault proxy, SQLite records."""
    gateway = Gateway(tmp_path, "s3", proxy.url, direct)
    proxy.clear()
    return gateway


def error_of(response) -> str:
    body = response.get_json()
    assert body and body["success"] is False, response.data[:300]
    return body["error"]["code"]


def attempts_per_part(proxy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in proxy.requests(fp.is_upload_part):
        number = request.query["partNumber"][0]
        counts[number] = counts.get(number, 0) + 1
    return counts


# -- (a) transient faults are retried and the upload is exact -------------------------------------
TRANSIENT = {
    "part-500-once": (fp.is_upload_part, "500", 1, BIG),
    "part-503-twice": (fp.is_upload_part, "503", 2, BIG),
    "part-reset-twice": (fp.is_upload_part, "reset", 2, BIG),
    "complete-answer-lost-once": (fp.is_complete_multipart, "forward_reset", 1, BIG),
    "put-object-503-twice": (fp.is_put_object, "503", 2, 40_000),
    "put-object-answer-lost-once": (fp.is_put_object, "forward_reset", 1, 40_000),
}


@pytest.mark.parametrize("match,action,times,size", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_fault_is_retried_and_the_upload_is_exact(gw, proxy, match, action, times, size):
    content = mp4_bytes(size)
    rule = proxy.add(match, action, times=times)
    response = gw.upload([("file", "clip.mp4", content)])
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert rule.hits == times and rule.seen > times  # faulted, then retried through
    assert_stored(gw.svc, body, content)
    assert gw.leftovers() == {
        "objects": [body["s3Key"]],
        "uploads": [],
        "records": [body["mediaId"]],
    }
    if size > 8 * MiB and match is fp.is_upload_part:
        counts = attempts_per_part(proxy)
        assert sorted(counts) == ["1", "2", "3"]
        assert sum(counts.values()) == 3 + times


# -- (b)-(e) persistent faults: a 5xx, and nothing left ----------------------------------------
def test_persistent_slowdown_on_parts_is_503_and_nothing_is_left(gw, proxy):
    proxy.add(fp.is_upload_part, "503")
    response = gw.upload([("file", "clip.mp4", mp4_bytes(BIG))])
    assert response.status_code == 503
    assert error_of(response) == "storage_unavailable"
    assert response.headers.get("Retry-After")
    counts = attempts_per_part(proxy)
    assert counts and min(counts.values()) > 1  # retried, then given up
    assert proxy.requests(fp.is_abort_multipart), "the multipart upload was never aborted"
    gw.assert_nothing_left()


def test_persistent_internal_error_on_parts_is_502_and_nothing_is_left(gw, proxy):
    """500 InternalError, retried by botocore, then the store has failed: 502 storage_error."""
    proxy.add(fp.is_upload_part, "500")
    response = gw.upload([("file", "clip.mp4", mp4_bytes(BIG))])
    assert (response.status_code, error_of(response)) == (502, "storage_error")
    assert min(attempts_per_part(proxy).values()) > 1
    gw.assert_nothing_left()


def test_access_denied_on_parts_is_502_without_retries_and_nothing_is_left(gw, proxy):
    proxy.add(fp.is_upload_part, "403")
    response = gw.upload([("file", "clip.mp4", mp4_bytes(BIG))])
    assert (response.status_code, error_of(response)) == (502, "storage_error")
    assert set(attempts_per_part(proxy).values()) == {1}  # not worth retrying
    gw.assert_nothing_left()


def test_persistent_connection_resets_on_parts_are_502_and_nothing_is_left(gw, proxy):
    proxy.add(fp.is_upload_part, "reset")
    response = gw.upload([("file", "clip.mp4", mp4_bytes(BIG))])
    assert (response.status_code, error_of(response)) == (502, "storage_error")
    assert min(attempts_per_part(proxy).values()) > 1
    gw.assert_nothing_left()


SINGLE_PUT = {
    "503": (503, "storage_unavailable"),
    "403": (502, "storage_error"),
    "reset": (502, "storage_error"),
}  # 500: see test_s3_max_attempts_counts_every_attempt


@pytest.mark.parametrize("action", SINGLE_PUT, ids=[f"put-object-{a}" for a in SINGLE_PUT])
def test_single_put_failing_persistently_leaves_nothing(gw, proxy, action):
    rule = proxy.add(fp.is_put_object, action)
    response = gw.upload([("file", "cat.png", png_bytes(60_000))])
    assert (response.status_code, error_of(response)) == SINGLE_PUT[action]
    if action == "403":
        assert rule.hits == 1  # not worth retrying
    else:
        assert rule.hits > 1
    gw.assert_nothing_left()


def test_s3_max_attempts_counts_every_attempt(gw, proxy):
    """GATEWAY_S3_MAX_ATTEMPTS is the number of attempts, the first one included.

    botocore's ``retries={"max_attempts": n}`` means n *retries* (n + 1 attempts); its
    ``total_max_attempts`` is the setting's meaning.
    """
    rule = proxy.add(fp.is_put_object, "500")
    response = gw.upload([("file", "cat.png", png_bytes(60_000))])
    assert (response.status_code, error_of(response)) == (502, "storage_error")
    gw.assert_nothing_left()
    assert gw.svc.settings.s3_max_attempts == MAX_ATTEMPTS
    assert rule.hits == MAX_ATTEMPTS, (
        f"GATEWAY_S3_MAX_ATTEMPTS={MAX_ATTEMPTS} made {rule.hits} attempts"
    )


def test_complete_failing_persistently_leaves_nothing(gw, proxy):
    proxy.add(fp.is_complete_multipart, "500")
    response = gw.upload([("file", "clip.mp4", mp4_bytes(BIG))])
    assert (response.status_code, error_of(response)) == (502, "storage_error")
    assert proxy.requests(fp.is_abort_multipart)
    gw.assert_nothing_left()


def test_create_multipart_failing_persistently_leaves_nothing(gw, proxy):
    proxy.add(fp.is_create_multipart, "503")
    response = gw.upload([("file", "clip.mp4", mp4_bytes(BIG))])
    assert (response.status_code, error_of(response)) == (503, "storage_unavailable")
    assert not proxy.requests(fp.is_upload_part)
    gw.assert_nothing_left()


def test_second_file_failing_rolls_back_the_first(gw, proxy):
    """All or nothing across files: the first (committed) file is deleted when the second fails."""
    proxy.add(fp.is_complete_multipart, "503")
    files = [("files", "cat.png", png_bytes(30_000)), ("files", "clip.mp4", mp4_bytes(BIG))]
    response = gw.upload(files, fields=(("projectId", "p1"),))
    assert response.status_code == 503
    gw.assert_nothing_left()


def test_tagging_failure_deletes_the_completed_object(gw, proxy):
    proxy.add(fp.is_put_tagging, "503")
    response = gw.upload([("file", "clip.mp4", mp4_bytes(BIG))])
    assert (response.status_code, error_of(response)) == (503, "storage_unavailable")
    gw.assert_nothing_left()


# -- a store that applied the request but whose answer was lost -----------------------------------
def assert_rule_holds(gw, response, content: bytes) -> None:
    """Either the upload succeeded exactly, or it failed and left nothing behind."""
    if response.status_code == 201:
        assert_stored(gw.svc, response.get_json(), content)
        assert gw.uploads() == []
    else:
        assert response.status_code in (502, 503), response.get_json()
        assert gw.leftovers() == {"objects": [], "uploads": [], "records": []}


def test_put_object_applied_but_every_answer_lost(gw, proxy):
    """Each PutObject reaches S3 and stores the object; every answer is lost on the way back.

    The gateway cannot know whether the object exists, so it must delete it (or journal it):
    answering 502 while the object stays, unrecorded, breaks the rule.
    """
    content = png_bytes(60_000)
    proxy.add(fp.is_put_object, "forward_reset")
    response = gw.upload([("file", "cat.png", content)])
    assert response.status_code == 502
    assert_rule_holds(gw, response, content)


def test_complete_applied_but_every_answer_lost(gw, proxy):
    """CompleteMultipartUpload succeeds in S3, its answers are lost: abort then finds no upload,
    and the completed object must not outlive the failed request."""
    content = mp4_bytes(BIG)
    proxy.add(fp.is_complete_multipart, "forward_reset")
    response = gw.upload([("file", "clip.mp4", content)])
    assert_rule_holds(gw, response, content)


def test_tagging_and_delete_both_failing_journal_the_object(gw, proxy):
    """The object was completed, tagging fails, and so does the delete that undoes it: the
    object must be journaled for the sweeper, as a failed rollback delete is."""
    proxy.add(fp.is_put_tagging, "503")
    deletes = proxy.add(fp.is_delete_object, "503")
    response = gw.upload([("file", "clip.mp4", mp4_bytes(BIG))])
    assert response.status_code == 503
    assert deletes.hits > 0  # the undo was tried, and failed
    assert gw.records() == [] and gw.uploads() == []
    journaled = {gw.full_key(k) for k in gw.svc.journal.list_keys()}
    assert set(gw.objects()) <= journaled, "an object outlives the request, unjournaled"


def test_record_written_but_its_answer_lost(tmp_path, proxy, direct):
    """DynamoDB stores the record, the answer is lost; botocore retries the conditional put,
    which now fails (the item exists). The gateway must not answer 503 and delete the object
    while the record stays, pointing at nothing."""
    gw = Gateway(tmp_path, "s3+dynamodb", proxy.url, direct)
    proxy.clear()
    content = png_bytes(50_000)
    lost = proxy.add(fp.is_dynamodb("TransactWriteItems"), "forward_reset", times=1)
    response = gw.upload([("file", "cat.png", content)])
    assert lost.hits == 1
    assert_rule_holds(gw, response, content)


# -- the record store fails after the objects are stored ------------------------------------------
@pytest.fixture(params=["local", "s3"])
def any_gw(request, tmp_path, direct):
    if request.param == "local":
        return Gateway(tmp_path, "local", None, direct)
    return Gateway(tmp_path, "s3", request.getfixturevalue("moto_url"), direct)


def two_files():
    return [("files", "cat.png", png_bytes(30_000)), ("files", "clip.mp4", mp4_bytes(9 * MiB))]


def fail(exc: Exception):
    def raiser(*args, **kwargs):
        raise exc

    return raiser


def test_record_failure_deletes_the_objects(any_gw, monkeypatch):
    svc = any_gw.svc
    monkeypatch.setattr(svc.records, "create_many", fail(RecordStoreError("down")))
    response = any_gw.upload(two_files())
    assert (response.status_code, error_of(response)) == (503, "records_unavailable")
    assert response.headers.get("Retry-After")
    any_gw.assert_nothing_left()
    assert svc.journal.list_keys() == []


def test_record_failure_with_failing_delete_journals_then_sweep_removes(any_gw, monkeypatch):
    svc = any_gw.svc
    monkeypatch.setattr(svc.records, "create_many", fail(RecordStoreError("down")))
    monkeypatch.setattr(svc.store, "delete", fail(StorageError("delete failed too")))
    response = any_gw.upload(two_files())
    assert (response.status_code, error_of(response)) == (503, "records_unavailable")

    journaled = svc.journal.list_keys()
    assert len(journaled) == 2
    assert sorted(any_gw.full_key(k) for k in journaled) == any_gw.objects()
    assert any_gw.records() == [] and any_gw.uploads() == []

    monkeypatch.undo()  # the store can delete again
    report = svc.sweeper.sweep(older_than=timedelta(0))
    assert report.failed == []
    assert sorted(report.done) == sorted(f"delete journaled orphan {k}" for k in journaled)
    assert svc.journal.list_keys() == []
    any_gw.assert_nothing_left()
