"""The deliveries lane's handler: each media event handed on outside the gateway, one job per
target on the deliveries' queue (``GATEWAY_WEBHOOK_QUEUE_URL``), so that a target that fails is
retried alone and never sends the other again:

- ``{"type": "webhook", "id", "event"}``: one signed POST (gateway/processing/webhooks.py);
- ``{"type": "sns", "id", "event"}``: one Publish to the topic (gateway/processing/sns.py).

A failing attempt raises: the worker retries it with backoff, then it is a dead letter
(``flask queue redrive --lane webhooks`` sends it again). The event is never dropped.
"""

from __future__ import annotations

import logging

from gateway.processing import sns, webhooks
from gateway.processing.sns import SnsPublisher
from gateway.processing.webhooks import WebhookSender
from gateway.queue import Message

log = logging.getLogger(__name__)


class Deliveries:
    def __init__(self, webhook: WebhookSender | None, topic: SnsPublisher | None) -> None:
        self.webhook = webhook
        self.topic = topic

    def handle(self, message: Message) -> None:
        body = message.body
        kind = body.get("type")
        if kind == webhooks.JOB_TYPE and self.webhook is not None:
            self.webhook.deliver(str(body["id"]), body["event"])
        elif kind == sns.JOB_TYPE and self.topic is not None:
            self.topic.publish(str(body["id"]), body["event"])
        else:
            # A target configured when the job was queued and gone since: nothing to send to.
            log.warning("dropping a delivery with no target configured: %.200s", body)

    def on_last_failure(self, message: Message, exc: BaseException) -> None:
        """Nothing to undo: the delivery becomes a dead letter (``flask queue redrive --lane
        webhooks`` sends it again)."""
        log.error(
            {
                "event": f"{message.body.get('type', 'delivery')}.dead",
                "deliveryId": message.body.get("id"),
                "receiveCount": message.receive_count,
                "reason": str(exc),
            }
        )
