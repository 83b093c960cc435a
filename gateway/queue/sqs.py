"""Amazon SQS (or a compatible endpoint) as the queue; see gateway/queue/__init__.py.

The dead-letter queue is ``<name>-dlq``, wired with a RedrivePolicy: SQS itself moves a message
there once it has been received ``max_receives`` times without being deleted. moto has no
StartMessageMoveTask, so ``redrive`` receives from the dead-letter queue and sends again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from gateway.queue import Message, QueueStats

if TYPE_CHECKING:
    from gateway.config import Settings

MAX_BATCH = 10  # SQS's limit per receive
MAX_WAIT = 20  # SQS's longest long poll, seconds


class QueueError(RuntimeError):
    """SQS failed (after botocore's retries)."""


def make_sqs_client(settings: Settings) -> Any:
    config = Config(
        region_name=settings.s3_region,
        retries={"mode": "standard", "total_max_attempts": settings.s3_max_attempts},
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=MAX_WAIT + settings.s3_read_timeout,
    )
    return boto3.session.Session().client(
        "sqs", endpoint_url=settings.sqs_endpoint_url or None, config=config
    )


class SqsQueue:
    def __init__(self, client: Any, *, name: str, max_receives: int) -> None:
        self.client = client
        self.name = name
        self.max_receives = max_receives
        self._urls: dict[str, str] = {}

    def _call(self, fn: Any, **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise QueueError(f"SQS failed: {type(exc).__name__}") from exc

    def _url(self, name: str) -> str:
        if name not in self._urls:
            self._urls[name] = self._call(self.client.get_queue_url, QueueName=name)["QueueUrl"]
        return self._urls[name]

    @property
    def dlq_name(self) -> str:
        return f"{self.name}-dlq"

    def queue_arn(self) -> str:
        attributes = self._call(
            self.client.get_queue_attributes,
            QueueUrl=self._url(self.name),
            AttributeNames=["QueueArn"],
        )
        return str(attributes["Attributes"]["QueueArn"])

    def allow_s3(self, bucket: str) -> None:
        """Let the bucket's event notifications send to this queue (a queue policy)."""
        arn = self.queue_arn()
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "s3.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
                }
            ],
        }
        self._call(
            self.client.set_queue_attributes,
            QueueUrl=self._url(self.name),
            Attributes={"Policy": json.dumps(policy)},
        )

    def create(self) -> None:
        dlq = self._call(self.client.create_queue, QueueName=self.dlq_name)["QueueUrl"]
        dlq_arn = self._call(
            self.client.get_queue_attributes, QueueUrl=dlq, AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        policy = json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(self.max_receives)}
        )
        url = self._call(
            self.client.create_queue, QueueName=self.name, Attributes={"RedrivePolicy": policy}
        )["QueueUrl"]
        # An existing queue keeps its attributes on create_queue: set them explicitly.
        self._call(
            self.client.set_queue_attributes, QueueUrl=url, Attributes={"RedrivePolicy": policy}
        )
        self._urls.update({self.name: url, self.dlq_name: dlq})

    def send(self, body: dict[str, Any], *, delay: float = 0) -> None:
        self._call(
            self.client.send_message,
            QueueUrl=self._url(self.name),
            MessageBody=json.dumps(body),
            DelaySeconds=int(min(900, max(0, delay))),
        )

    def _receive(
        self, queue: str, *, max_messages: int, wait: float, visibility: float
    ) -> list[Message]:
        answer = self._call(
            self.client.receive_message,
            QueueUrl=self._url(queue),
            MaxNumberOfMessages=max(1, min(MAX_BATCH, max_messages)),
            WaitTimeSeconds=int(max(0, min(MAX_WAIT, wait))),
            VisibilityTimeout=int(visibility),
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        messages = []
        for raw in answer.get("Messages", []):
            attributes = raw.get("Attributes", {})
            try:
                body = json.loads(raw["Body"])
            except ValueError:
                body = {"invalid": raw["Body"][:1000]}
            if not isinstance(body, dict):
                body = {"invalid": raw["Body"][:1000]}
            messages.append(
                Message(
                    id=raw["MessageId"],
                    body=body,
                    receipt=raw["ReceiptHandle"],
                    receive_count=int(attributes.get("ApproximateReceiveCount", 1)),
                    sent_at=int(attributes.get("SentTimestamp", 0)) / 1000,
                )
            )
        return messages

    def receive(self, *, max_messages: int, wait: float, visibility: float) -> list[Message]:
        return self._receive(self.name, max_messages=max_messages, wait=wait, visibility=visibility)

    def delete(self, message: Message) -> None:
        self._call(
            self.client.delete_message, QueueUrl=self._url(self.name), ReceiptHandle=message.receipt
        )

    def retry_later(self, message: Message, *, delay: float) -> None:
        self._call(
            self.client.change_message_visibility,
            QueueUrl=self._url(self.name),
            ReceiptHandle=message.receipt,
            VisibilityTimeout=int(min(43_200, delay)),
        )

    def _count(self, queue: str, *names: str) -> int:
        attributes = self._call(
            self.client.get_queue_attributes, QueueUrl=self._url(queue), AttributeNames=list(names)
        )["Attributes"]
        return sum(int(attributes.get(name, 0)) for name in names)

    def stats(self) -> QueueStats:
        return QueueStats(
            visible=self._count(self.name, "ApproximateNumberOfMessages"),
            in_flight=self._count(self.name, "ApproximateNumberOfMessagesNotVisible"),
            dead=self._count(self.dlq_name, "ApproximateNumberOfMessages"),
            oldest_age=None,  # SQS reports it to CloudWatch only
        )

    def redrive(self, *, limit: int) -> int:
        moved = 0
        while moved < limit:
            batch = self._receive(self.dlq_name, max_messages=limit - moved, wait=0, visibility=60)
            if not batch:
                break
            for message in batch:
                self._call(
                    self.client.send_message,
                    QueueUrl=self._url(self.name),
                    MessageBody=json.dumps(message.body),
                )
                self._call(
                    self.client.delete_message,
                    QueueUrl=self._url(self.dlq_name),
                    ReceiptHandle=message.receipt,
                )
                moved += 1
        return moved
