"""SNS fan-out: every media event published to ``GATEWAY_SNS_TOPIC_ARN``, for subscribers that
pass it on (WebSocket, mobile push, e-mail) or filter it by its message attributes.

A publication is a job on the deliveries' queue (the webhooks' queue and lane,
gateway/processing/deliveries.py): one job is one attempt is one Publish; a failure is retried
with backoff and ends as a dead letter, never dropped. SNS and SQS deliver at least once, and a
retried attempt whose first Publish did reach SNS publishes again: subscribers deduplicate by the
``eventId`` attribute (``<mediaId>.<event>``, the webhook id).

The message is the webhook body (``{"type", "timestamp", "data"}``) with ``id``; attributes:
``event`` (``media.ready`` ...), ``projectId``, ``tenant`` (when there is one), ``eventId``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from gateway.config import Settings

JOB_TYPE = "sns"  # a queue message {"type": "sns", "id", "event"}


class PublishFailed(RuntimeError):
    """SNS did not take the message (retry later)."""


def make_sns_client(settings: Settings) -> Any:
    config = Config(
        region_name=settings.sns_region,
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
    )
    return boto3.session.Session().client(
        "sns", endpoint_url=settings.sns_endpoint_url or None, config=config
    )


def _text(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def message_attributes(event_id: str, payload: dict[str, Any]) -> dict[str, dict[str, str]]:
    """What subscribers filter by; SNS refuses an empty string value, so a missing tenant is
    no attribute at all."""
    data = payload.get("data") or {}
    attributes = {"event": _text(str(payload["type"])), "eventId": _text(event_id)}
    for name in ("projectId", "tenant"):
        if data.get(name):
            attributes[name] = _text(str(data[name]))
    return attributes


class SnsPublisher:
    def __init__(self, client: Any, topic_arn: str) -> None:
        self.client = client
        self.topic_arn = topic_arn

    def publish(self, event_id: str, payload: dict[str, Any]) -> str:
        """Publish one event; the SNS message id."""
        try:
            answer = self.client.publish(
                TopicArn=self.topic_arn,
                Message=json.dumps({"id": event_id, **payload}, separators=(",", ":")),
                MessageAttributes=message_attributes(event_id, payload),
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise PublishFailed(f"SNS refused the message: {code}") from None
        except BotoCoreError as exc:
            raise PublishFailed(f"SNS is unreachable: {type(exc).__name__}") from None
        return str(answer["MessageId"])
