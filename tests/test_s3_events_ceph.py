"""Bucket notifications from a real Ceph RGW: a topic whose push endpoint is the gateway's
receiver (the secret as the URL's userinfo, so the topic is created over TLS), a notification
configuration for the staging keys, a presigned PUT without ``complete``: the upload ends ready
through the notification path, processed once. Runs where the suite's Ceph harness
(tests/ceph_harness.py) is present."""

from __future__ import annotations

import json

import boto3
import media_samples as samples
import pytest
import requests
from botocore.config import Config

from gateway.media.lifecycle import Status
from gateway.storage.keys import staging_key

from support import read_object

ceph_harness = pytest.importorskip("ceph_harness", reason="the Ceph harness is not in this tree")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SECRET = "s3-events-secret-of-32-characters-at-least"


@pytest.fixture(scope="module")
def ceph(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ceph-events")
    cluster = ceph_harness.start_ceph(folder)
    yield cluster
    cluster.stop()
    ceph_harness.remove(folder)


def test_a_presigned_put_without_complete_ends_ready_through_a_ceph_topic(tmp_path, ceph):
    from e2e_harness import gateway_stack, poll

    with gateway_stack(
        tmp_path / "stack", mode="s3", moto_url=ceph.url, GATEWAY_S3_EVENTS_SECRET=SECRET
    ) as stack:
        svc = stack.svc
        bucket = svc.settings.storage_url.split("/")[2]
        config = Config(region_name="default", s3={"addressing_style": "path"})
        keys = {"aws_access_key_id": ceph.access_key, "aws_secret_access_key": ceph.secret_key}
        # A password in the push endpoint: RGW takes it over TLS only.
        sns = boto3.client(
            "sns", endpoint_url=ceph.https_url, verify=ceph.ca_file, config=config, **keys
        )
        host = stack.url.split("://", 1)[1]
        topic = sns.create_topic(
            Name="gateway-uploads",
            Attributes={
                "push-endpoint": f"http://ceph:{SECRET}@{host}/api/s3-events",
                "persistent": "true",
            },
        )["TopicArn"]
        s3 = boto3.client("s3", endpoint_url=ceph.url, config=config, **keys)
        rules = [{"Name": "prefix", "Value": "uploads/"}, {"Name": "suffix", "Value": ".upload"}]
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "TopicConfigurations": [
                    {
                        "Id": "gateway-uploads",
                        "TopicArn": topic,
                        "Events": ["s3:ObjectCreated:*"],
                        "Filter": {"Key": {"FilterRules": rules}},
                    }
                ]
            },
        )
        stack.start_worker()
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
        assert answer.status_code == 201, answer.text
        [item] = answer.json()["uploads"]
        put = requests.put(
            item["put"]["url"], data=content, headers=item["put"]["headers"], timeout=30
        )
        assert put.status_code == 200, put.text
        media_id = item["uploadId"]
        ready = poll(lambda: svc.records.get(media_id).status is Status.READY, timeout=120)
        assert ready, stack.logs() + json.dumps(stack.worker_log())[-4000:]
        record = svc.records.get(media_id)
        assert read_object(svc.store, record.s3_key) == content
        assert svc.store.head(staging_key(record.s3_key)) is None
        pushes = [
            line
            for line in stack.json_lines("gunicorn.log")
            if line.get("path") == "/api/s3-events"
        ]
        assert [line["status"] for line in pushes] == [200] * len(pushes) and pushes
        processed = [
            line
            for line in stack.worker_log()
            if line.get("event") == "job" and line.get("type") == "media.process"
        ]
        assert [line["outcome"] for line in processed] == ["done"]  # processed once
